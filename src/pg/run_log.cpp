#include "run_log.hpp"

#include <string>

using amplitude_sync::ConfirmedRecord;
using amplitude_sync::Outcome;
using amplitude_sync::Rejection;

namespace {

// Payloads above this size are not kept (the reason still says why).
constexpr size_t kMaxStoredPayload = 1000000;

struct OwnerScope {
    Oid saved_user;
    int saved_context;
};

void become_owner(const RunLog *log, OwnerScope *scope) {
    GetUserIdAndSecContext(&scope->saved_user, &scope->saved_context);
    SetUserIdAndSecContext(log->owner, scope->saved_context | SECURITY_LOCAL_USERID_CHANGE |
                                           SECURITY_RESTRICTED_OPERATION);
}

void restore_user(const OwnerScope *scope) {
    SetUserIdAndSecContext(scope->saved_user, scope->saved_context);
}

// UTF-8 text from the core as a text Datum in the database encoding.
Datum text_datum(const std::string &s) {
    char *server = pg_any_to_server(s.data(), static_cast<int>(s.size()), PG_UTF8);
    return PointerGetDatum(server == s.data() ? cstring_to_text_with_len(s.data(), static_cast<int>(s.size()))
                                              : cstring_to_text(server));
}

Oid extension_owner() {
    Oid ext = get_extension_oid("amplitude_sync", false);
    bool isnull;
    Oid argtypes[1] = {OIDOID};
    Datum args[1] = {ObjectIdGetDatum(ext)};
    if (SPI_execute_with_args("SELECT extowner FROM pg_catalog.pg_extension WHERE oid = $1", 1,
                              argtypes, args, nullptr, true, 1) != SPI_OK_SELECT ||
        SPI_processed != 1)
        elog(ERROR, "amplitude_sync: extension owner not found");
    return DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

}  // namespace

void run_log_start(RunLog *log, const char *function_name, const char *server_name,
                   const char *endpoint, const char *sync_name) {
    log->owner = extension_owner();
    log->started_at = GetCurrentTimestamp();
    log->insert_rejection = nullptr;
    Oid run_by = GetUserId();

    OwnerScope scope;
    become_owner(log, &scope);
    if (amplitude_sync_history_days > 0) {
        Oid days_type[1] = {INT4OID};
        Datum days[1] = {Int32GetDatum(amplitude_sync_history_days)};
        if (SPI_execute_with_args("DELETE FROM amplitude_sync.sync_runs WHERE started_at < "
                                  "pg_catalog.now() - pg_catalog.make_interval(days => $1)",
                                  1, days_type, days, nullptr, false, 0) != SPI_OK_DELETE)
            elog(ERROR, "amplitude_sync: could not prune the run history");
    }
    Oid argtypes[6] = {TEXTOID, TEXTOID, TEXTOID, OIDOID, TIMESTAMPTZOID, TEXTOID};
    Datum args[6] = {CStringGetTextDatum(function_name), CStringGetTextDatum(server_name),
                     CStringGetTextDatum(endpoint), ObjectIdGetDatum(run_by),
                     TimestampTzGetDatum(log->started_at),
                     sync_name ? CStringGetTextDatum(sync_name) : (Datum)0};
    char nulls[7] = "      ";
    if (!sync_name) nulls[5] = 'n';
    int rc = SPI_execute_with_args(
        "INSERT INTO amplitude_sync.sync_runs (function_name, server_name, endpoint, run_by, started_at, status, sync_name) "
        "VALUES ($1, $2, $3, $4::pg_catalog.regrole, $5, 'running', $6) RETURNING run_id",
        6, argtypes, args, nulls, false, 1);
    if (rc != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
        elog(ERROR, "amplitude_sync: could not record the run");
    bool isnull;
    log->run_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

    Oid rej_types[12] = {INT8OID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
                         TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
    log->insert_rejection = SPI_prepare(
        "INSERT INTO amplitude_sync.rejected_records (run_id, row_number, outcome, field, reason, "
        "user_id, device_id, insert_id, event_type, group_type, group_value, payload) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::pg_catalog.json)",
        12, rej_types);
    if (!log->insert_rejection) elog(ERROR, "amplitude_sync: could not prepare the rejection log");
    restore_user(&scope);
}

void run_log_store_rejections(RunLog *log, std::vector<Rejection> *rejections) {
    if (rejections->empty()) return;
    OwnerScope scope;
    become_owner(log, &scope);
    for (size_t k = 0; k < rejections->size(); ++k) {
        const Rejection *r = &(*rejections)[k];
        Datum values[12];
        char nulls[12];
        memset(nulls, ' ', sizeof nulls);
        values[0] = Int64GetDatum(log->run_id);
        values[1] = Int64GetDatum(static_cast<int64>(r->record.row_number));
        values[2] = CStringGetTextDatum(r->outcome == Outcome::kRejected ? "rejected" : "not_sent");
        const std::string *texts[9] = {&r->field,           &r->reason,           &r->record.user_id,
                                       &r->record.device_id, &r->record.insert_id, &r->record.event_type,
                                       &r->record.group_type, &r->record.group_value, &r->record.json};
        for (int i = 0; i < 9; ++i) {
            bool keep = !texts[i]->empty() && (i != 8 || texts[i]->size() <= kMaxStoredPayload);
            if (keep) values[3 + i] = text_datum(*texts[i]);
            else nulls[3 + i] = 'n';
        }
        if (SPI_execute_plan(log->insert_rejection, values, nulls, false, 0) != SPI_OK_INSERT)
            elog(ERROR, "amplitude_sync: could not record a rejected row");
    }
    restore_user(&scope);
    rejections->clear();
}

void run_log_finish(RunLog *log, const char *status, int64 rows_read, int64 unchanged,
                    const amplitude_sync::DeliveryStats *stats, const char *error) {
    OwnerScope scope;
    become_owner(log, &scope);
    Oid argtypes[11] = {INT8OID, TEXTOID, INT8OID, INT8OID, INT8OID,
                        INT8OID, INT8OID, INT8OID, INT8OID, TEXTOID, INT8OID};
    Datum args[11] = {Int64GetDatum(log->run_id),
                      CStringGetTextDatum(status),
                      Int64GetDatum(rows_read),
                      Int64GetDatum(static_cast<int64>(stats->sent)),
                      Int64GetDatum(static_cast<int64>(stats->rejected)),
                      Int64GetDatum(static_cast<int64>(stats->not_sent)),
                      Int64GetDatum(static_cast<int64>(stats->requests)),
                      Int64GetDatum(static_cast<int64>(stats->retries)),
                      Int64GetDatum(static_cast<int64>(stats->bytes_sent)),
                      error ? CStringGetTextDatum(error) : (Datum)0,
                      Int64GetDatum(unchanged)};
    char nulls[12] = "           ";
    if (!error) nulls[9] = 'n';
    int rc = SPI_execute_with_args(
        "UPDATE amplitude_sync.sync_runs SET status = $2, finished_at = pg_catalog.clock_timestamp(), "
        "rows_read = $3, sent = $4, rejected = $5, not_sent = $6, requests = $7, retries = $8, "
        "bytes_sent = $9, error = $10, unchanged = $11 WHERE run_id = $1",
        11, argtypes, args, nulls, false, 0);
    if (rc != SPI_OK_UPDATE) elog(ERROR, "amplitude_sync: could not record the run's end");
    restore_user(&scope);
}

void run_log_store_confirmed(RunLog *log, int sync_id, std::vector<ConfirmedRecord> *confirmed) {
    if (confirmed->empty()) return;
    int n = static_cast<int>(confirmed->size());
    Datum *keys = static_cast<Datum *>(palloc(sizeof(Datum) * n));
    Datum *fingerprints = static_cast<Datum *>(palloc(sizeof(Datum) * n));
    for (int i = 0; i < n; ++i) {
        const ConfirmedRecord *c = &(*confirmed)[i];
        keys[i] = text_datum(c->state_key);
        pg_uuid_t *uuid = static_cast<pg_uuid_t *>(palloc(sizeof(pg_uuid_t)));
        memcpy(uuid->data, c->fingerprint.data(), UUID_LEN);
        fingerprints[i] = UUIDPGetDatum(uuid);
    }
    Oid argtypes[3] = {INT4OID, TEXTARRAYOID, UUIDARRAYOID};
    Datum args[3] = {Int32GetDatum(sync_id),
                     PointerGetDatum(construct_array(keys, n, TEXTOID, -1, false, TYPALIGN_INT)),
                     PointerGetDatum(construct_array(fingerprints, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR))};
    OwnerScope scope;
    become_owner(log, &scope);
    // The last confirmation of a key wins (a source may repeat a key).
    int rc = SPI_execute_with_args(
        "INSERT INTO amplitude_sync.sync_state (sync_id, record_key, fingerprint, sent_at) "
        "SELECT DISTINCT ON (k) $1, k, f, pg_catalog.clock_timestamp() "
        "FROM unnest($2::pg_catalog.text[], $3::pg_catalog.uuid[]) WITH ORDINALITY AS c(k, f, n) "
        "ORDER BY k, n DESC "
        "ON CONFLICT (sync_id, record_key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, sent_at = EXCLUDED.sent_at",
        3, argtypes, args, nullptr, false, 0);
    if (rc != SPI_OK_INSERT) elog(ERROR, "amplitude_sync: could not remember the confirmed records");
    restore_user(&scope);
    confirmed->clear();
}

Datum run_log_elapsed(const RunLog *log) {
    Interval *elapsed = static_cast<Interval *>(palloc0(sizeof(Interval)));
    elapsed->time = GetCurrentTimestamp() - log->started_at;
    return IntervalPGetDatum(elapsed);
}
