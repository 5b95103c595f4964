#include "run_log.hpp"

#include "cxx_guard.hpp"
#include "datum_values.hpp"
#include "role_scope.hpp"
#include "state_index.hpp"

#include <cstring>
#include <string>
#include <string_view>

using amplitude_sync::ConfirmedRecord;
using amplitude_sync::Outcome;
using amplitude_sync::Rejection;

namespace {

// Payloads above this size are not kept (the reason still says why).
constexpr size_t kMaxStoredPayload = 1000000;

// Per-record work (arrays of the batch, converted text) lives here and is
// freed when the batch is stored, so memory stays flat over long runs.
struct BatchMemory {
    MemoryContext context;
    MemoryContext outer;
};

void enter_batch_memory(BatchMemory *memory) {
    memory->context = AllocSetContextCreate(CurrentMemoryContext, "amplitude_sync batch", ALLOCSET_DEFAULT_SIZES);
    memory->outer = MemoryContextSwitchTo(memory->context);
}

void leave_batch_memory(const BatchMemory *memory) {
    MemoryContextSwitchTo(memory->outer);
    MemoryContextDelete(memory->context);
}

// A record's 128-bit fingerprint as a uuid Datum (sync_state.fingerprint).
Datum fingerprint_datum(const unsigned char *fingerprint) {
    pg_uuid_t *uuid = static_cast<pg_uuid_t *>(palloc(sizeof(pg_uuid_t)));
    memcpy(uuid->data, fingerprint, UUID_LEN);
    return UUIDPGetDatum(uuid);
}

// The watermark positions of n records as an int8[] (NULL where a record
// has none).
Datum positions_array(Datum *positions, bool *no_position, int n) {
    int dims[1] = {n};
    int lbs[1] = {1};
    return PointerGetDatum(construct_md_array(positions, no_position, 1, dims, lbs, INT8OID, 8, true, TYPALIGN_DOUBLE));
}

// A record's state key as sync_state.record_key: the key's text as the
// source held it, in the database's encoding (send_run.cpp's row_key), which
// the run hashes it by. (Not UTF-8: a LATIN1 or SQL_ASCII key read as UTF-8
// fails, or becomes another key whose hash no source row has.)
Datum state_key_datum(const std::string &key) {
    return PointerGetDatum(cstring_to_text_with_len(key.data(), static_cast<int>(key.size())));
}

}  // namespace

int64 record_key_hash(const text *key) {
    uint64_t hash = 0;
    AMP_CXX(hash = amplitude_sync::key_hash(std::string_view(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key))));
    return static_cast<int64>(hash);
}

void run_log_start(RunLog *log, const char *function_name, const char *server_name,
                   const char *endpoint, int sync_id, const char *sync_name, const char *status,
                   const char *error) {
    run_log_start_as(log, GetUserId(), function_name, server_name, endpoint, sync_id, sync_name, status, error);
}

