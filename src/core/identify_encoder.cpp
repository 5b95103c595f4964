#include "identify_encoder.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <iterator>
#include <unordered_set>

namespace amplitude_sync {

namespace {

struct FieldSpec {
    const char *column;
    FieldRole role;
};

// The keys and objects of an identification, selected by their names.
const FieldSpec kIdentifyFields[] = {
    {"user_id", FieldRole::kUserId},
    {"device_id", FieldRole::kDeviceId},
    {"groups", FieldRole::kObject},
    {"user_properties", FieldRole::kUserProperties},
};

// Amplitude's default fields of an identification (Identify API reference).
// Only a column named with the prefix selects one: a model column that
// happens to be called "country" is a user property, not a field that resets
// the user's city, region and DMA.
constexpr std::string_view kDefaultFieldPrefix = "amplitude_";
const char *const kDefaultFields[] = {
    "app_version",  "platform",     "os_name", "os_version", "device_brand",
    "device_manufacturer", "device_model", "carrier", "country", "region",
    "city",         "dma",          "language", "paying",   "start_version",
};

// Fields Amplitude updates as one: sending some resets the others that the
// identification leaves out.
struct FieldGroup {
    const char *name;
    std::vector<std::string_view> fields;
};
const FieldGroup kFieldGroups[] = {
    {"location", {"country", "region", "city", "dma"}},
    {"device", {"platform", "os_name", "os_version", "device_brand", "device_manufacturer",
                "device_model", "carrier"}},
};

// The group index of a default field's JSON key ("\"country\""), or -1.
int field_group_of(std::string_view json_key) {
    if (json_key.size() < 2) return -1;
    std::string_view field = json_key.substr(1, json_key.size() - 2);
    for (size_t g = 0; g < std::size(kFieldGroups); ++g) {
        const auto &fields = kFieldGroups[g].fields;
        if (std::find(fields.begin(), fields.end(), field) != fields.end()) return static_cast<int>(g);
    }
    return -1;
}

const FieldSpec kGroupFields[] = {
    {"group_type", FieldRole::kGroupType},
    {"group_value", FieldRole::kGroupValue},
    {"group_properties", FieldRole::kUserProperties},
};

// Operations in the order they are written (and Amplitude applies them).
const char *const kUserOperations[] = {"$set",    "$setOnce",   "$add",        "$append", "$prepend",
                                       "$preInsert", "$postInsert", "$remove", "$unset"};
const char *const kGroupOperations[] = {"$set", "$setOnce", "$add", "$append", "$prepend", "$unset"};

std::vector<std::string> operations_of(ProfileObject object) {
    if (object == ProfileObject::kGroup)
        return {std::begin(kGroupOperations), std::end(kGroupOperations)};
    return {std::begin(kUserOperations), std::end(kUserOperations)};
}

std::string joined(const std::vector<std::string> &names) {
    std::string out;
    for (const std::string &n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
}

const char *object_name(ProfileObject object) {
    switch (object) {
        case ProfileObject::kUser: return "user";
        case ProfileObject::kDevice: return "device";
        case ProfileObject::kGroup: return "group";
    }
    return "";
}

bool is_number_category(TypeCategory c) {
    return c == TypeCategory::kInteger || c == TypeCategory::kFloat || c == TypeCategory::kNumeric;
}

std::string list_of(const std::vector<std::string> &names) {
    std::string out;
    for (size_t i = 0; i < names.size(); ++i)
        out += (i == 0 ? "" : i + 1 == names.size() ? " and " : ", ") + names[i];
    return out;
}

}  // namespace

bool is_idempotent_operation(std::string_view op) {
    return op == "$set" || op == "$setOnce" || op == "$unset";
}

std::vector<PlanWarning> identify_plan_warnings(const std::vector<ColumnPlan> &plan) {
    std::vector<PlanWarning> out;
    for (size_t g = 0; g < std::size(kFieldGroups); ++g) {
        std::vector<std::string> sent, reset, reset_columns;
        for (std::string_view field : kFieldGroups[g].fields) {
            std::string key = "\"" + std::string(field) + "\"";
            bool has = std::any_of(plan.begin(), plan.end(), [&](const ColumnPlan &p) {
                return p.role == FieldRole::kString && p.json_key == key;
            });
            (has ? sent : reset).emplace_back(field);
            if (!has) reset_columns.push_back(std::string(kDefaultFieldPrefix) + std::string(field));
        }
        if (sent.empty() || reset.empty()) continue;
        out.push_back({std::string("Amplitude will reset the ") + kFieldGroups[g].name + " fields " +
                           list_of(reset) + " of every identified " + "profile",
                       "The query sends " + list_of(sent) + "; Amplitude updates the " +
                           kFieldGroups[g].name + " fields as one group and resets those an "
                           "identification leaves out.",
                       "Add the columns " + list_of(reset_columns) + ", or leave out the " +
                           kFieldGroups[g].name + " fields."});
    }
    return out;
}

std::vector<std::pair<std::string, std::string>> parse_operations(std::string_view text,
                                                                  ProfileObject object) {
    std::vector<std::pair<std::string, std::string>> out;
    if (text.empty()) return out;
    nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
    std::vector<std::string> allowed = operations_of(object);
    const char *hint = "Pass a jsonb object of column name to operation, for example "
                       "'{\"logins\": \"$add\", \"tags\": \"$append\"}'.";
    if (!doc.is_object())
        throw PlanError("22023", "operations must be a JSON object", "", hint);
    for (auto &[column, op] : doc.items()) {
        if (!op.is_string())
            throw PlanError("22023", "operation for column \"" + column + "\" must be a string", "", hint);
        std::string name = op.get<std::string>();
        if (std::find(allowed.begin(), allowed.end(), name) == allowed.end())
            throw PlanError("22023", "unknown operation \"" + name + "\" for column \"" + column + "\"",
                            std::string("Operations for a ") + object_name(object) + " are: " +
                                joined(allowed) + ".",
                            hint);
        out.emplace_back(column, name);
    }
    return out;
}

std::vector<ColumnPlan> plan_identify_columns(const std::vector<ColumnInput> &columns,
                                              const IdentifyOptions &options) {
    bool group = options.object == ProfileObject::kGroup;
    std::vector<ColumnPlan> plan;
    std::unordered_set<std::string> seen;
    for (const ColumnInput &col : columns) {
        ColumnPlan p;
        p.column_name = col.name;
        p.category = col.category;
        std::string key = col.name;
        auto match = [&](const FieldSpec &f) { return col.name == f.column; };
        const FieldSpec *spec = nullptr;
        if (group) {
            auto it = std::find_if(std::begin(kGroupFields), std::end(kGroupFields), match);
            if (it != std::end(kGroupFields)) spec = it;
        } else {
            auto it = std::find_if(std::begin(kIdentifyFields), std::end(kIdentifyFields), match);
            if (it != std::end(kIdentifyFields)) spec = it;
        }
        if (spec) p.role = spec->role;
        if (!group && std::string_view(col.name).substr(0, kDefaultFieldPrefix.size()) == kDefaultFieldPrefix) {
            // The prefix is Amplitude's: a misspelt field must not become a property.
            key = col.name.substr(kDefaultFieldPrefix.size());
            if (std::find(std::begin(kDefaultFields), std::end(kDefaultFields), key) == std::end(kDefaultFields)) {
                std::vector<std::string> names;
                for (const char *f : kDefaultFields) names.push_back(std::string(kDefaultFieldPrefix) + f);
                throw PlanError("42703", "column \"" + col.name + "\" names no Amplitude field",
                                "Columns named amplitude_... select Amplitude's fields of an identification: " +
                                    joined(names) + ".",
                                "Alias the column to another name to send it as a user property.");
            }
            p.role = FieldRole::kString;
        }
        // The name is written into every record and quoted in rejections.
        if (!append_json_string(p.json_key, key))
            throw PlanError("22021", "column name is not valid UTF-8", "", "");
        check_column_type(p, key);
        // A user property "country" and the default field "country" are different things.
        if (!seen.insert((p.role == FieldRole::kProperty ? "property " : "field ") + key).second)
            throw PlanError("42701", "column \"" + col.name + "\" appears more than once",
                            "Each field and each property can come from one column only.",
                            "Give the columns distinct aliases in the query.");
        if (p.role == FieldRole::kProperty) p.operation = "$set";
        plan.push_back(std::move(p));
    }
    std::vector<std::string> allowed = operations_of(options.object);
    for (const auto &[column, op] : options.operations) {
        if (std::find(allowed.begin(), allowed.end(), op) == allowed.end())
            throw PlanError("22023", "unknown operation \"" + op + "\" for column \"" + column + "\"",
                            std::string("Operations for a ") + object_name(options.object) + " are: " +
                                joined(allowed) + ".", "");
        auto it = std::find_if(plan.begin(), plan.end(),
                               [&](const ColumnPlan &p) { return p.column_name == column; });
        if (it == plan.end())
            throw PlanError("42703", "operations name column \"" + column + "\", which the query does not have",
                            "", "Operations apply to the query's property columns.");
        if (it->role != FieldRole::kProperty)
            throw PlanError("22023", "column \"" + column + "\" is not a property",
                            "It is one of Amplitude's identification fields; operations apply to properties.", "");
        if (options.idempotent_only && !is_idempotent_operation(op))
            throw PlanError("22023", "operation \"" + op + "\" for column \"" + column + "\" is not allowed in a saved sync",
                            "A saved sync sends a row only when it changed, and again after a failed run, so " +
                                op + " would be skipped or applied twice.",
                            "Compute the value in the query and use $set, or send the operation with a one-shot call.");
        if (op == "$add" && !is_number_category(it->category))
            throw PlanError("42804", "column \"" + column + "\" uses $add, which needs a number",
                            "", "Cast the column to a numeric type in the query.");
        it->operation = op;
    }
    auto has = [&](FieldRole role) {
        return std::any_of(plan.begin(), plan.end(), [&](const ColumnPlan &p) { return p.role == role; });
    };
    const char *hint = group ? "Alias the query's columns, for example: SELECT 'company' AS group_type, "
                               "name AS group_value, plan, seats FROM companies."
                             : "Alias the query's columns, for example: SELECT id AS user_id, plan, "
                               "lifetime_value FROM users.";
    if (group && (!has(FieldRole::kGroupType) || !has(FieldRole::kGroupValue)))
        throw PlanError("42703", "query has no columns named \"group_type\" and \"group_value\"",
                        "A group is identified by its type and value.", hint);
    if (options.object == ProfileObject::kUser && !has(FieldRole::kUserId))
        throw PlanError("42703", "query has no column named \"user_id\"",
                        "A user is identified by its user_id (use object => 'device' to update devices).", hint);
    if (options.object == ProfileObject::kDevice && !has(FieldRole::kDeviceId))
        throw PlanError("42703", "query has no column named \"device_id\"",
                        "A device is identified by its device_id.",
                        "Alias the query's columns, for example: SELECT device_id, owner_id AS user_id, "
                        "model FROM devices.");
    return plan;
}

IdentifyEncoder::IdentifyEncoder(std::vector<ColumnPlan> plan, IdentifyOptions options)
    : plan_(std::move(plan)), options_(std::move(options)),
      operation_names_(operations_of(options_.object)),
      by_operation_(operation_names_.size()) {
    for (const ColumnPlan &p : plan_)
        field_group_.push_back(p.role == FieldRole::kString ? field_group_of(p.json_key) : -1);
}

void IdentifyEncoder::note_grouped_field_resets(const Value *values) {
    // A NULL default field is left out, so Amplitude resets it when another
    // field of its group is sent.
    for (size_t g = 0; g < std::size(kFieldGroups); ++g) {
        const std::string *null_column = nullptr;
        bool sent = false;
        for (size_t col = 0; col < plan_.size(); ++col) {
            if (field_group_[col] != static_cast<int>(g)) continue;
            if (values[col].is_null) {
                if (!null_column) null_column = &plan_[col].column_name;
            } else {
                sent = true;
            }
        }
        if (sent && null_column) silent_.note(SilentChange::kResetGroupedField, *null_column);
    }
}

void IdentifyEncoder::reject(const std::string &field, const std::string &reason) {
    if (rejected_) return;  // the first problem is the one reported
    rejected_ = true;
    reject_field_ = field;
    reject_reason_ = reason;
}

void IdentifyEncoder::put_top_string(size_t col, std::string_view text) {
    const ColumnPlan &p = plan_[col];
    size_t mark = top_.size();
    if (!top_.empty()) top_.push_back(',');
    top_.append(p.json_key).push_back(':');
    if (!append_json_string(top_, text)) {
        top_.resize(mark);
        return reject(p.column_name, "column \"" + p.column_name + "\": text is not valid UTF-8");
    }
    note_long_text(silent_, p.column_name, text);
    switch (p.role) {
        case FieldRole::kUserId:
            identity_.user_id.assign(text);
            has_user_id_ = true;
            break;
        case FieldRole::kDeviceId:
            identity_.device_id.assign(text);
            has_device_id_ = true;
            break;
        case FieldRole::kGroupType: identity_.group_type.assign(text); break;
        case FieldRole::kGroupValue: identity_.group_value.assign(text); break;
        default: break;
    }
}

void IdentifyEncoder::put_property(size_t col, const std::string &operation, std::string_view json_value) {
    size_t index = static_cast<size_t>(
        std::find(operation_names_.begin(), operation_names_.end(), operation) - operation_names_.begin());
    std::string &target = by_operation_[index];
    if (!target.empty()) target.push_back(',');
    target.append(plan_[col].json_key).push_back(':');
    target.append(json_value);
    row_keys_.push_back(plan_[col].json_key);
}

void IdentifyEncoder::put_value(size_t col, const Value &v) {
    const ColumnPlan &p = plan_[col];
    std::string reason;
    std::string_view text;
    switch (p.role) {
        case FieldRole::kUserId:
        case FieldRole::kDeviceId:
        case FieldRole::kString:
            if (!value_as_text(v, scratch_, text, reason)) return reject(p.column_name, "column \"" + p.column_name + "\": " + reason);
            return put_top_string(col, text);
        case FieldRole::kGroupType:
        case FieldRole::kGroupValue:
            if (v.category == TypeCategory::kJson || v.category == TypeCategory::kJsonb) {
                if (!json_value_text(v, text, reason))
                    return reject(p.column_name, "column \"" + p.column_name + "\": " + reason);
                nlohmann::json parsed = nlohmann::json::parse(text, nullptr, false);
                if (!parsed.is_string())
                    return reject(p.column_name, p.column_name + " must be a string");
                scratch_ = parsed.get<std::string>();
                return put_top_string(col, scratch_);
            }
            return put_top_string(col, std::string_view(v.text, v.text_len));
        case FieldRole::kObject: {  // groups: membership
            if (!json_value_text(v, text, reason))
                return reject(p.column_name, "column \"" + p.column_name + "\": " + reason);
            if (!json_is_object(text)) return reject(p.column_name, "column \"" + p.column_name + "\": value must be a JSON object");
            if (json_max_depth(text) > kMaxPropertyDepth)
                return reject(p.column_name, "column \"" + p.column_name + "\": nesting deeper than Amplitude's limit of 40 levels");
            if (!top_.empty()) top_.push_back(',');
            top_.append(p.json_key).push_back(':');
            top_.append(text);
            note_group_limits(silent_, p.column_name, text);
            return;
        }
        case FieldRole::kUserProperties:
            if (!json_value_text(v, text, reason))
                return reject(p.column_name, "column \"" + p.column_name + "\": " + reason);
            if (!json_is_object(text)) return reject(p.column_name, "column \"" + p.column_name + "\": value must be a JSON object");
            properties_column_.assign(text);
            note_long_json(silent_, p.column_name, text);
            return;
        case FieldRole::kProperty: {
            if (p.operation == "$unset") return put_property(col, p.operation, "\"-\"");
            scratch_.clear();
            if (!append_value_json(scratch_, v, reason))
                return reject(p.column_name, "column \"" + p.column_name + "\": " + reason);
            // A property sits two levels down: properties object, operation.
            if (json_max_depth(scratch_) + 2 > kMaxPropertyDepth)
                return reject(p.column_name, "column \"" + p.column_name + "\": nesting deeper than Amplitude's limit of 40 levels");
            note_long_json(silent_, p.column_name, scratch_);
            return put_property(col, p.operation, scratch_);
        }
        default:
            return;
    }
}

bool IdentifyEncoder::merge_properties_column() {
    if (properties_column_.empty()) return true;
    const char *column = options_.object == ProfileObject::kGroup ? "group_properties" : "user_properties";
    json_object_members(properties_column_, members_);
    bool too_deep = false;
    auto already_set = [&](std::string_view key) {
        return std::find(row_keys_.begin(), row_keys_.end(), key) != row_keys_.end();
    };
    auto add = [&](size_t op, const JsonMember &m) {
        // A property column wins over the same key from the jsonb column.
        if (already_set(m.quoted_key)) return;
        // Every property ends up two levels down: properties object, operation.
        if (json_max_depth(m.value) + 2 > kMaxPropertyDepth) too_deep = true;
        std::string &target = by_operation_[op];
        if (!target.empty()) target.push_back(',');
        target.append(m.quoted_key).push_back(':');
        target.append(m.value);
        row_keys_.emplace_back(m.quoted_key);
    };
    for (const JsonMember &m : members_) {
        bool is_operation = m.quoted_key.size() > 2 && m.quoted_key[1] == '$';
        if (!is_operation) {
            add(0, m);  // a plain key means $set
            continue;
        }
        std::string name(m.quoted_key.substr(1, m.quoted_key.size() - 2));
        auto it = std::find(operation_names_.begin(), operation_names_.end(), name);
        if (it == operation_names_.end() || !json_is_object(m.value)) {
            reject(column, std::string("column \"") + column + "\": unsupported operation " + name +
                               " (supported: " + joined(operation_names_) + ", each with an object)");
            return false;
        }
        if (options_.idempotent_only && !is_idempotent_operation(name)) {
            reject(column, std::string("column \"") + column + "\": operation " + name +
                               " is not allowed in a saved sync (only $set, $setOnce and $unset are)");
            return false;
        }
        json_object_members(m.value, inner_members_);
        for (const JsonMember &inner : inner_members_) add(static_cast<size_t>(it - operation_names_.begin()), inner);
    }
    if (too_deep) {
        reject(column, std::string("column \"") + column + "\": nesting deeper than Amplitude's limit of 40 levels");
        return false;
    }
    return true;
}

bool IdentifyEncoder::check_keys() {
    if (options_.object == ProfileObject::kGroup) {
        if (identity_.group_type.empty()) reject("group_type", "group_type is missing or empty");
        else if (identity_.group_value.empty()) reject("group_value", "group_value is missing or empty");
        return !rejected_;
    }
    bool user = options_.object == ProfileObject::kUser;
    if (user && !has_user_id_) reject("user_id", "user_id is missing");
    if (!user && !has_device_id_) reject("device_id", "device_id is missing");
    if (has_user_id_)
        if (auto problem = check_amplitude_id(identity_.user_id, options_.min_id_length))
            reject("user_id", "user_id " + *problem);
    if (has_device_id_)
        if (auto problem = check_amplitude_id(identity_.device_id, options_.min_id_length))
            reject("device_id", "device_id " + *problem);
    return !rejected_;
}

bool IdentifyEncoder::encode_row(uint64_t row_number, const Value *values, Record &record,
                                 Rejection &rejection) {
    top_.clear();
    for (std::string &s : by_operation_) s.clear();
    row_keys_.clear();
    properties_column_.clear();
    properties_.clear();
    event_properties_.clear();
    identity_ = Record{};
    has_user_id_ = has_device_id_ = false;
    rejected_ = false;
    silent_.begin_row();

    for (size_t col = 0; col < plan_.size() && !rejected_; ++col) {
        if (!values[col].is_null) {
            put_value(col, values[col]);
        } else if (options_.nulls_unset && plan_[col].role == FieldRole::kProperty) {
            put_property(col, "$unset", "\"-\"");
        }
    }
    record = Record{};
    record.row_number = row_number;
    if (!rejected_ && check_keys() && merge_properties_column()) {
        size_t count = row_keys_.size();
        if (options_.object == ProfileObject::kGroup && count > kMaxGroupProperties) {
            reject("group_properties", std::to_string(count) + " properties, more than the " +
                                           std::to_string(kMaxGroupProperties) +
                                           " a group identification may carry");
        }
        for (size_t op = 0; op < by_operation_.size(); ++op) {
            if (by_operation_[op].empty()) continue;
            for (std::string *target : {&properties_, &event_properties_}) {
                if (target == &event_properties_ && !is_idempotent_operation(operation_names_[op])) continue;
                *target += target->empty() ? "{" : ",";
                append_json_string(*target, operation_names_[op]);
                target->append(":{").append(by_operation_[op]).push_back('}');
            }
        }
        for (std::string *target : {&properties_, &event_properties_})
            if (!target->empty()) target->push_back('}');
        record.property_count = count;
        note_grouped_field_resets(values);
        std::string &out = record.json;
        out.push_back('{');
        out.append(top_);
        if (!properties_.empty()) {
            if (out.size() > 1) out.push_back(',');
            out.append(options_.object == ProfileObject::kGroup ? "\"group_properties\":" : "\"user_properties\":");
            out.append(properties_);
        }
        out.push_back('}');
    }
    record.user_id = identity_.user_id;
    record.device_id = identity_.device_id;
    record.group_type = identity_.group_type;
    record.group_value = identity_.group_value;
    record.group_key = identity_.group_type + '\x1f' + identity_.group_value;
    if (!rejected_) silent_.count_row();
    return finish_encoding(record, rejected_, reject_field_, reject_reason_, rejection);
}

}  // namespace amplitude_sync
