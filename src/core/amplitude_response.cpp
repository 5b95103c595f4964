#include "amplitude_response.hpp"

#include <algorithm>
#include <cctype>

#include <nlohmann/json.hpp>

#include "json_text.hpp"

namespace amplitude_sync {

namespace {

using nlohmann::json;

std::string string_member(const json &body, const char *key) {
    auto it = body.find(key);
    return (it != body.end() && it->is_string()) ? it->get<std::string>() : std::string();
}

// {"field": [indices]} maps of a 400 answer.
void collect_indices(const json &body, const char *map_name, const std::string &error,
                     std::vector<RefusedIndex> &out) {
    auto it = body.find(map_name);
    if (it == body.end() || !it->is_object()) return;
    for (auto &[field, indices] : it->items()) {
        if (!indices.is_array()) continue;
        for (const json &i : indices) {
            if (i.is_number_unsigned())
                out.push_back({i.get<size_t>(), field, error + " (field \"" + field + "\")"});
        }
    }
}

std::vector<std::string> map_keys(const json &body, const char *key) {
    std::vector<std::string> ids;
    auto it = body.find(key);
    if (it != body.end() && it->is_object())
        for (auto &item : it->items()) ids.push_back(item.key());
    return ids;
}

std::string status_line(const HttpResponse &r, const std::string &api_key) {
    std::string body = redact(r.body, api_key, 200);
    for (char &c : body)
        if (c == '\n' || c == '\r') c = ' ';
    return "HTTP " + std::to_string(r.status) + (body.empty() ? "" : ": " + body);
}

bool contains_ignoring_case(const std::string &text, const std::string &lower_needle) {
    auto it = std::search(text.begin(), text.end(), lower_needle.begin(), lower_needle.end(),
                          [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; });
    return it != text.end();
}

// Letters and digits only, lower case: "Invalid API key", "invalid_api_key"
// and "InvalidApiKey" all read "invalidapikey".
std::string squeezed(const std::string &text) {
    std::string out;
    for (char c : text)
        if (std::isalnum(static_cast<unsigned char>(c)))
            out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    return out;
}

// The verdict for a request-level refusal: one line, the key never quoted.
ResponseVerdict refusal_verdict(const HttpResponse &r, StopReason stop, const std::string &api_key) {
    ResponseVerdict v;
    v.kind = ResponseKind::kFatal;
    v.stop = stop;
    if (stop == StopReason::kBadApiKey) {
        // Amplitude may echo the key, even altered: never quote it.
        v.error = "Invalid API key: [redacted]";
        return v;
    }
    json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    std::string error = body.is_object() ? redact(string_member(body, "error"), api_key) : "";
    v.error = error.empty() ? status_line(r, api_key) : error;
    if (body.is_object() && body.contains("missing_field"))
        v.error += " (missing_field: " + redact(body["missing_field"].dump(), api_key) + ")";
    return v;
}

}  // namespace

StopReason request_refusal(const HttpResponse &r) {
    // Only a client error can be a refusal; 413/414 and 429 have their own handling.
    if (r.status < 400 || r.status > 499 || r.status == 413 || r.status == 414 || r.status == 429)
        return StopReason::kNone;
    json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    std::string text = r.body;  // plain text, as the form endpoints answer
    if (body.is_object())
        text = string_member(body, "error");
    else if (body.is_string())
        text = body.get<std::string>();
    if (squeezed(text).find("invalidapikey") != std::string::npos) return StopReason::kBadApiKey;
    if ((body.is_object() && body.contains("missing_field")) || contains_ignoring_case(text, "missing_field") ||
        contains_ignoring_case(text, "missing_event"))
        return StopReason::kRefused;
    return StopReason::kNone;
}

std::string redact(std::string text, const std::string &secret, size_t max_length) {
    if (!secret.empty()) {
        static const std::string kMask = "[redacted]";
        // The key as sent may come back escaped: as JSON (\u00e9, \/) or
        // URL-encoded (%C3%A9), the forms it travels in.
        std::string json;
        append_json_string(json, secret);
        json = json.substr(1, json.size() - 2);
        std::string ascii_json = json;
        try {
            ascii_json = nlohmann::json(secret).dump(-1, ' ', true);
            ascii_json = ascii_json.substr(1, ascii_json.size() - 2);
        } catch (const nlohmann::json::exception &) {
            // Not UTF-8: no JSON encoder could have produced an escaped form.
        }
        std::string url;
        append_url_encoded(url, secret);
        // JSON may also escape the solidus.
        std::string solidus = ascii_json;
        for (size_t pos = solidus.find('/'); pos != std::string::npos; pos = solidus.find('/', pos + 2))
            solidus.replace(pos, 1, "\\/");
        std::vector<std::string> forms;
        for (const std::string &form : {secret, json, ascii_json, solidus, url})
            if (std::find(forms.begin(), forms.end(), form) == forms.end()) forms.push_back(form);
        for (const std::string &form : forms) {
            // Search on after the mask, which may itself contain the secret.
            for (size_t pos = text.find(form); pos != std::string::npos; pos = text.find(form, pos + kMask.size()))
                text.replace(pos, form.size(), kMask);
        }
    }
    if (text.size() > max_length) {
        size_t cut = max_length;
        while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
        text.resize(cut);
        text += "...";
    }
    // Errors are stored in the run log and raised: they must be valid text.
    return storable_text(text);
}

ResponseVerdict classify_events_response(const HttpResponse &r, const std::string &api_key) {
    ResponseVerdict v;
    if (r.status == 0) {
        v.kind = ResponseKind::kRetry;
        v.error = r.timed_out ? "request timed out" : redact(r.transport_error, api_key);
        return v;
    }
    StopReason refusal = request_refusal(r);
    if (refusal != StopReason::kNone) return refusal_verdict(r, refusal, api_key);
    json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    bool is_json = body.is_object();
    std::string error = is_json ? redact(string_member(body, "error"), api_key) : "";

    switch (r.status) {
        case 200: {
            // Only a JSON body with code 200 confirms ingestion; anything else
            // (a proxy page, a cut body) is retried with the same insert_ids.
            auto code = is_json ? body.find("code") : body.end();
            if (is_json && code != body.end() && *code == 200) {
                v.kind = ResponseKind::kAccepted;
            } else {
                v.kind = ResponseKind::kRetry;
                v.error = "HTTP 200 without Amplitude's confirmation: " + status_line(r, api_key);
            }
            return v;
        }
        case 400: {
            if (!is_json) {
                v.kind = ResponseKind::kRefusedWhole;
                v.error = status_line(r, api_key);
                return v;
            }
            v.error = error.empty() ? status_line(r, api_key) : error;
            for (const char *map : {"events_with_invalid_fields", "events_with_missing_fields",
                                    "events_with_invalid_id_lengths"})
                collect_indices(body, map, v.error, v.refused);
            auto silenced = body.find("silenced_events");
            if (silenced != body.end() && silenced->is_array()) {
                for (const json &i : *silenced)
                    if (i.is_number_unsigned())
                        v.refused.push_back({i.get<size_t>(), "device_id",
                                             "Amplitude has silenced this device_id"});
            }
            v.kind = v.refused.empty() ? ResponseKind::kRefusedWhole : ResponseKind::kRefusedSome;
            return v;
        }
        case 413:
            v.kind = ResponseKind::kTooLarge;
            v.error = "payload too large (HTTP 413)";
            return v;
        case 429: {
            v.kind = ResponseKind::kThrottled;
            v.error = error.empty() ? status_line(r, api_key) : error;
            if (is_json) {
                auto events = body.find("throttled_events");
                if (events != body.end() && events->is_array())
                    for (const json &i : *events)
                        if (i.is_number_unsigned()) v.throttled_events.push_back(i.get<size_t>());
                v.throttled_users = map_keys(body, "throttled_users");
                v.throttled_devices = map_keys(body, "throttled_devices");
                v.quota_users = map_keys(body, "exceeded_daily_quota_users");
                v.quota_devices = map_keys(body, "exceeded_daily_quota_devices");
            }
            return v;
        }
        case 500:
        case 502:
        case 503:
        case 504:
            v.kind = ResponseKind::kRetry;
            v.error = status_line(r, api_key);
            return v;
        case 403:
            v.kind = ResponseKind::kFatal;
            v.stop = StopReason::kRefused;
            v.error = "forbidden by Amplitude (HTTP 403): " + (error.empty() ? status_line(r, api_key) : error);
            return v;
        default:
            v.kind = r.status >= 500 ? ResponseKind::kRetry : ResponseKind::kFatal;
            if (v.kind == ResponseKind::kFatal) v.stop = StopReason::kRefused;
            v.error = "unexpected answer: " + status_line(r, api_key);
            return v;
    }
}

ResponseVerdict classify_form_response(const HttpResponse &r, const std::string &api_key) {
    ResponseVerdict v;
    if (r.status == 0) {
        v.kind = ResponseKind::kRetry;
        v.error = r.timed_out ? "request timed out" : redact(r.transport_error, api_key);
        return v;
    }
    StopReason refusal = request_refusal(r);
    if (refusal != StopReason::kNone) return refusal_verdict(r, refusal, api_key);
    std::string body = redact(r.body, api_key, 200);
    for (char &c : body)
        if (c == '\n' || c == '\r') c = ' ';
    v.error = "HTTP " + std::to_string(r.status) + (body.empty() ? "" : ": " + body);
    switch (r.status) {
        case 200:
            // The identify APIs answer "success" in plain text; the body is not
            // documented well enough to insist on it.
            v.kind = ResponseKind::kAccepted;
            return v;
        case 400:
            // No index: bisection finds the refused identification.
            v.kind = ResponseKind::kRefusedWhole;
            return v;
        case 413:
        case 414:
            v.kind = ResponseKind::kTooLarge;
            v.error = "payload too large (HTTP " + std::to_string(r.status) + ")";
            return v;
        case 429:
            v.kind = ResponseKind::kThrottled;
            v.whole_batch_throttled = true;
            return v;
        case 403:
            v.kind = ResponseKind::kFatal;
            v.stop = StopReason::kRefused;
            v.error = "forbidden by Amplitude (" + v.error + ")";
            return v;
        default:
            v.kind = r.status >= 500 ? ResponseKind::kRetry : ResponseKind::kFatal;
            if (v.kind == ResponseKind::kFatal) v.stop = StopReason::kRefused;
            return v;
    }
}

}  // namespace amplitude_sync
