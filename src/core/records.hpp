// Plain records passed between the row encoder, the delivery engine and the
// PostgreSQL glue that stores them. Core file: no postgres.h.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace amplitude_sync {

// One encoded Amplitude record (an event, an identification, a group) plus
// the identifying fields the run log keeps when it is rejected.
struct Record {
    uint64_t row_number = 0;  // 1-based position in the query result
    std::string json;         // the record exactly as it is sent
    std::string user_id;
    std::string device_id;
    std::string insert_id;
    std::string event_type;
    std::string group_type;   // group identify
    std::string group_value;
    std::string group_key;    // group_type and group_value, the ordering key of a group
    size_t wire_bytes = 0;    // size in the request body (set by the delivery)
    size_t property_count = 0;  // identifications: properties carried (a per-request limit)
    // Saved syncs: the record's key in the sync's state, and its payload's
    // fingerprint, remembered once Amplitude confirms the record. (The key
    // is the source's text in the database's encoding, not UTF-8.)
    std::string state_key;
    std::array<unsigned char, 16> fingerprint{};
    // Watermark syncs: the row's cursor value (the ledger is pruned by it).
    bool has_position = false;
    int64_t position = 0;

    // Requests to Amplitude keep the order of one device's (else user's, else
    // group's) rows.
    const std::string &ordering_key() const {
        return !device_id.empty() ? device_id : !user_id.empty() ? user_id : group_key;
    }
};

// Why a row was not delivered.
enum class Outcome {
    kRejected,  // refused, by our checks or by Amplitude: resending cannot help
    kNotSent,   // delivery gave up (retry budget, run stopped): a re-run can send it
};

// A record Amplitude confirmed, as a saved sync remembers it.
struct ConfirmedRecord {
    std::string state_key;
    std::array<unsigned char, 16> fingerprint;
    bool has_position;
    int64_t position;
};

struct Rejection {
    Record record;         // json is empty when the row could not be encoded
                           // (a row refused after encoding keeps it)
    Outcome outcome = Outcome::kRejected;
    std::string field;     // the offending field, when known
    std::string reason;    // human-readable, never contains the API key
};

// Makes every text a rejection carries storable by the run log (which stores
// them as text and the payload as json, and fails the run on invalid UTF-8
// or NUL): texts are escaped with storable_text(), a payload that is not
// valid UTF-8 is dropped and the reason says so. Every Rejection passes here
// before it is shown or stored.
void make_storable(Rejection &rejection);

}  // namespace amplitude_sync
