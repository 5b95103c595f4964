#include "field_mapping.hpp"

#include <xxhash.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <new>

namespace amplitude_sync {

namespace {

const char *const kRefusedIds[] = {
    "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", "",
    "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
};

// Reserved for Amplitude's use (HTTP V2 API reference, event_type).
const char *const kReservedEventTypes[] = {
    "[Amplitude] Start Session",     "[Amplitude] End Session",
    "[Amplitude] Revenue",           "[Amplitude] Revenue (Verified)",
    "[Amplitude] Revenue (Unverified)", "[Amplitude] Merged User",
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


bool is_reserved_event_type(std::string_view event_type) {
    return std::find(std::begin(kReservedEventTypes), std::end(kReservedEventTypes), event_type) !=
           std::end(kReservedEventTypes);
}

std::string reserved_event_type_reason(std::string_view event_type) {
    return "event_type " + quoted_for_message(event_type) + " is reserved for Amplitude, which refuses it";
}

void SilentChanges::count_row() {
    for (size_t k = 0; k < kSilentChangeKinds; ++k) {
        if (!row_[k]) continue;
        if (totals_[k].records++ == 0) totals_[k].column = *row_[k];
    }
    row_.fill(nullptr);
}

std::vector<std::string> SilentChanges::warnings() const {
    static const char *const kWhat[kSilentChangeKinds] = {
        "strings longer than 1,024 characters, which Amplitude truncates",
        "more than 5 group types, of which Amplitude keeps the first 5",
        "more than 10 values for a group type, of which Amplitude keeps the first 10",
        "a NULL location or device field while another field of its group is sent, so "
        "Amplitude resets it",
    };
    std::vector<std::string> out;
    for (size_t k = 0; k < kSilentChangeKinds; ++k) {
        if (!totals_[k].records) continue;
        out.push_back(std::to_string(totals_[k].records) +
                      (totals_[k].records == 1 ? " record carries " : " records carry ") + kWhat[k] +
                      " (for example column \"" + totals_[k].column + "\")");
    }
    return out;
}

void note_long_text(SilentChanges &silent, const std::string &column, std::string_view text) {
    if (text.size() > kMaxStringChars && utf8_char_count(text) > kMaxStringChars)
        silent.note(SilentChange::kTruncatedString, column);
}

void note_long_json(SilentChanges &silent, const std::string &column, std::string_view json) {
    if (json_has_string_longer_than(json, kMaxStringChars))
        silent.note(SilentChange::kTruncatedString, column);
}

void note_group_limits(SilentChanges &silent, const std::string &column, std::string_view json) {
    note_long_json(silent, column, json);
    nlohmann::json groups = nlohmann::json::parse(json, nullptr, false);
    if (!groups.is_object()) return;
    if (groups.size() > kMaxGroupTypes) silent.note(SilentChange::kDroppedGroupTypes, column);
    for (const auto &[type, values] : groups.items())
        if (values.is_array() && values.size() > kMaxGroupValues)
            silent.note(SilentChange::kDroppedGroupValues, column);
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
    if (utf8_char_count(id) < static_cast<size_t>(min_id_length))
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