void run_log_start_as(RunLog *log, Oid run_by, const char *function_name, const char *server_name,
                      const char *endpoint, int sync_id, const char *sync_name, const char *status,
                      const char *error) {
    log->started_at = GetCurrentTimestamp();
    log->sync_name = sync_name ? pstrdup(sync_name) : nullptr;
    log->announced = false;

    RoleScope scope;
    enter_extension_scope(&scope);
    if (amplitude_sync_history_days > 0) {
        Oid days_type[1] = {INT4OID};
        Datum days[1] = {Int32GetDatum(amplitude_sync_history_days)};
        if (SPI_execute_with_args("DELETE FROM amplitude_sync.sync_runs WHERE started_at OPERATOR(pg_catalog.<) "
                                  "(pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(days => $1))",
                                  1, days_type, days, nullptr, false, 0) != SPI_OK_DELETE)
            elog(ERROR, "amplitude_sync: could not prune the run history");
    }
    Oid argtypes[9] = {TEXTOID, TEXTOID, TEXTOID, OIDOID, TIMESTAMPTZOID, INT4OID, TEXTOID, TEXTOID, TEXTOID};
    Datum args[9] = {CStringGetTextDatum(function_name), CStringGetTextDatum(server_name),
                     CStringGetTextDatum(endpoint), ObjectIdGetDatum(run_by),
                     TimestampTzGetDatum(log->started_at), Int32GetDatum(sync_id),
                     sync_name ? CStringGetTextDatum(sync_name) : (Datum)0, CStringGetTextDatum(status),
                     error ? CStringGetTextDatum(error) : (Datum)0};
    char nulls[10] = "         ";
    if (sync_id == 0) nulls[5] = 'n';
    if (!sync_name) nulls[6] = 'n';
    if (!error) nulls[8] = 'n';
    // A run that starts finished (skipped) gets its end time at once.
    int rc = SPI_execute_with_args(
        "INSERT INTO amplitude_sync.sync_runs (function_name, server_name, endpoint, run_by, started_at, sync_id, "
        "sync_name, status, error, finished_at) "
        "VALUES ($1, $2, $3, $4::pg_catalog.regrole, $5, $6, $7, $8, $9, "
        "CASE WHEN $8 OPERATOR(pg_catalog.<>) 'running' THEN pg_catalog.clock_timestamp() END) RETURNING run_id",
        9, argtypes, args, nulls, false, 1);
    if (rc != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
        elog(ERROR, "amplitude_sync: could not record the run");
    bool isnull;
    log->run_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

    leave_role_scope(&scope);
}

void run_log_store_rejections(RunLog *log, std::vector<Rejection> *rejections) {
    if (rejections->empty()) return;
    BatchMemory memory;
    enter_batch_memory(&memory);
    // One INSERT per batch of rejections, from arrays (one per column).
    int n = static_cast<int>(rejections->size());
    Datum *row_numbers = static_cast<Datum *>(palloc(sizeof(Datum) * n));
    Datum *columns[10];
    bool *column_nulls[10];
    for (int c = 0; c < 10; ++c) {
        columns[c] = static_cast<Datum *>(palloc(sizeof(Datum) * n));
        column_nulls[c] = static_cast<bool *>(palloc(sizeof(bool) * n));
    }
    for (int k = 0; k < n; ++k) {
        const Rejection *r = &(*rejections)[k];
        row_numbers[k] = Int64GetDatum(static_cast<int64>(r->record.row_number));
        columns[0][k] = CStringGetTextDatum(r->outcome == Outcome::kRejected ? "rejected" : "not_sent");
        column_nulls[0][k] = false;
        const std::string *texts[9] = {&r->field,           &r->reason,           &r->record.user_id,
                                       &r->record.device_id, &r->record.insert_id, &r->record.event_type,
                                       &r->record.group_type, &r->record.group_value, &r->record.json};
        for (int i = 0; i < 9; ++i) {
            bool keep = !texts[i]->empty() && (i != 8 || texts[i]->size() <= kMaxStoredPayload);
            column_nulls[1 + i][k] = !keep;
            columns[1 + i][k] = keep ? utf8_text_datum(*texts[i]) : (Datum)0;
        }
    }
    int dims[1] = {n};
    int lbs[1] = {1};
    Oid argtypes[12] = {INT8OID, INT8ARRAYOID};
    Datum args[12] = {Int64GetDatum(log->run_id),
                      PointerGetDatum(construct_array(row_numbers, n, INT8OID, 8, true, TYPALIGN_DOUBLE))};
    for (int c = 0; c < 10; ++c) {
        argtypes[2 + c] = TEXTARRAYOID;
        args[2 + c] = PointerGetDatum(construct_md_array(columns[c], column_nulls[c], 1, dims, lbs, TEXTOID,
                                                         -1, false, TYPALIGN_INT));
    }
    RoleScope scope;
    enter_extension_scope(&scope);
    int rc = SPI_execute_with_args(
        "INSERT INTO amplitude_sync.rejected_records (run_id, row_number, outcome, field, reason, user_id, "
        "device_id, insert_id, event_type, group_type, group_value, payload) "
        "SELECT $1, n, o, f, re, u, d, i, e, gt, gv, p::pg_catalog.json FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.int8[]), "
        "pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]), "
        "pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.text[]), "
        "pg_catalog.unnest($7::pg_catalog.text[]), pg_catalog.unnest($8::pg_catalog.text[]), "
        "pg_catalog.unnest($9::pg_catalog.text[]), pg_catalog.unnest($10::pg_catalog.text[]), "
        "pg_catalog.unnest($11::pg_catalog.text[]), pg_catalog.unnest($12::pg_catalog.text[])) "
        "AS r(n, o, f, re, u, d, i, e, gt, gv, p)",
        12, argtypes, args, nullptr, false, 0);
    if (rc != SPI_OK_INSERT) elog(ERROR, "amplitude_sync: could not record the rejected rows");
    leave_role_scope(&scope);
    leave_batch_memory(&memory);
    rejections->clear();
}

void run_log_progress(RunLog *log, int64 rows_read, int64 unchanged, const amplitude_sync::DeliveryStats *stats) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[8] = {INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID};
    Datum args[8] = {Int64GetDatum(log->run_id), Int64GetDatum(rows_read),
                     Int64GetDatum(static_cast<int64>(stats->sent)),
                     Int64GetDatum(static_cast<int64>(stats->rejected)),
                     Int64GetDatum(static_cast<int64>(stats->not_sent)), Int64GetDatum(unchanged),
                     Int64GetDatum(static_cast<int64>(stats->requests)),
                     Int64GetDatum(static_cast<int64>(stats->retries))};
    if (SPI_execute_with_args("UPDATE amplitude_sync.sync_runs SET rows_read = $2, sent = $3, rejected = $4, "
                              "not_sent = $5, unchanged = $6, requests = $7, retries = $8 WHERE run_id OPERATOR(pg_catalog.=) $1",
                              8, argtypes, args, nullptr, false, 0) != SPI_OK_UPDATE)
        elog(ERROR, "amplitude_sync: could not record the run's progress");
    leave_role_scope(&scope);
}

