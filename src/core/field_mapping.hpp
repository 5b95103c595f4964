// The field mapper's shared pieces: column roles and plans, Amplitude's ID
// rules, deterministic insert_ids, and the interface every row encoder
// (events, identify, group identify) offers the glue. Core file: no postgres.h.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "json_text.hpp"
#include "records.hpp"
#include "value.hpp"

namespace amplitude_sync {

// What a column means in a record.
enum class FieldRole {
    kProperty,         // an event property named after the column
    kEventType,
    kUserId,
    kDeviceId,
    kInsertId,
    kString,           // other string fields: platform, country, ...
    kEpochMillis,      // time, session_id
    kInteger,          // event_id, quantity
    kNumber,           // price, revenue, location_lat, location_lng
    kObject,           // user_properties, groups, group_properties, plan, ...
    kEventProperties,  // event_properties: merged with the property columns
    kBool,             // $skip_user_properties_sync
    kUserProperties,   // identify: a jsonb of properties/operations merged in
    kGroupType,        // group identify keys
    kGroupValue,
};

struct ColumnPlan {
    std::string column_name;
    FieldRole role = FieldRole::kProperty;
    TypeCategory category = TypeCategory::kOther;
    std::string json_key;  // the key written, quoted and escaped
    std::string operation; // identify properties: "$set", "$add", ...
};

// A configuration mistake found before any row is read (SQLSTATE given).
struct PlanError : std::runtime_error {
    PlanError(const char *sqlstate, const std::string &message, const std::string &detail,
              const std::string &hint)
        : std::runtime_error(message), sqlstate(sqlstate), detail(detail), hint(hint) {}
    const char *sqlstate;
    std::string detail;
    std::string hint;
};

struct ColumnInput {
    std::string name;
    TypeCategory category;
};

// Amplitude keeps what exceeds these limits only in part, without refusing it.
constexpr size_t kMaxStringChars = 1024;  // longer strings are truncated
constexpr size_t kMaxGroupTypes = 5;      // further group types are ignored
constexpr size_t kMaxGroupValues = 10;    // further values of a group type are ignored

// What Amplitude would change without refusing it.
enum class SilentChange {
    kTruncatedString,   // a string over kMaxStringChars characters
    kDroppedGroupTypes, // groups with more than kMaxGroupTypes types
    kDroppedGroupValues,// a group type with more than kMaxGroupValues values
    kResetGroupedField, // identify: a grouped field NULL while another of its group is sent
};
constexpr size_t kSilentChangeKinds = 4;

// Accepted records of a run that Amplitude will change, per kind, with the
// first column seen doing it: the glue reports them and keeps them in the
// run record. Counted when a row is encoded (a saved sync's unchanged rows
// are encoded too, though not resent).
class SilentChanges {
public:
    uint64_t records(SilentChange kind) const { return totals_[index(kind)].records; }
    const std::string &example_column(SilentChange kind) const { return totals_[index(kind)].column; }
    // One sentence per kind that occurred, for a WARNING: what, how many
    // records, an example column.
    std::vector<std::string> warnings() const;

    // For the encoders: a row starts, a column of it is changed, the row is accepted.
    void begin_row() { row_.fill(nullptr); }
    void note(SilentChange kind, const std::string &column) {
        if (!row_[index(kind)]) row_[index(kind)] = &column;
    }
    void count_row();

private:
    static size_t index(SilentChange kind) { return static_cast<size_t>(kind); }
    struct Total {
        uint64_t records = 0;
        std::string column;
    };
    std::array<Total, kSilentChangeKinds> totals_;
    std::array<const std::string *, kSilentChangeKinds> row_{};
};

// Turns one query row into one Amplitude record.
class RowEncoder {
public:
    virtual ~RowEncoder() = default;
    // values[i] belongs to the query's column i. True with the record, or
    // false with the reason in rejection (its record carries what could be
    // identified).
    virtual bool encode_row(uint64_t row_number, const Value *values, Record &record,
                            Rejection &rejection) = 0;
    // What Amplitude will change in the records accepted so far.
    const SilentChanges &silent_changes() const { return silent_; }

protected:
    SilentChanges silent_;
};

// Notes, for the row being encoded, the silent changes a text value (an ID,
// a string field, a property) or a JSON text (an object or array column)
// undergoes.
void note_long_text(SilentChanges &silent, const std::string &column, std::string_view text);
void note_long_json(SilentChanges &silent, const std::string &column, std::string_view json);
// A groups object (JSON text): more group types or values than Amplitude keeps.
void note_group_limits(SilentChanges &silent, const std::string &column, std::string_view json);

// Event types Amplitude keeps for itself and refuses from clients
// ("[Amplitude] Revenue", ...), compared exactly.
bool is_reserved_event_type(std::string_view event_type);
// The reason such an event type is refused, for a rejection or an error.
std::string reserved_event_type_reason(std::string_view event_type);

// Said to the user once per run, before any row is read: Amplitude would do
// something with the data the query may not mean (a WARNING), or a choice
// the user has not made explicit (a NOTICE).
struct PlanWarning {
    std::string message, detail, hint;
    bool notice = false;
};

// Amplitude's ID rules: returns the reason an ID would be refused, if any.
std::optional<std::string> check_amplitude_id(std::string_view id, int min_id_length);

// Deterministic insert_id for an event text: "as-" and 32 hex digits.
std::string derive_insert_id(std::string_view event_json_without_insert_id);

// A saved sync's fingerprint of a record: 128-bit xxHash3 of the payload
// and of the sync settings that shape what is sent (the signature).
std::array<unsigned char, 16> record_fingerprint(std::string_view json, std::string_view signature);

// The fingerprint of a row that could not be encoded: of its column values,
// so that a saved sync remembers the rejection until the row changes.
std::array<unsigned char, 16> row_fingerprint(const Value *values, size_t count, std::string_view signature);

constexpr int kMaxPropertyDepth = 40;

// Roles whose value Amplitude wants as a string (IDs, event_type, platform...).
bool is_string_role(FieldRole role);

// Why a column of this type cannot fill this role, or nullptr when it can.
const char *column_type_problem(FieldRole role, TypeCategory category);

// A value as the text a string field carries: numbers, booleans and dates
// as their text (an integer user id 42 becomes "42"). text points into v or
// into scratch. Returns false with a reason for NaN and the like.
bool value_as_text(const Value &v, std::string &scratch, std::string_view &text,
                   std::string &reason);

// An ID quoted for a message, cut short so a huge value cannot flood a log.
std::string quoted_for_message(std::string_view id);

// The end of every encode_row: true for an accepted row, or false with the
// rejection filled from the row's record, field and reason.
bool finish_encoding(const Record &record, bool rejected, const std::string &field,
                     const std::string &reason, Rejection &rejection);

// Throws the PlanError for a column whose type does not fit its role.
void check_column_type(const ColumnPlan &plan, const std::string &amplitude_name);

}  // namespace amplitude_sync
