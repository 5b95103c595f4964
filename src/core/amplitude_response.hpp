// Reads an Amplitude answer and decides what the delivery engine does next.
// Core file: no postgres.h. The rules are Amplitude's response contract:
// 200 only counts when the body says so; 400 may name the refused events
// by index; 413 means split; 429 names throttled IDs; 5xx and transport
// failures are retried with the same insert_ids.
#pragma once

#include <string>
#include <vector>

namespace amplitude_sync {

struct HttpResponse {
    int status = 0;               // 0 when no HTTP answer arrived
    std::string body;
    std::string transport_error;  // set when status == 0
    bool timed_out = false;
};

struct RefusedIndex {
    size_t index;
    std::string field;
    std::string reason;
};

enum class ResponseKind {
    kAccepted,       // every record ingested
    kRefusedSome,    // 400 naming records: drop refused, resend the rest
    kRefusedWhole,   // 400 without indices: split to find the culprit
    kTooLarge,       // 413: halve
    kThrottled,      // 429
    kRetry,          // 5xx, timeout, reset, unreadable answer
    kFatal,          // invalid key, missing field, 403, unexpected status: stop
};

// Why a run stopped at once (the glue raises 28000 for a bad key, 08004 for
// the rest).
enum class StopReason {
    kNone,       // not stopped by Amplitude's refusal
    kBadApiKey,  // the API key was refused
    kRefused,    // the requests themselves were refused (missing field, 403, ...)
};

struct ResponseVerdict {
    ResponseKind kind = ResponseKind::kRetry;
    StopReason stop = StopReason::kNone;  // set with kFatal
    std::string error;  // one line for run logs, API key already removed
    std::vector<RefusedIndex> refused;
    // kThrottled: what the 429 named. All empty: the whole project is throttled.
    std::vector<size_t> throttled_events;
    std::vector<std::string> throttled_users, throttled_devices;
    std::vector<std::string> quota_users, quota_devices;  // over the daily quota
    bool whole_batch_throttled = false;  // the identify APIs name no IDs: all wait
    bool project_throttled() const {
        return !whole_batch_throttled && throttled_events.empty() && throttled_users.empty() &&
               throttled_devices.empty() && quota_users.empty() && quota_devices.empty();
    }
};

// Classifies an answer to a JSON events request (/2/httpapi, /batch).
// api_key is only used to redact the body before it is quoted.
ResponseVerdict classify_events_response(const HttpResponse &response,
                                         const std::string &api_key);

// Classifies an answer to a form-encoded request (/identify,
// /groupidentify): plain-text bodies, no per-record indices.
ResponseVerdict classify_form_response(const HttpResponse &response, const std::string &api_key);

// Request-level refusals, the same on every endpoint whatever the body's
// format: the API key ("Invalid API key: ...", "invalid_api_key"; case and
// separators ignored) or a missing part of the request ("missing_field" as a
// JSON member or plain text, "missing_event"). kNone when the answer is
// none of these. Both classifiers use it.
StopReason request_refusal(const HttpResponse &response);

// Replaces every occurrence of secret in text, cuts text to max_length, and
// escapes what is not valid UTF-8 (storable_text).
std::string redact(std::string text, const std::string &secret, size_t max_length = 300);

}  // namespace amplitude_sync