void run_log_close_stale(int sync_id, int64 except_run_id) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[2] = {INT4OID, INT8OID};
    Datum args[2] = {Int32GetDatum(sync_id), Int64GetDatum(except_run_id)};
    // The rows such a run read but did not account for were not sent.
    if (SPI_execute_with_args(
            "UPDATE amplitude_sync.sync_runs SET status = 'failed', finished_at = pg_catalog.clock_timestamp(), "
            "not_sent = rows_read OPERATOR(pg_catalog.-) sent OPERATOR(pg_catalog.-) rejected "
            "OPERATOR(pg_catalog.-) unchanged, "
            "error = 'interrupted (cancelled, timed out, or its session ended); the counts are those last "
            "committed, and what Amplitude confirmed until then is remembered' "
            "WHERE sync_id OPERATOR(pg_catalog.=) $1 AND status OPERATOR(pg_catalog.=) 'running' "
            "AND run_id OPERATOR(pg_catalog.<>) $2",
            2, argtypes, args, nullptr, false, 0) != SPI_OK_UPDATE)
        elog(ERROR, "amplitude_sync: could not close interrupted runs");
    leave_role_scope(&scope);
}

// NOTIFY amplitude_sync_failures, in the extension's scope (SPI connected).
void notify_failure(RunLog *log, const char *error) {
    if (log->announced) return;
    log->announced = true;
    Oid argtypes[3] = {TEXTOID, INT8OID, TEXTOID};
    Datum args[3] = {log->sync_name ? CStringGetTextDatum(log->sync_name) : (Datum)0, Int64GetDatum(log->run_id),
                     CStringGetTextDatum(error)};
    char nulls[4] = "   ";
    if (!log->sync_name) nulls[0] = 'n';
    // A NOTIFY payload is at most 8000 bytes: the error is cut to fit.
    if (SPI_execute_with_args(
            "SELECT pg_catalog.pg_notify('amplitude_sync_failures', pg_catalog.json_build_object("
            "'sync', $1, 'run_id', $2, 'error', pg_catalog.left($3, 2000))::pg_catalog.text)",
            3, argtypes, args, nulls, false, 1) != SPI_OK_SELECT)
        elog(ERROR, "amplitude_sync: could not announce the failed run");
}

