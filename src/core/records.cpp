#include "records.hpp"

#include "json_text.hpp"

namespace amplitude_sync {

namespace {

bool storable(const std::string &s) {
    return s.find('\0') == std::string::npos && is_valid_utf8(s);
}

}  // namespace

void make_storable(Rejection &r) {
    for (std::string *text : {&r.field, &r.reason, &r.record.user_id, &r.record.device_id,
                              &r.record.insert_id, &r.record.event_type, &r.record.group_type,
                              &r.record.group_value}) {
        if (!storable(*text)) *text = storable_text(*text);
    }
    // Escaping would make the payload invalid JSON: it is dropped instead.
    if (!storable(r.record.json)) {
        r.record.json.clear();
        r.reason += " (payload not kept: not valid UTF-8)";
    }
}

}  // namespace amplitude_sync
