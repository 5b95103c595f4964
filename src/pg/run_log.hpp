// Run history: one row per call in amplitude_sync.sync_runs, one row per
// record that was not delivered in amplitude_sync.rejected_records. Written
// with SPI as the extension's owner (role_scope.hpp), so callers need no
// rights on the tables (which row-level security keeps private to the role
// that ran them and the owner of the sync).
#pragma once

#include <vector>

#include "delivery.hpp"
#include "pg_headers.hpp"
#include "records.hpp"

extern "C" int amplitude_sync_history_days;  // GUC amplitude_sync.history_days
extern "C" int amplitude_sync_progress_notice_interval;  // GUC amplitude_sync.progress_notice_interval

struct RunLog {
    int64 run_id;
    TimestampTz started_at;
    const char *sync_name;  // NULL for one-shot calls
    bool announced;         // its failure was NOTIFYed
};

// SPI must be connected. Inserts the run with a status: "running", or
// "skipped" with its reason in error. sync_id 0: a one-shot call.
void run_log_start(RunLog *log, const char *function_name, const char *server_name,
                   const char *endpoint, int sync_id, const char *sync_name, const char *status,
                   const char *error);
// The same, recorded as run by another role: flush_outbox records its runs
// under the role whose entries (and key) they are, so that role sees them.
void run_log_start_as(RunLog *log, Oid run_by, const char *function_name, const char *server_name,
                      const char *endpoint, int sync_id, const char *sync_name, const char *status,
                      const char *error);

// Stores the rejections and empties the vector.
void run_log_store_rejections(RunLog *log, std::vector<amplitude_sync::Rejection> *rejections);

// Where a run's time went: reading rows, encoding JSON, delivering (which
// includes waiting on Amplitude).
struct RunTimings {
    double read_seconds;
    double encode_seconds;
    double send_seconds;
};

// Marks the run finished with its counts and timings.
void run_log_finish(RunLog *log, const char *status, int64 rows_read, int64 unchanged,
                    const amplitude_sync::DeliveryStats *stats, const char *error,
                    const RunTimings *timings);

// Records a running sync's counts so far (seen by others once committed).
void run_log_progress(RunLog *log, int64 rows_read, int64 unchanged, const amplitude_sync::DeliveryStats *stats);

// Marks a sync's runs still "running" (but except_run_id) as failed: called
// by the run holding the sync's guard, so such runs were interrupted.
void run_log_close_stale(int sync_id, int64 except_run_id);

// Failed runs are announced on NOTIFY channel amplitude_sync_failures
// (payload: {"sync", "run_id", "error"}), delivered when they commit.

// Marks the run failed with the error and counts {rows_read, sent,
// rejected, unchanged} (NULL: those last recorded); the rest is not_sent.
void run_log_fail(RunLog *log, const char *error, const int64 *counts);

// A record key's hash as sync_state.key_hash holds it: key_hash
// (state_index.hpp) of its bytes in the database's encoding, the hash a run
// looks the key up by.
int64 record_key_hash(const text *key);

// A saved sync's state is two tables (see the install script): the bulk in
// state_entries, what runs wrote since the sync's last merge in
// state_changes. A run measures both as it loads them, and writes into
// state_changes unless the sync has no state yet (a first run fills
// state_entries directly: it has no rows to replace).
// The two, for statements that apply to a sync's whole state (schema amplitude_sync).
constexpr const char *kStateTableNames[] = {"state_entries", "state_changes"};
struct StateTables {
    int64 entries;      // the sync's rows in state_entries, as loaded
    int64 changes;      // its rows in state_changes, as loaded
    bool into_changes;  // where the run writes
    int64 written;      // rows the run wrote
};

// Remembers a saved sync's confirmed records (and empties the vector).
void run_log_store_confirmed(int sync_id, StateTables *tables,
                             std::vector<amplitude_sync::ConfirmedRecord> *confirmed);

// Remembers, in a saved sync's state, the records rejected for a reason
// only their row can change (the vector is left for run_log_store_rejections).
void run_log_remember_rejections(int sync_id, StateTables *tables,
                                 const std::vector<amplitude_sync::Rejection> *rejections);

// Forgets the state of the sync's records whose row (in either table)
// matches condition, SQL over a state table's columns with the sync as $1
// and the arguments from $2: their changes, the entries those replace (an
// entry left behind would count again) and their entries. Locks the sync's
// row first (FOR NO KEY UPDATE), so that a merge in progress ends before
// the statement reads the tables. Returns how many records it forgot.
int64 run_log_forget_state(int sync_id, const char *condition, int nargs = 0, const Oid *types = nullptr,
                           const Datum *values = nullptr);

// After a run: whether the sync's state_changes hold over a tenth of its
// state_entries, and then the merge that moves them into state_entries
// (one transaction, after a lock on the sync's row that resync and
// alter_sync wait for). Returns the rows merged.
bool run_log_merge_due(const StateTables *tables);
int64 run_log_merge_state_changes(int sync_id);

// Reads the sync's entries once (see saved_syncs.cpp, settle_state).
void run_log_prune_state_entries(int sync_id);

// After a run that wrote written rows into state_entries: when that is much
// of the table (a first run), ANALYZE it, so that the next run's load is not
// planned for the table PostgreSQL last measured (see run_log.cpp).
void run_log_refresh_state_statistics(int64 written);

// Microseconds since the run started, as an interval Datum.
Datum run_log_elapsed(const RunLog *log);

// Watermark syncs, after a complete run (nothing left unsent): the
// watermark rises to the highest cursor value read, the ledger floor to the
// watermark minus the lookback, and the state's entries below the floor are
// pruned (no run reads those rows again).
void run_log_advance_watermark(int sync_id, int64 highest, int64 lookback);
