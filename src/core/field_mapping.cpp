#include "field_mapping.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cctype>
#include <new>

namespace amplitude_sync {

namespace {

const char *const kRefusedIds[] = {
    "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", "",
    "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
};

bool is_string_role_impl(FieldRole r) {
    return r == FieldRole::kEventType || r == FieldRole::kUserId || r == FieldRole::kDeviceId ||
           r == FieldRole::kInsertId || r == FieldRole::kString;
}

bool is_json_category(TypeCategory c) {
    return c == TypeCategory::kJson || c == TypeCategory::kJsonb;
}

// Which column types each role accepts; the message says what to do instead.
const char *type_problem(FieldRole role, TypeCategory c) {
    switch (role) {
        case FieldRole::kProperty:
            return nullptr;
        case FieldRole::kGroupType:
        case FieldRole::kGroupValue:
            return (c == TypeCategory::kText || is_json_category(c))
                       ? nullptr
                       : "must be text (Amplitude wants group names as strings)";
        case FieldRole::kUserProperties:
            return is_json_category(c) ? nullptr : "must be json or jsonb";
        case FieldRole::kEventType:
        case FieldRole::kUserId:
        case FieldRole::kDeviceId:
        case FieldRole::kInsertId:
        case FieldRole::kString:
            return (is_json_category(c) || c == TypeCategory::kArray)
                       ? "must be a scalar (text, number, uuid, ...)"
                       : nullptr;
        case FieldRole::kEpochMillis:
            return (c == TypeCategory::kTimestampTz || c == TypeCategory::kTimestamp ||
                    c == TypeCategory::kDate || c == TypeCategory::kInteger)
                       ? nullptr
                       : "must be a timestamptz, timestamp, date or integer epoch milliseconds";
        case FieldRole::kInteger:
            return c == TypeCategory::kInteger ? nullptr : "must be an integer";
        case FieldRole::kNumber:
            return (c == TypeCategory::kInteger || c == TypeCategory::kFloat ||
                    c == TypeCategory::kNumeric)
                       ? nullptr
                       : "must be numeric";
        case FieldRole::kObject:
        case FieldRole::kEventProperties:
            return is_json_category(c) ? nullptr : "must be json or jsonb";
        case FieldRole::kBool:
            return c == TypeCategory::kBool ? nullptr : "must be boolean";
    }
    return nullptr;
}

size_t utf8_length(std::string_view s) {
    size_t n = 0;
    for (char c : s)
        if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++n;
    return n;
}

}  // namespace

// An ID quoted for a message, cut short so a huge value cannot flood a log.
std::string quoted_for_message(std::string_view id) {
    constexpr size_t kMax = 64;
    std::string out = "\"";
    if (id.size() <= kMax) {
        out.append(id);
    } else {
        size_t cut = kMax;
        while (cut > 0 && (static_cast<unsigned char>(id[cut]) & 0xC0) == 0x80) --cut;
        out.append(id.substr(0, cut)).append("...");
    }
    return out + "\"";
}


bool is_string_role(FieldRole role) { return is_string_role_impl(role); }

std::array<unsigned char, 16> row_fingerprint(const Value *values, size_t count, std::string_view signature) {
    std::string row = "row";  // never a record's JSON
    std::string reason;
    for (size_t i = 0; i < count; ++i) {
        row += '\x1e';
        if (!append_value_json(row, values[i], reason)) row.append("invalid:").append(reason);
    }
    return record_fingerprint(row, signature);
}

std::array<unsigned char, 16> record_fingerprint(std::string_view json, std::string_view signature) {
    XXH3_state_t *state = XXH3_createState();
    if (!state) throw std::bad_alloc();
    XXH3_128bits_reset(state);
    XXH3_128bits_update(state, json.data(), json.size());
    XXH3_128bits_update(state, "\x1f", 1);
    XXH3_128bits_update(state, signature.data(), signature.size());
    XXH128_hash_t h = XXH3_128bits_digest(state);
    XXH3_freeState(state);
    XXH128_canonical_t canonical;
    XXH128_canonicalFromHash(&canonical, h);
    std::array<unsigned char, 16> out;
    for (size_t i = 0; i < out.size(); ++i) out[i] = canonical.digest[i];
    return out;
}

const char *column_type_problem(FieldRole role, TypeCategory category) {
    return type_problem(role, category);
}

void check_column_type(const ColumnPlan &p, const std::string &amplitude_name) {
    if (const char *problem = type_problem(p.role, p.category)) {
        throw PlanError("42804", "column \"" + p.column_name + "\" " + problem,
                        "Column \"" + p.column_name + "\" maps to Amplitude's \"" +
                            amplitude_name + "\" field.",
                        "Cast the column in the query, or alias it to another name to "
                        "send it as a property.");
    }
}

bool finish_encoding(const Record &record, bool rejected, const std::string &field,
                     const std::string &reason, Rejection &rejection) {
    if (!rejected) return true;
    rejection.record = record;
    rejection.outcome = Outcome::kRejected;
    rejection.field = field;
    rejection.reason = reason;
    make_storable(rejection);
    return false;
}

bool value_as_text(const Value &v, std::string &scratch, std::string_view &text,
                   std::string &reason) {
    if (v.category == TypeCategory::kText || v.category == TypeCategory::kOther) {
        text = std::string_view(v.text, v.text_len);
        return true;
    }
    scratch.clear();
    if (!append_value_json(scratch, v, reason)) return false;
    text = scratch;
    if (!text.empty() && text.front() == '"') text = text.substr(1, text.size() - 2);
    return true;
}

std::optional<std::string> check_amplitude_id(std::string_view id, int min_id_length) {
    std::string lower(id);
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    for (const char *refused : kRefusedIds) {
        if (lower == refused)
            return quoted_for_message(id) + " is a placeholder value that Amplitude refuses";
    }
    if (utf8_length(id) < static_cast<size_t>(min_id_length))
        return quoted_for_message(id) + " is shorter than " + std::to_string(min_id_length) +
               " characters";
    return std::nullopt;
}

std::string derive_insert_id(std::string_view event_json) {
    XXH128_hash_t h = XXH3_128bits(event_json.data(), event_json.size());
    static const char hex[] = "0123456789abcdef";
    std::string out = "as-";
    for (uint64_t part : {h.high64, h.low64})
        for (int shift = 60; shift >= 0; shift -= 4) out.push_back(hex[(part >> shift) & 0xF]);
    return out;
}

}  // namespace amplitude_sync