void run_log_fail(RunLog *log, const char *error, const int64 *counts) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[6] = {INT8OID, TEXTOID, INT8OID, INT8OID, INT8OID, INT8OID};
    Datum args[6] = {Int64GetDatum(log->run_id), CStringGetTextDatum(error), 0, 0, 0, 0};
    char nulls[7] = "      ";
    for (int i = 0; i < 4; ++i) {
        if (counts) args[2 + i] = Int64GetDatum(counts[i]);
        else nulls[2 + i] = 'n';
    }
    // Counts as the run knew them (else those last recorded); what they
    // leave unaccounted was not sent.
    if (SPI_execute_with_args(
            "UPDATE amplitude_sync.sync_runs SET status = 'failed', finished_at = pg_catalog.clock_timestamp(), "
            "rows_read = COALESCE($3, rows_read), sent = COALESCE($4, sent), rejected = COALESCE($5, rejected), "
            "unchanged = COALESCE($6, unchanged), error = $2 WHERE run_id OPERATOR(pg_catalog.=) $1",
            6, argtypes, args, nulls, false, 0) != SPI_OK_UPDATE ||
        SPI_execute_with_args(
            "UPDATE amplitude_sync.sync_runs SET not_sent = rows_read OPERATOR(pg_catalog.-) sent "
            "OPERATOR(pg_catalog.-) rejected OPERATOR(pg_catalog.-) unchanged WHERE run_id OPERATOR(pg_catalog.=) $1",
            1, argtypes, args, nullptr, false, 0) != SPI_OK_UPDATE)
        elog(ERROR, "amplitude_sync: could not record the run's failure");
    notify_failure(log, error);
    leave_role_scope(&scope);
}

void run_log_finish(RunLog *log, const char *status, int64 rows_read, int64 unchanged,
                    const amplitude_sync::DeliveryStats *stats, const char *error,
                    const RunTimings *timings) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[15] = {INT8OID, TEXTOID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID,
                        INT8OID, INT8OID, TEXTOID, INT8OID, FLOAT8OID, FLOAT8OID, FLOAT8OID, FLOAT8OID};
    Datum args[15] = {Int64GetDatum(log->run_id),
                      CStringGetTextDatum(status),
                      Int64GetDatum(rows_read),
                      Int64GetDatum(static_cast<int64>(stats->sent)),
                      Int64GetDatum(static_cast<int64>(stats->rejected)),
                      Int64GetDatum(static_cast<int64>(stats->not_sent)),
                      Int64GetDatum(static_cast<int64>(stats->requests)),
                      Int64GetDatum(static_cast<int64>(stats->retries)),
                      Int64GetDatum(static_cast<int64>(stats->bytes_sent)),
                      error ? CStringGetTextDatum(error) : (Datum)0,
                      Int64GetDatum(unchanged),
                      Float8GetDatum(timings->read_seconds),
                      Float8GetDatum(timings->encode_seconds),
                      Float8GetDatum(timings->send_seconds),
                      Float8GetDatum(static_cast<double>(stats->pacing_wait_ms) / 1000.0)};
    char nulls[16] = "               ";
    if (!error) nulls[9] = 'n';
    int rc = SPI_execute_with_args(
        "UPDATE amplitude_sync.sync_runs SET status = $2, finished_at = pg_catalog.clock_timestamp(), "
        "rows_read = $3, sent = $4, rejected = $5, not_sent = $6, requests = $7, retries = $8, "
        "bytes_sent = $9, error = $10, unchanged = $11, read_seconds = $12, encode_seconds = $13, "
        "send_seconds = $14, pacing_seconds = $15 WHERE run_id OPERATOR(pg_catalog.=) $1",
        15, argtypes, args, nulls, false, 0);
    if (rc != SPI_OK_UPDATE) elog(ERROR, "amplitude_sync: could not record the run's end");
    if (error) notify_failure(log, error);
    leave_role_scope(&scope);
}

// State rows are written with a lock on their sync's row, once per batch (a
// foreign key would check every row): a concurrent drop_sync, whose trigger
// deletes the sync's state, waits for the batch to commit, and once the
// sync is gone the statement inserts nothing. (A key-share lock: it does not
// hold up alter_sync or the claim of the next run.)
#define LOCK_SYNC                                                                    \
    "SELECT sync_id FROM amplitude_sync.syncs WHERE sync_id OPERATOR(pg_catalog.=) $1 " \
    "FOR KEY SHARE"

