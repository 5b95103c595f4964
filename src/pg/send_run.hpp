// One run of a sending function: read the query through a cursor, encode
// each row, deliver the records, keep the run history, return the report.
// Shared by amplitude_send_events, amplitude_identify and
// amplitude_group_identify, which differ only in their SendSpec.
#pragma once

#include "http_transport.hpp"

#include "connection.hpp"
#include "pg_headers.hpp"

enum class SendKind { kEvents, kUser, kDevice, kGroup };

struct SendSpec {
    SendKind kind;
    const char *function_name;    // for the run history
    const char *endpoint_path;    // "/2/httpapi", "/batch", "/identify", "/groupidentify"
    const char *query;
    int max_records;              // per request
    long max_bytes;               // per request body
    long throttle_pause_ms;       // Amplitude's pause for the endpoint
    int min_id_length;
    const char *operations_json;  // identify: column -> operation, or NULL
    bool nulls_unset;             // identify: NULL columns become $unset
    const char *properties_event; // identify: synthetic event type, or NULL
    // Saved syncs: the query's last two columns are the stored fingerprint
    // and the record key; unchanged records are skipped, confirmed ones
    // remembered.
    int sync_id;                  // 0 for one-shot calls
    const char *sync_name;
    Oid run_as;                   // run the source as this role (InvalidOid: as the caller)
    bool commit_progress;         // a CALL outside a transaction block: commit as it goes
    // preview_sync: encode and compare only; rows go to rsinfo, nothing is
    // sent or written.
    bool preview;
    bool include_unchanged;
    ReturnSetInfo *rsinfo;
};

// The connection's timeouts and TLS settings for the HTTP transport.
amplitude_sync::TransportOptions transport_options(const AmpConnection &conn);

// The column types a query returns, as the field mapper sees them; raises
// the mapper's errors (checks a saved sync's source at creation).
void check_source_columns(const SendSpec *spec);

// Runs the whole call and returns the amplitude_sync.run_report Datum
// (nothing for a preview, whose rows go to spec->rsinfo).
Datum execute_send_run(FunctionCallInfo fcinfo, const AmpConnection *conn, const SendSpec *spec);
