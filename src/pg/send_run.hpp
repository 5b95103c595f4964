// One run of a sending function: read the source through a cursor, encode
// each row, deliver the records, keep the run history, return the report.
// Shared by the one-shot functions, run_sync and preview_sync, which differ
// only in their SendSpec.
#pragma once

#include <memory>
#include <string>

#include "call_options.hpp"
#include "delivery.hpp"
#include "http_transport.hpp"

#include "connection.hpp"
#include "pg_headers.hpp"
#include "run_log.hpp"

// A run that commits as it goes (CALL run_sync outside a transaction
// block) works in segments; commit() makes the segment's work durable and
// starts the next one (see saved_syncs.cpp).
struct RunSegments {
    void (*commit)(RunSegments *segments);
    // The rest of the source, read at the first commit; the caller ends it
    // when the run fails (the run ends it otherwise).
    Tuplestorestate *materialized;
};

// A run's counts as it goes, for the record of a run that fails.
struct RunCounts {
    int64 rows_read;
    int64 sent;
    int64 rejected;
    int64 unchanged;
};

struct SendSpec {
    amplitude_sync::CallOptions options;  // checked arguments (call_options.hpp)
    const char *function_name;            // for the run history
    const char *query;                    // the source, already checked (source_query.hpp)
    const char *operations_json;          // identify: column -> operation, or NULL
    // The source runs in a scope (role_scope.hpp): as run_as (InvalidOid:
    // the caller), with source_search_path (NULL: the caller's), read-only.
    Oid run_as;
    const char *source_search_path;
    // Saved syncs: the query's last column is the record key; the sync's
    // state is loaded once per run (state_index.hpp), unchanged records are
    // skipped, confirmed ones remembered.
    bool saved_sync;              // run, preview or check of a saved sync
    int sync_id;                  // 0 for one-shot calls (and a saved sync's check)
    const char *sync_name;
    RunLog *log;                  // run_sync starts the run record itself; NULL: the run does
    RunSegments *segments;        // commit as it goes, or NULL
    RunCounts *counts;            // kept up to date after each batch, or NULL
    StateTables *state_tables;    // saved syncs that write their state: measured and written as the run goes
    // Watermark syncs (events with a cursor_column): the column and its type;
    // the run reads rows at or above bound (has_bound; the query's $1) and
    // loads the ledger entries at or above it; lookback in the cursor's
    // units. A complete run advances the watermark and prunes the ledger.
    const char *cursor_column;
    Oid cursor_type;
    bool has_bound;
    int64 bound;
    bool has_state_floor;
    int64 state_floor;
    int64 lookback;
    // preview_sync: encode and compare only; rows go to rsinfo, nothing is
    // sent or written.
    bool preview;
    bool include_unchanged;
    ReturnSetInfo *rsinfo;
    // The run report's row type; NULL: the call's own result type.
    TupleDesc report_desc;
};

// Watermark cursors: int2, int4, int8, date, timestamp, timestamptz. Their
// values as positions (integers; microseconds for times and dates) and back.
bool cursor_type_supported(Oid type);
bool cursor_type_is_time(Oid type);
int64 cursor_value(Oid type, Datum value);
Datum cursor_datum(Oid type, int64 value);

// The connection's timeouts and TLS settings for the HTTP transport.
amplitude_sync::TransportOptions transport_options(const AmpConnection &conn);

// The connection's retry options, with the endpoint's throttle pause.
amplitude_sync::RetryPolicy retry_policy(const AmpConnection &conn, long endpoint_throttle_pause_ms);

// Cancel or terminate is pending (polled by deliveries while they wait).
bool send_run_interrupt_pending();

// One delivery (src/core/delivery.hpp) with its own payload format and
// connections: what every sending function, and flush_outbox, sends
// through. C++ state: keep it on the heap, owned by a memory-context
// callback (see send_run.cpp), and reach it only through AMP_CXX.
struct RunProgress;  // a run's counts for run_progress and its NOTICEs (send_run.cpp)
struct Channel {
    Channel(std::unique_ptr<amplitude_sync::PayloadFormat> f, const AmpConnection &conn, const std::string &path,
            amplitude_sync::DeliveryLimits limits, long throttle_pause_ms, RunProgress *progress = nullptr);
    std::unique_ptr<amplitude_sync::PayloadFormat> format;
    std::unique_ptr<amplitude_sync::Transport> transport;
    amplitude_sync::Delivery delivery;
};

// Checks a saved sync's source (in its scope, like a run) against the
// field mapper; raises the mapper's errors.
void check_source_columns(const SendSpec *spec);

// Runs the whole call and returns the amplitude_sync.run_report Datum
// (nothing for a preview, whose rows go to spec->rsinfo). Without segments
// it connects to SPI itself; with them the caller has connected non-atomic.
Datum execute_send_run(FunctionCallInfo fcinfo, const AmpConnection *conn, const SendSpec *spec);