namespace {

void raise_sync_dropped(int sync_id) {
    ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                    errmsg("sync %d was dropped while it ran", sync_id),
                    errdetail("What Amplitude confirmed in its last batch is not remembered: the sync is gone.")));
}

}  // namespace

namespace {

// State rows to write, as the arrays of one statement (in batch memory).
struct StateRows {
    int n;
    Datum *keys, *hashes, *fingerprints, *reasons, *positions;
    bool *no_reason, *no_position;
};

void begin_state_rows(StateRows *rows, int capacity) {
    rows->n = 0;
    rows->keys = static_cast<Datum *>(palloc(sizeof(Datum) * capacity));
    rows->hashes = static_cast<Datum *>(palloc(sizeof(Datum) * capacity));
    rows->fingerprints = static_cast<Datum *>(palloc(sizeof(Datum) * capacity));
    rows->reasons = static_cast<Datum *>(palloc(sizeof(Datum) * capacity));
    rows->positions = static_cast<Datum *>(palloc(sizeof(Datum) * capacity));
    rows->no_reason = static_cast<bool *>(palloc(sizeof(bool) * capacity));
    rows->no_position = static_cast<bool *>(palloc(sizeof(bool) * capacity));
}

// reason: NULL for a record Amplitude confirmed.
void add_state_row(StateRows *rows, const std::string &state_key, const unsigned char *fingerprint,
                   const std::string *reason, bool has_position, int64 position) {
    int i = rows->n++;
    rows->keys[i] = state_key_datum(state_key);
    rows->hashes[i] = Int64GetDatum(record_key_hash(DatumGetTextPP(rows->keys[i])));
    rows->fingerprints[i] = fingerprint_datum(fingerprint);
    rows->no_reason[i] = reason == nullptr;
    rows->reasons[i] = reason ? utf8_text_datum(*reason) : (Datum)0;
    rows->positions[i] = Int64GetDatum(position);
    rows->no_position[i] = !has_position;
}

// Writes the rows into the sync's state: the last row of a key wins (a
// source may repeat a key; the latest verdict on it counts), and a
// confirmed record clears its rejection. The hashes ($5) are those the
// table's key_hash column computes again: rows in the index's order, one
// per key_hash. Into state_changes, or state_entries for a sync with no
// state (StateTables).
void upsert_state_rows(int sync_id, StateTables *tables, const StateRows *rows) {
    int n = rows->n;
    int dims[1] = {n};
    int lbs[1] = {1};
    Oid argtypes[6] = {INT4OID, TEXTARRAYOID, UUIDARRAYOID, TEXTARRAYOID, INT8ARRAYOID, INT8ARRAYOID};
    Datum args[6] = {Int32GetDatum(sync_id),
                     PointerGetDatum(construct_array(rows->keys, n, TEXTOID, -1, false, TYPALIGN_INT)),
                     PointerGetDatum(construct_array(rows->fingerprints, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR)),
                     PointerGetDatum(construct_md_array(rows->reasons, rows->no_reason, 1, dims, lbs, TEXTOID, -1,
                                                        false, TYPALIGN_INT)),
                     positions_array(rows->positions, rows->no_position, n),
                     PointerGetDatum(construct_array(rows->hashes, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE))};
    RoleScope scope;
    enter_extension_scope(&scope);
    int rc = SPI_execute_with_args(
        psprintf("WITH sync AS (" LOCK_SYNC ") "
        "INSERT INTO amplitude_sync.%s (sync_id, record_key, fingerprint, sent_at, rejected_reason, position) "
        "SELECT DISTINCT ON (h) sync.sync_id, k, f, pg_catalog.clock_timestamp(), r, p "
        "FROM sync, ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.uuid[]), "
        "pg_catalog.unnest($4::pg_catalog.text[]), pg_catalog.unnest($5::pg_catalog.int8[]), "
        "pg_catalog.unnest($6::pg_catalog.int8[])) WITH ORDINALITY AS c(k, f, r, p, h, n) "
        "ORDER BY h USING OPERATOR(pg_catalog.<), n USING OPERATOR(pg_catalog.>) "
        "ON CONFLICT (sync_id, key_hash) DO UPDATE SET record_key = EXCLUDED.record_key, fingerprint = EXCLUDED.fingerprint, "
        "sent_at = EXCLUDED.sent_at, rejected_reason = EXCLUDED.rejected_reason, position = EXCLUDED.position",
                 kStateTableNames[tables->into_changes ? 1 : 0]),
        6, argtypes, args, nullptr, false, 0);
    if (rc != SPI_OK_INSERT) elog(ERROR, "amplitude_sync: could not remember the records in the sync's state");
    if (SPI_processed == 0) raise_sync_dropped(sync_id);
    tables->written += static_cast<int64>(SPI_processed);
    leave_role_scope(&scope);
}

}  // namespace

