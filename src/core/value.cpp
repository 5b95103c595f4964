#include "value.hpp"

#include "json_text.hpp"

namespace amplitude_sync {

namespace {

// Writes the elements of one dimension (and those below it), row-major.
bool append_array_level(std::string &out, const Value &array, int level, size_t &next,
                        std::string &reason) {
    out.push_back('[');
    for (int k = 0; k < array.dims[level]; ++k) {
        if (k) out.push_back(',');
        if (level + 1 < array.ndims) {
            if (!append_array_level(out, array, level + 1, next, reason)) return false;
        } else if (!append_value_json(out, array.elements[next++], reason)) {
            return false;
        }
    }
    out.push_back(']');
    return true;
}

}  // namespace

bool json_value_text(const Value &v, std::string_view &text, std::string &reason) {
    text = std::string_view(v.text, v.text_len);
    if (is_valid_utf8(text)) return true;
    reason = "json is not valid UTF-8";
    return false;
}

bool append_value_json(std::string &out, const Value &v, std::string &reason) {
    if (v.is_null) {
        out.append("null");
        return true;
    }
    switch (v.category) {
        case TypeCategory::kBool:
            out.append(v.b ? "true" : "false");
            return true;
        case TypeCategory::kInteger:
            append_json_int(out, v.i);
            return true;
        case TypeCategory::kFloat:
            if (append_json_double(out, v.d)) return true;
            reason = "NaN and infinite numbers cannot be sent as JSON";
            return false;
        case TypeCategory::kNumeric:
            if (append_json_numeric_text(out, std::string_view(v.text, v.text_len))) return true;
            reason = "NaN and infinite numbers cannot be sent as JSON";
            return false;
        case TypeCategory::kJson:
        case TypeCategory::kJsonb: {
            std::string_view text;
            if (!json_value_text(v, text, reason)) return false;
            out.append(text);
            return true;
        }
        case TypeCategory::kTimestampTz:
        case TypeCategory::kTimestamp:
            if (v.infinite) {
                reason = "infinite timestamps cannot be sent";
                return false;
            }
            append_iso_timestamp(out, v.i, v.category == TypeCategory::kTimestampTz);
            return true;
        case TypeCategory::kDate:
            if (v.infinite) {
                reason = "infinite dates cannot be sent";
                return false;
            }
            append_iso_date(out, static_cast<int32_t>(v.i));
            return true;
        case TypeCategory::kArray: {
            if (v.ndims == 0) {
                out.append("[]");
                return true;
            }
            size_t next = 0;
            return append_array_level(out, v, 0, next, reason);
        }
        case TypeCategory::kText:
        case TypeCategory::kOther:
            if (append_json_string(out, std::string_view(v.text, v.text_len))) return true;
            reason = "text is not valid UTF-8";
            return false;
    }
    return false;
}

}  // namespace amplitude_sync
