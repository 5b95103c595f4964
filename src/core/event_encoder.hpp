// Turns query rows into Amplitude event JSON: the "field mapper".
//
// Columns are matched by name to Amplitude's top-level event fields; every
// other column becomes an event property. The PostgreSQL glue classifies
// each column's type into a TypeCategory, asks plan_event_columns() for a
// plan (which rejects unusable column types up front), then feeds each row's
// values to EventEncoder, which writes the event text directly into a reused
// buffer. Core file: no postgres.h.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "field_mapping.hpp"

namespace amplitude_sync {

struct EventOptions {
    int min_id_length = 5;
};

// Checks names and types and decides each column's role. Throws PlanError.
std::vector<ColumnPlan> plan_event_columns(const std::vector<ColumnInput> &columns);

// Notes about a plan. Events sent to /batch are mostly backfills, and
// Amplitude applies each event's user properties to the user's current
// profile unless the event carries "$skip_user_properties_sync": a query for
// /batch without a skip_user_properties_sync column gets a NOTICE asking
// for the decision (true for history, false to keep Amplitude's default).
std::vector<PlanWarning> event_plan_warnings(const std::vector<ColumnPlan> &plan, bool batch_endpoint);

class EventEncoder final : public RowEncoder {
public:
    EventEncoder(std::vector<ColumnPlan> plan, EventOptions options);

    const std::vector<ColumnPlan> &plan() const { return plan_; }

    // Encodes one row (values[i] belongs to plan()[i]): true with the event
    // in record, or false with the reason in rejection (its record carries
    // what could be identified).
    bool encode_row(uint64_t row_number, const Value *values, Record &record,
                    Rejection &rejection) override;

private:
    void begin_row(uint64_t row_number);
    void put_value(size_t col, const Value &v);
    void put_string(size_t col, std::string_view text);
    void reject(size_t col, const std::string &reason);
    void begin_member(size_t col, std::string &target);
    void keep_identity(size_t col, std::string_view text);
    bool finish_row(Record &record, Rejection &rejection);

    std::vector<ColumnPlan> plan_;
    EventOptions options_;

    // Per-row state; buffers keep their capacity across rows.
    uint64_t row_number_ = 0;
    std::string top_;          // top-level members, comma separated
    std::string properties_;   // property-column members, comma separated
    std::vector<const std::string *> row_property_keys_;  // keys of this row's non-NULL property columns
    std::string event_properties_json_;  // the event_properties column, raw
    std::string scratch_;
    std::vector<JsonMember> members_;
    Record identity_;
    bool has_event_type_ = false, has_user_id_ = false, has_device_id_ = false;
    bool rejected_ = false;
    std::string reject_field_;
    std::string reject_reason_;
};

}  // namespace amplitude_sync