void run_log_store_confirmed(int sync_id, StateTables *tables, std::vector<ConfirmedRecord> *confirmed) {
    if (confirmed->empty()) return;
    BatchMemory memory;
    enter_batch_memory(&memory);
    StateRows rows;
    begin_state_rows(&rows, static_cast<int>(confirmed->size()));
    for (const ConfirmedRecord &c : *confirmed)
        add_state_row(&rows, c.state_key, c.fingerprint.data(), nullptr, c.has_position, c.position);
    upsert_state_rows(sync_id, tables, &rows);
    leave_batch_memory(&memory);
    confirmed->clear();
}

// The refused payload (or row) is remembered, and a changed one is sent again.
void run_log_remember_rejections(int sync_id, StateTables *tables, const std::vector<Rejection> *rejections) {
    int n = 0;
    for (const Rejection &r : *rejections)
        n += r.outcome == Outcome::kRejected && !r.record.state_key.empty();
    if (n == 0) return;
    BatchMemory memory;
    enter_batch_memory(&memory);
    StateRows rows;
    begin_state_rows(&rows, n);
    for (const Rejection &r : *rejections) {
        if (r.outcome != Outcome::kRejected || r.record.state_key.empty()) continue;
        add_state_row(&rows, r.record.state_key, r.record.fingerprint.data(), &r.reason, r.record.has_position,
                      r.record.position);
    }
    upsert_state_rows(sync_id, tables, &rows);
    leave_batch_memory(&memory);
}

int64 run_log_forget_state(int sync_id, const char *condition, int nargs, const Oid *types, const Datum *values) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid *all_types = static_cast<Oid *>(palloc(sizeof(Oid) * (nargs + 1)));
    Datum *all_values = static_cast<Datum *>(palloc(sizeof(Datum) * (nargs + 1)));
    all_types[0] = INT4OID;
    all_values[0] = Int32GetDatum(sync_id);
    for (int i = 0; i < nargs; ++i) {
        all_types[i + 1] = types[i];
        all_values[i + 1] = values[i];
    }
    if (SPI_execute_with_args("SELECT FROM amplitude_sync.syncs WHERE sync_id OPERATOR(pg_catalog.=) $1 "
                              "FOR NO KEY UPDATE",
                              1, all_types, all_values, nullptr, false, 0) != SPI_OK_SELECT ||
        SPI_execute_with_args(
            // (Three deletes, each able to use an index: a row both of the
            // last two reach is deleted once. The count takes a key once.)
            psprintf("WITH changes AS (DELETE FROM amplitude_sync.state_changes "
                     "WHERE sync_id OPERATOR(pg_catalog.=) $1 AND (%s) RETURNING key_hash), "
                     "replaced AS (DELETE FROM amplitude_sync.state_entries e USING changes c "
                     "WHERE e.sync_id OPERATOR(pg_catalog.=) $1 AND e.key_hash OPERATOR(pg_catalog.=) c.key_hash "
                     "RETURNING e.key_hash), "
                     "entries AS (DELETE FROM amplitude_sync.state_entries "
                     "WHERE sync_id OPERATOR(pg_catalog.=) $1 AND (%s) RETURNING key_hash) "
                     "SELECT pg_catalog.count(*) FROM (SELECT key_hash FROM changes UNION SELECT key_hash FROM replaced "
                     "UNION SELECT key_hash FROM entries) k",
                     condition, condition),
            nargs + 1, all_types, all_values, nullptr, false, 0) != SPI_OK_SELECT ||
        SPI_processed != 1)
        elog(ERROR, "amplitude_sync: could not forget the sync's state");
    bool isnull;
    int64 forgotten = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    leave_role_scope(&scope);
    return forgotten;
}

