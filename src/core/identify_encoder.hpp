// Turns query rows into identifications for /identify (users, devices) and
// /groupidentify (groups): the key columns, Amplitude's identify-level
// fields, and every other column as a property under an operation ($set by
// default, chosen per column). Core file: no postgres.h.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "field_mapping.hpp"

namespace amplitude_sync {

enum class ProfileObject { kUser, kDevice, kGroup };

struct IdentifyOptions {
    ProfileObject object = ProfileObject::kUser;
    // column -> operation ("$add", ...); columns not named use "$set".
    std::vector<std::pair<std::string, std::string>> operations;
    bool nulls_unset = false;  // NULL columns become $unset instead of being left out
    int min_id_length = 5;
    // Saved syncs: only operations that give the same profile however often
    // they are applied (a row is resent only when it changed, or after a
    // failed run): others are refused in operations (PlanError) and in a
    // user_properties column (the row is rejected).
    bool idempotent_only = false;
};

// $set, $setOnce and $unset: applying them twice gives what applying them
// once does, unlike $add, $append, $prepend, $preInsert, $postInsert and $remove.
bool is_idempotent_operation(std::string_view op);

// A configuration the glue reports as a WARNING before any row is sent.
// Warnings about a plan: Amplitude's default fields come from columns named
// amplitude_<field> (amplitude_country, ...), and Amplitude updates the
// location fields (country, region, city, dma) and the device fields
// (platform, os_name, os_version, device_brand, device_manufacturer,
// device_model, carrier) as groups: a query that sends part of a group
// makes Amplitude reset the rest for every profile it identifies.
std::vector<PlanWarning> identify_plan_warnings(const std::vector<ColumnPlan> &plan);

// Reads the operations argument, a JSON object of column name -> operation.
// Throws PlanError for anything else or for an operation the object lacks.
std::vector<std::pair<std::string, std::string>> parse_operations(std::string_view json,
                                                                  ProfileObject object);

// Checks names and types and decides each column's role. Throws PlanError.
std::vector<ColumnPlan> plan_identify_columns(const std::vector<ColumnInput> &columns,
                                              const IdentifyOptions &options);

// The most properties one group identification may carry.
constexpr size_t kMaxGroupProperties = 1024;

class IdentifyEncoder final : public RowEncoder {
public:
    IdentifyEncoder(std::vector<ColumnPlan> plan, IdentifyOptions options);

    bool encode_row(uint64_t row_number, const Value *values, Record &record,
                    Rejection &rejection) override;

    // After a successful encode_row: the user_properties for the properties
    // event, which carries only the idempotent operations ($set, $setOnce,
    // $unset) so that the others, sent to /identify, apply once; empty when
    // none remains.
    const std::string &last_properties() const { return event_properties_; }

private:
    void put_value(size_t col, const Value &v);
    void put_top_string(size_t col, std::string_view text);
    void put_property(size_t col, const std::string &operation, std::string_view json_value);
    bool merge_properties_column();
    void reject(const std::string &field, const std::string &reason);
    bool check_keys();
    void note_grouped_field_resets(const Value *values);

    std::vector<ColumnPlan> plan_;
    IdentifyOptions options_;
    std::vector<std::string> operation_names_;  // in the order they are written
    std::vector<int> field_group_;              // per column: its field group, or -1

    // Per-row state; buffers keep their capacity across rows.
    std::string top_;
    std::vector<std::string> by_operation_;         // members per operation
    std::vector<std::string> row_keys_;             // property keys set this row
    std::string properties_column_;                 // user_/group_properties jsonb, raw
    std::string properties_;
    std::string event_properties_;                  // the idempotent part of properties_
    std::string scratch_;
    std::vector<JsonMember> members_, inner_members_;
    Record identity_;
    bool has_user_id_ = false, has_device_id_ = false;
    bool rejected_ = false;
    std::string reject_field_, reject_reason_;
};

}  // namespace amplitude_sync
