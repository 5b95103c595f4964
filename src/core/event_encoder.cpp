#include "event_encoder.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <unordered_set>

namespace amplitude_sync {

namespace {

struct FieldSpec {
    const char *column;  // column name that selects the field
    const char *key;     // Amplitude's key
    FieldRole role;
};

// Amplitude's top-level event fields (HTTP V2 API reference). Anything not
// listed becomes an event property.
const FieldSpec kEventFields[] = {
    {"event_type", "event_type", FieldRole::kEventType},
    {"user_id", "user_id", FieldRole::kUserId},
    {"device_id", "device_id", FieldRole::kDeviceId},
    {"insert_id", "insert_id", FieldRole::kInsertId},
    {"time", "time", FieldRole::kEpochMillis},
    {"session_id", "session_id", FieldRole::kEpochMillis},
    {"event_id", "event_id", FieldRole::kInteger},
    {"event_properties", "event_properties", FieldRole::kEventProperties},
    {"user_properties", "user_properties", FieldRole::kObject},
    {"groups", "groups", FieldRole::kObject},
    {"group_properties", "group_properties", FieldRole::kObject},
    {"plan", "plan", FieldRole::kObject},
    {"ingestion_metadata", "ingestion_metadata", FieldRole::kObject},
    {"app_version", "app_version", FieldRole::kString},
    {"platform", "platform", FieldRole::kString},
    {"os_name", "os_name", FieldRole::kString},
    {"os_version", "os_version", FieldRole::kString},
    {"device_brand", "device_brand", FieldRole::kString},
    {"device_manufacturer", "device_manufacturer", FieldRole::kString},
    {"device_model", "device_model", FieldRole::kString},
    {"carrier", "carrier", FieldRole::kString},
    {"country", "country", FieldRole::kString},
    {"region", "region", FieldRole::kString},
    {"city", "city", FieldRole::kString},
    {"dma", "dma", FieldRole::kString},
    {"language", "language", FieldRole::kString},
    {"price", "price", FieldRole::kNumber},
    {"quantity", "quantity", FieldRole::kInteger},
    {"revenue", "revenue", FieldRole::kNumber},
    {"product_id", "productId", FieldRole::kString},
    {"productId", "productId", FieldRole::kString},
    {"revenue_type", "revenueType", FieldRole::kString},
    {"revenueType", "revenueType", FieldRole::kString},
    {"currency", "currency", FieldRole::kString},
    {"location_lat", "location_lat", FieldRole::kNumber},
    {"location_lng", "location_lng", FieldRole::kNumber},
    {"ip", "ip", FieldRole::kString},
    {"idfa", "idfa", FieldRole::kString},
    {"idfv", "idfv", FieldRole::kString},
    {"adid", "adid", FieldRole::kString},
    {"android_id", "android_id", FieldRole::kString},
    {"android_app_set_id", "android_app_set_id", FieldRole::kString},
    {"user_agent", "user_agent", FieldRole::kString},
    {"partner_id", "partner_id", FieldRole::kString},
    {"library", "library", FieldRole::kString},
    {"skip_user_properties_sync", "$skip_user_properties_sync", FieldRole::kBool},
    {"$skip_user_properties_sync", "$skip_user_properties_sync", FieldRole::kBool},
};

// Integer time and session_id values carry no unit, and seconds or
// microseconds sent as milliseconds land in 1970 or in the year 47,000. So an
// integer must be epoch milliseconds from 1973-03-03T09:46:40Z (1e11) up to
// 2100-01-01: the window read as seconds, microseconds or nanoseconds gives
// ranges that overlap neither it nor each other (it spans a factor of 41, the
// units differ by 1000), so a value in one of them names its likely unit.
// The price: an event of 1970 to 1973 must come from a timestamp column.
constexpr int64_t kMinPlausibleMillis = 100000000000;   // 1973-03-03T09:46:40Z
constexpr int64_t kMaxPlausibleMillis = 4102444800000;  // 2100-01-01, excluded

struct TimeUnit {
    const char *name;
    int64_t per_milli;  // units in a millisecond; 0 for seconds
    const char *fix;
};
const TimeUnit kWrongUnits[] = {
    {"seconds", 0, "multiply by 1000"},
    {"microseconds", 1000, "divide by 1000"},
    {"nanoseconds", 1000000, "divide by 1000000"},
};

// Why an integer time or session_id is not epoch milliseconds, if it is not.
std::optional<std::string> integer_millis_problem(int64_t v, bool session_id) {
    if (v < 0) {
        // Amplitude refuses times before the Unix epoch (session_id -1 means none).
        if (session_id && v == -1) return std::nullopt;
        return std::string("Amplitude refuses times before 1970-01-01");
    }
    if (v >= kMinPlausibleMillis && v < kMaxPlausibleMillis) return std::nullopt;
    for (const TimeUnit &u : kWrongUnits) {
        bool in_window = u.per_milli == 0
                             ? v >= kMinPlausibleMillis / 1000 && v < kMaxPlausibleMillis / 1000
                             : v >= kMinPlausibleMillis * u.per_milli && v < kMaxPlausibleMillis * u.per_milli;
        if (!in_window) continue;
        int64_t unix_micros = u.per_milli == 0 ? v * 1000000 : v / u.per_milli * 1000;
        std::string when;
        append_iso_timestamp(when, unix_micros - kPgEpochToUnixMicros, true);
        return std::to_string(v) + " looks like " + u.name + ", not epoch milliseconds (as " + u.name +
               ": " + when.substr(1, when.size() - 2) + "); " + u.fix + " or send a timestamptz";
    }
    return std::to_string(v) +
           " is not plausible epoch milliseconds (expected 1973-03-03T09:46:40Z to 2100-01-01T00:00:00Z" +
           (session_id ? "; -1 means no session)" : ")");
}

const char *role_field_name(FieldRole role) {
    switch (role) {
        case FieldRole::kUserId: return "user_id";
        case FieldRole::kDeviceId: return "device_id";
        default: return "";
    }
}

}  // namespace

std::vector<ColumnPlan> plan_event_columns(const std::vector<ColumnInput> &columns) {
    std::vector<ColumnPlan> plan;
    std::unordered_set<std::string> keys_seen, properties_seen;
    bool has_event_type = false, has_id = false;
    for (const ColumnInput &col : columns) {
        ColumnPlan p;
        p.column_name = col.name;
        p.category = col.category;
        const char *key = nullptr;
        for (const FieldSpec &f : kEventFields) {
            if (col.name == f.column) {
                p.role = f.role;
                key = f.key;
                break;
            }
        }
        // "plan" and "ingestion_metadata" are common property names: only a
        // json column means Amplitude's object.
        if (p.role == FieldRole::kObject && column_type_problem(FieldRole::kObject, col.category) &&
            (col.name == "plan" || col.name == "ingestion_metadata")) {
            p.role = FieldRole::kProperty;
            key = nullptr;
        }
        std::string name_for_key = key ? key : col.name;
        if (!append_json_string(p.json_key, name_for_key))
            throw PlanError("22021", "column name is not valid UTF-8", "", "");
        check_column_type(p, name_for_key);
        auto &seen = p.role == FieldRole::kProperty ? properties_seen : keys_seen;
        if (!seen.insert(name_for_key).second) {
            throw PlanError("42701",
                            "column \"" + col.name + "\" maps to \"" + name_for_key +
                                "\" more than once",
                            "Each Amplitude field and each event property can come from one "
                            "column only.",
                            "Give the columns distinct aliases in the query.");
        }
        has_event_type |= p.role == FieldRole::kEventType;
        has_id |= p.role == FieldRole::kUserId || p.role == FieldRole::kDeviceId;
        plan.push_back(std::move(p));
    }
    const char *hint =
        "Alias the query's columns to Amplitude's field names, for example: "
        "SELECT 'Signed Up' AS event_type, id AS user_id, created_at AS time FROM users.";
    if (!has_event_type)
        throw PlanError("42703", "query has no column named \"event_type\"",
                        "Every Amplitude event needs an event type.", hint);
    if (!has_id)
        throw PlanError("42703", "query has no column named \"user_id\" or \"device_id\"",
                        "Every Amplitude event needs a user_id or a device_id.", hint);
    return plan;
}

std::vector<PlanWarning> event_plan_warnings(const std::vector<ColumnPlan> &plan, bool batch_endpoint) {
    if (!batch_endpoint) return {};
    bool decided = std::any_of(plan.begin(), plan.end(),
                               [](const ColumnPlan &p) { return p.role == FieldRole::kBool; });
    if (decided) return {};
    PlanWarning w;
    w.notice = true;
    w.message = "events sent with api \"batch\" update each user's current properties";
    w.detail = "Amplitude applies the user properties and the location and device fields of every event to "
               "its user's profile, so historical events overwrite newer values.";
    w.hint = "For a backfill of history add true AS skip_user_properties_sync to the query; add false AS "
             "skip_user_properties_sync to keep Amplitude's default and silence this notice.";
    return {w};
}

EventEncoder::EventEncoder(std::vector<ColumnPlan> plan, EventOptions options)
    : plan_(std::move(plan)), options_(options) {}

void EventEncoder::begin_row(uint64_t row_number) {
    row_number_ = row_number;
    top_.clear();
    properties_.clear();
    row_property_keys_.clear();
    event_properties_json_.clear();
    identity_.user_id.clear();
    identity_.device_id.clear();
    identity_.insert_id.clear();
    identity_.event_type.clear();
    has_event_type_ = has_user_id_ = has_device_id_ = false;
    rejected_ = false;
    silent_.begin_row();
}

void EventEncoder::reject(size_t col, const std::string &reason) {
    if (rejected_) return;  // the first problem is the one reported
    rejected_ = true;
    reject_field_ = plan_[col].column_name;
    reject_reason_ = "column \"" + plan_[col].column_name + "\": " + reason;
}

void EventEncoder::begin_member(size_t col, std::string &target) {
    if (!target.empty()) target.push_back(',');
    target.append(plan_[col].json_key);
    target.push_back(':');
}

void EventEncoder::keep_identity(size_t col, std::string_view text) {
    switch (plan_[col].role) {
        case FieldRole::kEventType:
            identity_.event_type.assign(text);
            has_event_type_ = true;
            break;
        case FieldRole::kUserId:
            identity_.user_id.assign(text);
            has_user_id_ = true;
            break;
        case FieldRole::kDeviceId:
            identity_.device_id.assign(text);
            has_device_id_ = true;
            break;
        case FieldRole::kInsertId:
            identity_.insert_id.assign(text);
            break;
        default:
            break;
    }
}

bool EventEncoder::encode_row(uint64_t row_number, const Value *values, Record &record,
                              Rejection &rejection) {
    begin_row(row_number);
    for (size_t col = 0; col < plan_.size() && !rejected_; ++col) {
        if (values[col].is_null) continue;
        if (plan_[col].role == FieldRole::kProperty) row_property_keys_.push_back(&plan_[col].json_key);
        put_value(col, values[col]);
    }
    return finish_row(record, rejection);
}

void EventEncoder::put_value(size_t col, const Value &v) {
    const ColumnPlan &p = plan_[col];
    std::string reason;
    if (is_string_role(p.role)) {
        // Amplitude wants strings here: numbers, booleans and dates are sent
        // as their text (an integer user id 42 becomes "42").
        std::string_view text;
        if (!value_as_text(v, scratch_, text, reason)) return reject(col, reason);
        put_string(col, text);
        return;
    }
    if (p.role == FieldRole::kEpochMillis) {
        if (v.infinite) return reject(col, "infinite timestamps cannot be sent");
        int64_t ms = v.i;
        if (v.category == TypeCategory::kInteger) {
            if (auto problem = integer_millis_problem(v.i, p.json_key == "\"session_id\""))
                return reject(col, *problem);
        } else {
            ms = v.category == TypeCategory::kDate
                     ? (v.i * 86400 + kPgEpochToUnixMicros / 1000000) * 1000
                     : pg_timestamp_to_unix_millis(v.i);
            // A timestamp's unit is known: only Amplitude's own floor applies.
            if (ms < 0) return reject(col, "Amplitude refuses times before 1970-01-01");
        }
        begin_member(col, top_);
        append_json_int(top_, ms);
        return;
    }
    bool is_object = p.role == FieldRole::kObject || p.role == FieldRole::kEventProperties;
    std::string_view json;
    if (is_object && !json_value_text(v, json, reason)) return reject(col, reason);
    if (is_object && !json_is_object(json)) return reject(col, "value must be a JSON object");
    if (p.role == FieldRole::kEventProperties) {
        event_properties_json_.assign(json);
        if (json_max_depth(event_properties_json_) > kMaxPropertyDepth)
            return reject(col, "nesting deeper than Amplitude's limit of " +
                                   std::to_string(kMaxPropertyDepth) + " levels");
        note_long_json(silent_, p.column_name, json);
        return;
    }
    // Numbers, booleans, objects and properties: the value's own JSON.
    std::string &target = p.role == FieldRole::kProperty ? properties_ : top_;
    size_t mark = target.size();
    begin_member(col, target);
    size_t value_start = target.size();
    if (!append_value_json(target, v, reason)) {
        target.resize(mark);
        return reject(col, reason);
    }
    if (v.category == TypeCategory::kJson || v.category == TypeCategory::kJsonb ||
        v.category == TypeCategory::kArray) {
        // A property value sits one level below event_properties.
        int depth = json_max_depth(std::string_view(target).substr(value_start)) +
                    (p.role == FieldRole::kProperty ? 1 : 0);
        if (depth > kMaxPropertyDepth) {
            target.resize(mark);
            return reject(col, "nesting deeper than Amplitude's limit of " +
                                   std::to_string(kMaxPropertyDepth) + " levels");
        }
    }
    std::string_view written = std::string_view(target).substr(value_start);
    if (p.json_key == "\"groups\"")
        note_group_limits(silent_, p.column_name, written);
    else
        note_long_json(silent_, p.column_name, written);
}

void EventEncoder::put_string(size_t col, std::string_view text) {
    // An empty insert_id means "none": one is derived, as for NULL.
    if (plan_[col].role == FieldRole::kInsertId && text.empty()) return;
    std::string &target = plan_[col].role == FieldRole::kProperty ? properties_ : top_;
    size_t mark = target.size();
    begin_member(col, target);
    if (!append_json_string(target, text)) {
        target.resize(mark);
        return reject(col, "text is not valid UTF-8");
    }
    note_long_text(silent_, plan_[col].column_name, text);
    keep_identity(col, text);
}

bool EventEncoder::finish_row(Record &record, Rejection &rejection) {
    record.row_number = row_number_;
    record.json.clear();
    if (!rejected_) {
        std::string &out = record.json;
        out.push_back('{');
        out.append(top_);
        if (!event_properties_json_.empty() || !properties_.empty()) {
            if (out.size() > 1) out.push_back(',');
            out.append("\"event_properties\":{");
            bool first = true;
            json_object_members(event_properties_json_, members_);
            for (const JsonMember &m : members_) {
                // A non-NULL property column wins over the same key in event_properties.
                if (std::any_of(row_property_keys_.begin(), row_property_keys_.end(),
                                [&](const std::string *key) { return *key == m.quoted_key; }))
                    continue;
                if (!first) out.push_back(',');
                first = false;
                out.append(m.quoted_key).push_back(':');
                out.append(m.value);
            }
            if (!properties_.empty()) {
                if (!first) out.push_back(',');
                out.append(properties_);
            }
            out.push_back('}');
        }
        if (identity_.insert_id.empty()) {
            identity_.insert_id = derive_insert_id(out);
            if (out.size() > 1) out.push_back(',');
            out.append("\"insert_id\":\"").append(identity_.insert_id).push_back('"');
        }
        out.push_back('}');

        if (!has_event_type_ || identity_.event_type.empty()) {
            rejected_ = true;
            reject_field_ = "event_type";
            reject_reason_ = has_event_type_ ? "event_type is empty" : "event_type is missing";
        } else if (is_reserved_event_type(identity_.event_type)) {
            rejected_ = true;
            reject_field_ = "event_type";
            reject_reason_ = reserved_event_type_reason(identity_.event_type);
        } else if (!has_user_id_ && !has_device_id_) {
            rejected_ = true;
            reject_field_ = "user_id";
            reject_reason_ = "neither user_id nor device_id is set";
        } else {
            for (FieldRole role : {FieldRole::kUserId, FieldRole::kDeviceId}) {
                const std::string &id =
                    role == FieldRole::kUserId ? identity_.user_id : identity_.device_id;
                bool present = role == FieldRole::kUserId ? has_user_id_ : has_device_id_;
                if (!present) continue;
                if (auto problem = check_amplitude_id(id, options_.min_id_length)) {
                    rejected_ = true;
                    reject_field_ = role_field_name(role);
                    reject_reason_ = std::string(role_field_name(role)) + " " + *problem;
                    break;
                }
            }
        }
    }
    record.user_id = identity_.user_id;
    record.device_id = identity_.device_id;
    record.insert_id = identity_.insert_id;
    record.event_type = identity_.event_type;
    if (!rejected_) silent_.count_row();
    return finish_encoding(record, rejected_, reject_field_, reject_reason_, rejection);
}

}  // namespace amplitude_sync