// The merge is due when the changes pass a tenth of the entries: a run
// loads both (the more changes, the more it reads twice), and a merge
// rewrites rows on most of the entries' pages whatever its size (the WAL
// a run writing in place would log each time, once per ten runs that
// change 1% of the records).
bool run_log_merge_due(const StateTables *tables) {
    int64 changes = tables->changes + (tables->into_changes ? tables->written : 0);
    return changes > 0 && changes * 10 > tables->entries;
}

// The sync's row is locked as for any write of its state (LOCK_SYNC).
int64 run_log_merge_state_changes(int sync_id) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[1] = {INT4OID};
    Datum args[1] = {Int32GetDatum(sync_id)};
    // The lock first, in a statement of its own: the merge's statements then
    // reads the tables after a resync or alter_sync that held the sync's row
    // has committed (and they wait for the merge).
    if (SPI_execute_with_args("SELECT FROM amplitude_sync.syncs WHERE sync_id OPERATOR(pg_catalog.=) $1 FOR SHARE", 1,
                              argtypes, args, nullptr, false, 0) != SPI_OK_SELECT)
        elog(ERROR, "amplitude_sync: could not lock the sync");
    if (SPI_processed == 0) {  // dropped meanwhile
        leave_role_scope(&scope);
        return 0;
    }
    // (What the run loaded is not all: a watermark run loads the changes
    // at or above its bound. The chunks are sized on what is there.)
    if (SPI_execute_with_args("SELECT pg_catalog.count(*) FROM amplitude_sync.state_changes "
                              "WHERE sync_id OPERATOR(pg_catalog.=) $1",
                              1, argtypes, args, nullptr, false, 0) != SPI_OK_SELECT ||
        SPI_processed != 1)
        elog(ERROR, "amplitude_sync: could not count the sync's state changes");
    bool isnull;
    int64 changes = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    // In ranges of key_hash of about kMergeChunk changes each: a statement
    // holds its rows twice (the deleted rows, then sorted, in index order,
    // for the entries' index), each time up to work_mem before spilling.
    constexpr int64 kMergeChunk = 65536;
    int64 chunks = (changes + kMergeChunk - 1) / kMergeChunk;
    // [low, high] of chunk k: the int64 range cut into equal parts.
    auto bound = [chunks](int64 k) {
        unsigned __int128 offset = (static_cast<unsigned __int128>(k) << 64) / static_cast<uint64>(chunks);
        return static_cast<int64>(static_cast<uint64>(offset) ^ (static_cast<uint64>(1) << 63));
    };
    Oid types[3] = {INT4OID, INT8OID, INT8OID};
    int64 merged = 0;
    for (int64 i = 0; i < chunks; ++i) {
        int64 low = bound(i);
        int64 high = i + 1 == chunks ? PG_INT64_MAX : bound(i + 1) - 1;
        Datum values[3] = {Int32GetDatum(sync_id), Int64GetDatum(low), Int64GetDatum(high)};
        if (SPI_execute_with_args(
                "WITH sync AS (" LOCK_SYNC "), "
                "moved AS (DELETE FROM amplitude_sync.state_changes c USING sync "
                "WHERE c.sync_id OPERATOR(pg_catalog.=) sync.sync_id AND c.key_hash OPERATOR(pg_catalog.>=) $2 "
                "AND c.key_hash OPERATOR(pg_catalog.<=) $3 RETURNING c.*) "
                "INSERT INTO amplitude_sync.state_entries (sync_id, record_key, fingerprint, sent_at, rejected_reason, "
                "position) "
                "SELECT sync_id, record_key, fingerprint, sent_at, rejected_reason, position FROM moved "
                "ORDER BY key_hash USING OPERATOR(pg_catalog.<) "
                "ON CONFLICT (sync_id, key_hash) DO UPDATE SET record_key = EXCLUDED.record_key, "
                "fingerprint = EXCLUDED.fingerprint, sent_at = EXCLUDED.sent_at, "
                "rejected_reason = EXCLUDED.rejected_reason, position = EXCLUDED.position",
                3, types, values, nullptr, false, 0) != SPI_OK_INSERT)
            elog(ERROR, "amplitude_sync: could not merge the sync's state changes");
        merged += static_cast<int64>(SPI_processed);
    }
    leave_role_scope(&scope);
    return merged;
}

