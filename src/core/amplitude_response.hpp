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

struct ResponseVerdict {
    ResponseKind kind = ResponseKind::kRetry;
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

// Replaces every occurrence of secret in text, cuts text to max_length, and
// escapes what is not valid UTF-8 (storable_text).
std::string redact(std::string text, const std::string &secret, size_t max_length = 300);

}  // namespace amplitude_sync