// (count of a column the index does not hold: every heap page is read, and
// reading a page prunes it.)
void run_log_prune_state_entries(int sync_id) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid types[1] = {INT4OID};
    Datum values[1] = {Int32GetDatum(sync_id)};
    if (SPI_execute_with_args("SELECT pg_catalog.count(fingerprint) FROM amplitude_sync.state_entries "
                              "WHERE sync_id OPERATOR(pg_catalog.=) $1",
                              1, types, values, nullptr, false, 0) != SPI_OK_SELECT)
        elog(ERROR, "amplitude_sync: could not read the sync's state");
    leave_role_scope(&scope);
}

// Until autovacuum analyzes state_entries after a first run wrote millions of
// rows, PostgreSQL plans the next load for the table it last measured (none:
// a few thousand rows) and reads it with a bitmap of every row's address: 26
// MB more memory and more CPU at 10,000,000 records. As autovacuum decides
// (changes over a tenth of the table), with a floor so that small runs never
// pay for an ANALYZE. Never waits: when another session holds the lock
// ANALYZE needs (an ANALYZE, a VACUUM), autovacuum is left to it.
void run_log_refresh_state_statistics(int64 written) {
    constexpr int64 kAnalyzeFloor = 1000;
    if (written < kAnalyzeFloor) return;
    Oid state = get_relname_relid("state_entries", get_namespace_oid("amplitude_sync", false));
    HeapTuple tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(state));
    if (!HeapTupleIsValid(tuple)) elog(ERROR, "amplitude_sync: could not read the size of state_entries");
    double measured = reinterpret_cast<Form_pg_class>(GETSTRUCT(tuple))->reltuples;
    ReleaseSysCache(tuple);
    // (reltuples is -1 for a table never analyzed. The lock is held to the
    // end of the transaction, which ends with the run: ANALYZE takes it again.)
    if ((measured >= 0 && static_cast<double>(written) <= 0.1 * measured) ||
        !ConditionalLockRelationOid(state, ShareUpdateExclusiveLock))
        return;
    RoleScope scope;
    enter_extension_scope(&scope);
    if (SPI_execute("ANALYZE amplitude_sync.state_entries", false, 0) != SPI_OK_UTILITY)
        elog(ERROR, "amplitude_sync: could not analyze state_entries");
    leave_role_scope(&scope);
}

Datum run_log_elapsed(const RunLog *log) {
    Interval *elapsed = static_cast<Interval *>(palloc0(sizeof(Interval)));
    elapsed->time = GetCurrentTimestamp() - log->started_at;
    return IntervalPGetDatum(elapsed);
}

void run_log_advance_watermark(int sync_id, int64 highest, int64 lookback) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[3] = {INT4OID, INT8OID, INT8OID};
    Datum args[3] = {Int32GetDatum(sync_id), Int64GetDatum(highest), 0};
    if (SPI_execute_with_args("UPDATE amplitude_sync.syncs SET watermark = pg_catalog.int8larger(COALESCE(watermark, $2), $2) "
                              "WHERE sync_id OPERATOR(pg_catalog.=) $1 RETURNING watermark",
                              2, argtypes, args, nullptr, false, 0) != SPI_OK_UPDATE_RETURNING ||
        SPI_processed != 1)
        elog(ERROR, "amplitude_sync: could not record the watermark");
    bool isnull;
    int64 watermark = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    int64 floor = watermark < PG_INT64_MIN + lookback ? PG_INT64_MIN : watermark - lookback;
    args[2] = Int64GetDatum(floor);
    if (SPI_execute_with_args("UPDATE amplitude_sync.syncs SET ledger_floor = pg_catalog.int8larger(COALESCE(ledger_floor, $3), $3) "
                              "WHERE sync_id OPERATOR(pg_catalog.=) $1",
                              3, argtypes, args, nullptr, false, 0) != SPI_OK_UPDATE)
        elog(ERROR, "amplitude_sync: could not prune the sync's ledger");
    leave_role_scope(&scope);
    run_log_forget_state(sync_id, "position OPERATOR(pg_catalog.<) $2", 1, &argtypes[2], &args[2]);
}
