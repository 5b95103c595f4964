// The SQL entry points: argument checks, then one shared run (send_run.cpp).
// send_test_event is the one-request set-up check.
#include <cstring>
#include <string>

#include "cxx_guard.hpp"
#include "http_transport.hpp"
#include "json_text.hpp"

#include "connection.hpp"
#include "pg_headers.hpp"
#include "run_log.hpp"
#include "send_run.hpp"

using namespace amplitude_sync;

namespace {

bool interrupt_pending() { return QueryCancelPending != 0 || ProcDiePending != 0; }

const char *server_arg(FunctionCallInfo fcinfo) {
    if (PG_ARGISNULL(0))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("argument \"server\" must not be null")));
    return NameStr(*PG_GETARG_NAME(0));
}

const char *text_arg(FunctionCallInfo fcinfo, int arg, const char *name) {
    if (PG_ARGISNULL(arg))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
                        errmsg("argument \"%s\" must not be null", name)));
    return text_to_cstring(PG_GETARG_TEXT_PP(arg));
}

int int_arg(FunctionCallInfo fcinfo, int arg, const char *name, int min, int max) {
    if (PG_ARGISNULL(arg))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
                        errmsg("argument \"%s\" must not be null", name)));
    int v = PG_GETARG_INT32(arg);
    if (v < min || v > max)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("argument \"%s\" must be between %d and %d", name, min, max),
                        errdetail("The value given was %d.", v)));
    return v;
}

// jsonb argument as text, or NULL.
const char *jsonb_arg(FunctionCallInfo fcinfo, int arg) {
    if (PG_ARGISNULL(arg)) return nullptr;
    Jsonb *jb = PG_GETARG_JSONB_P(arg);
    return JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
}

// nulls => 'skip' (leave NULL columns out) or 'unset' (send $unset).
bool nulls_arg(FunctionCallInfo fcinfo, int arg) {
    const char *nulls = text_arg(fcinfo, arg, "nulls");
    if (strcmp(nulls, "unset") == 0) return true;
    if (strcmp(nulls, "skip") != 0)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("invalid value for argument \"nulls\": \"%s\"", nulls),
                        errhint("Use \"skip\" to leave NULL columns out or \"unset\" to remove those properties.")));
    return false;
}

// /2/httpapi (< 1 MB per request, 30 s throttle pause) or /batch (20 MB, 15 s).
SendSpec events_spec(bool batch_api) {
    SendSpec spec{};
    spec.kind = SendKind::kEvents;
    spec.endpoint_path = batch_api ? "/batch" : "/2/httpapi";
    spec.max_records = 2000;
    spec.max_bytes = batch_api ? 20000000 : 1000000 - 1;
    spec.throttle_pause_ms = batch_api ? 15000 : 30000;
    spec.min_id_length = 5;
    return spec;
}

SendSpec identify_spec(SendKind kind, const char *function_name, const char *path) {
    SendSpec spec{};
    spec.kind = kind;
    spec.function_name = function_name;
    spec.endpoint_path = path;
    spec.max_bytes = 1000000 - 1;   // "1 MB" per request on the identify endpoints
    spec.throttle_pause_ms = 15000;
    spec.min_id_length = 5;
    return spec;
}

SendKind kind_of_object(const char *object) {
    if (strcmp(object, "user") == 0) return SendKind::kUser;
    if (strcmp(object, "device") == 0) return SendKind::kDevice;
    if (strcmp(object, "group") == 0) return SendKind::kGroup;
    return SendKind::kEvents;
}

// A saved sync as run_sync and preview_sync need it, read with the caller's
// rights (row-level security hides other roles' syncs).
struct SavedSync {
    int sync_id;
    Oid owner;
    const char *name;
    const char *server;
    const char *object;
    const char *api;
    const char *operations;
    const char *nulls;
    const char *properties_event;  // or NULL
    int batch_size;                // 0: the endpoint's maximum
    int min_id_length;
    const char *query;             // the source joined with the sync's state
};

const char *copied_value(HeapTuple tuple, TupleDesc desc, int column) {
    char *value = SPI_getvalue(tuple, desc, column);
    if (!value) return nullptr;
    size_t len = strlen(value) + 1;
    char *copy = static_cast<char *>(SPI_palloc(len));
    memcpy(copy, value, len);
    return copy;
}

void load_saved_sync(const char *name, SavedSync *sync) {
    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    Oid argtypes[1] = {TEXTOID};
    Datum args[1] = {CStringGetTextDatum(name)};
    int rc = SPI_execute_with_args(
        "SELECT s.sync_id, s.owner::pg_catalog.oid, s.name, s.server, s.object, s.api, s.operations::pg_catalog.text, "
        "s.nulls, s.properties_event, COALESCE(s.batch_size, 0), s.min_id_length, "
        "amplitude_sync._sync_query(s) FROM amplitude_sync._own_sync($1) s",
        1, argtypes, args, nullptr, true, 1);
    if (rc != SPI_OK_SELECT || SPI_processed != 1) elog(ERROR, "amplitude_sync: could not read sync \"%s\"", name);
    HeapTuple tuple = SPI_tuptable->vals[0];
    TupleDesc desc = SPI_tuptable->tupdesc;
    bool isnull;
    sync->sync_id = DatumGetInt32(SPI_getbinval(tuple, desc, 1, &isnull));
    sync->owner = DatumGetObjectId(SPI_getbinval(tuple, desc, 2, &isnull));
    sync->name = copied_value(tuple, desc, 3);
    sync->server = copied_value(tuple, desc, 4);
    sync->object = copied_value(tuple, desc, 5);
    sync->api = copied_value(tuple, desc, 6);
    sync->operations = copied_value(tuple, desc, 7);
    sync->nulls = copied_value(tuple, desc, 8);
    sync->properties_event = copied_value(tuple, desc, 9);
    sync->batch_size = DatumGetInt32(SPI_getbinval(tuple, desc, 10, &isnull));
    sync->min_id_length = DatumGetInt32(SPI_getbinval(tuple, desc, 11, &isnull));
    sync->query = copied_value(tuple, desc, 12);
    SPI_finish();
}

SendSpec sync_spec(const SavedSync *sync) {
    SendKind kind = kind_of_object(sync->object);
    SendSpec spec;
    if (kind == SendKind::kEvents) {
        spec = events_spec(strcmp(sync->api, "batch") == 0);
    } else {
        spec = identify_spec(kind, "run_sync", kind == SendKind::kGroup ? "/groupidentify" : "/identify");
        spec.max_records = 1024;
        spec.operations_json = sync->operations;
        spec.nulls_unset = strcmp(sync->nulls, "unset") == 0;
        spec.properties_event = sync->properties_event;
    }
    spec.function_name = "run_sync";
    if (sync->batch_size > 0 && sync->batch_size < spec.max_records) spec.max_records = sync->batch_size;
    spec.min_id_length = sync->min_id_length;
    spec.query = sync->query;
    spec.sync_id = sync->sync_id;
    spec.sync_name = sync->name;
    return spec;
}

// The sync owner's connection: USAGE on the server and the user mapping
// are the owner's, whoever runs the sync.
void load_owner_connection(const SavedSync *sync, AmpConnection *conn) {
    Oid saved_user;
    int saved_context;
    GetUserIdAndSecContext(&saved_user, &saved_context);
    SetUserIdAndSecContext(sync->owner, saved_context | SECURITY_LOCAL_USERID_CHANGE);
    load_connection(sync->server, conn);
    SetUserIdAndSecContext(saved_user, saved_context);
}

// Advisory-lock key class for "a run of this sync is in progress".
constexpr int32 kRunLockClass = 0x414d5053;  // "AMPS"

}  // namespace

extern "C" {

PG_FUNCTION_INFO_V1(amplitude_sync_send_events);

// amplitude_send_events(server name, query text, api text, batch_size int,
//                       min_id_length int) RETURNS amplitude_sync.run_report
Datum amplitude_sync_send_events(PG_FUNCTION_ARGS) {
    const char *server_name = server_arg(fcinfo);
    const char *api = text_arg(fcinfo, 2, "api");
    bool use_batch_api = strcmp(api, "batch") == 0;
    if (!use_batch_api && strcmp(api, "httpapi") != 0)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("invalid value for argument \"api\": \"%s\"", api),
                        errhint("Use \"httpapi\" (/2/httpapi, near real time) or \"batch\" (/batch, for backfills).")));
    SendSpec spec = events_spec(use_batch_api);
    spec.function_name = "amplitude_send_events";
    spec.query = text_arg(fcinfo, 1, "query");
    spec.max_records = int_arg(fcinfo, 3, "batch_size", 1, 2000);
    spec.min_id_length = int_arg(fcinfo, 4, "min_id_length", 1, 1000);

    AmpConnection conn;
    load_connection(server_name, &conn);
    PG_RETURN_DATUM(execute_send_run(fcinfo, &conn, &spec));
}

PG_FUNCTION_INFO_V1(amplitude_sync_identify);

// amplitude_identify(server name, query text, object text, operations jsonb,
//                    nulls text, properties_event text, batch_size int,
//                    min_id_length int) RETURNS amplitude_sync.run_report
Datum amplitude_sync_identify(PG_FUNCTION_ARGS) {
    const char *server_name = server_arg(fcinfo);
    const char *object = text_arg(fcinfo, 2, "object");
    SendKind kind = SendKind::kUser;
    if (strcmp(object, "device") == 0) kind = SendKind::kDevice;
    else if (strcmp(object, "user") != 0)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("invalid value for argument \"object\": \"%s\"", object),
                        errhint("Use \"user\" (keyed by user_id) or \"device\" (keyed by device_id); "
                                "groups have amplitude_group_identify().")));
    SendSpec spec = identify_spec(kind, "amplitude_identify", "/identify");
    spec.query = text_arg(fcinfo, 1, "query");
    spec.operations_json = jsonb_arg(fcinfo, 3);
    spec.nulls_unset = nulls_arg(fcinfo, 4);
    spec.properties_event = PG_ARGISNULL(5) ? nullptr : text_to_cstring(PG_GETARG_TEXT_PP(5));
    if (spec.properties_event && spec.properties_event[0] == '\0')
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("argument \"properties_event\" must not be empty"),
                        errhint("Give an event type such as 'Properties Updated', or NULL for none.")));
    spec.max_records = int_arg(fcinfo, 6, "batch_size", 1, 1024);
    spec.min_id_length = int_arg(fcinfo, 7, "min_id_length", 1, 1000);

    AmpConnection conn;
    load_connection(server_name, &conn);
    PG_RETURN_DATUM(execute_send_run(fcinfo, &conn, &spec));
}

PG_FUNCTION_INFO_V1(amplitude_sync_group_identify);

// amplitude_group_identify(server name, query text, operations jsonb,
//                          nulls text, batch_size int) RETURNS amplitude_sync.run_report
Datum amplitude_sync_group_identify(PG_FUNCTION_ARGS) {
    const char *server_name = server_arg(fcinfo);
    SendSpec spec = identify_spec(SendKind::kGroup, "amplitude_group_identify", "/groupidentify");
    spec.query = text_arg(fcinfo, 1, "query");
    spec.operations_json = jsonb_arg(fcinfo, 2);
    spec.nulls_unset = nulls_arg(fcinfo, 3);
    spec.max_records = int_arg(fcinfo, 4, "batch_size", 1, 1024);

    AmpConnection conn;
    load_connection(server_name, &conn);
    PG_RETURN_DATUM(execute_send_run(fcinfo, &conn, &spec));
}

PG_FUNCTION_INFO_V1(amplitude_sync_check_source);

// _check_source(object text, query text, operations jsonb, nulls text)
Datum amplitude_sync_check_source(PG_FUNCTION_ARGS) {
    const char *object = text_arg(fcinfo, 0, "object");
    SendKind kind = kind_of_object(object);
    SendSpec spec = kind == SendKind::kEvents ? events_spec(false) : identify_spec(kind, "check", "/identify");
    spec.query = text_arg(fcinfo, 1, "source");
    spec.operations_json = jsonb_arg(fcinfo, 2);
    spec.nulls_unset = nulls_arg(fcinfo, 3);
    check_source_columns(&spec);
    PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(amplitude_sync_run_sync);

// CALL run_sync(name text, INOUT ... the run report)
Datum amplitude_sync_run_sync(PG_FUNCTION_ARGS) {
    const char *name = text_arg(fcinfo, 0, "name");
    // CALL outside a transaction block may commit as it goes.
    CallContext *call = fcinfo->context && IsA(fcinfo->context, CallContext)
                            ? reinterpret_cast<CallContext *>(fcinfo->context)
                            : nullptr;
    bool nonatomic = call && !call->atomic;
    SavedSync sync;
    load_saved_sync(name, &sync);

    // Two runs of one sync never overlap: a second one is skipped. The lock
    // is the session's (a run may span transactions) and released on error.
    if (!DatumGetBool(DirectFunctionCall2(pg_try_advisory_lock_int4, Int32GetDatum(kRunLockClass),
                                          Int32GetDatum(sync.sync_id)))) {
        ereport(NOTICE, (errmsg("sync \"%s\" is already running in another session; this run is skipped",
                                sync.name)));
        TupleDesc desc;
        if (get_call_result_type(fcinfo, nullptr, &desc) != TYPEFUNC_COMPOSITE)
            elog(ERROR, "amplitude_sync: return type must be a row type");
        Datum values[10] = {0, CStringGetTextDatum("skipped"), 0, 0, 0, 0, 0, 0, 0, 0};
        bool nulls[10] = {true, false, true, true, true, true, true, true, true, true};
        PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
    }
    volatile Datum result = 0;
    PG_TRY();
    {
        if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
        run_log_close_stale(sync.name);
        SPI_finish();
        AmpConnection conn;
        load_owner_connection(&sync, &conn);
        SendSpec spec = sync_spec(&sync);
        spec.run_as = sync.owner;
        spec.commit_progress = nonatomic;
        result = execute_send_run(fcinfo, &conn, &spec);
    }
    PG_FINALLY();
    {
        DirectFunctionCall2(pg_advisory_unlock_int4, Int32GetDatum(kRunLockClass), Int32GetDatum(sync.sync_id));
    }
    PG_END_TRY();
    PG_RETURN_DATUM(result);
}

PG_FUNCTION_INFO_V1(amplitude_sync_preview_sync);

// preview_sync(name text, include_unchanged bool) RETURNS TABLE (...)
Datum amplitude_sync_preview_sync(PG_FUNCTION_ARGS) {
    const char *name = text_arg(fcinfo, 0, "name");
    ReturnSetInfo *rsinfo = reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo);
    if (!rsinfo || !IsA(rsinfo, ReturnSetInfo) || !(rsinfo->allowedModes & SFRM_Materialize))
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("preview_sync must be called in the FROM clause")));
    SavedSync sync;
    load_saved_sync(name, &sync);
    AmpConnection conn;
    load_owner_connection(&sync, &conn);
    SendSpec spec = sync_spec(&sync);
    spec.run_as = sync.owner;
    spec.preview = true;
    spec.include_unchanged = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);
    spec.rsinfo = rsinfo;
    execute_send_run(fcinfo, &conn, &spec);
    return (Datum)0;
}

PG_FUNCTION_INFO_V1(amplitude_sync_send_test_event);

// send_test_event(server name, OUT http_status int, OUT response text)
Datum amplitude_sync_send_test_event(PG_FUNCTION_ARGS) {
    const char *server_name = server_arg(fcinfo);
    TupleDesc result_desc;
    if (get_call_result_type(fcinfo, nullptr, &result_desc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "amplitude_sync: return type must be a row type");
    AmpConnection conn;
    load_connection(server_name, &conn);

    int64 now_ms = (GetCurrentTimestamp() / 1000) + kPgEpochToUnixMicros / 1000;
    int status = 0;
    char *answer = nullptr;
    bool transport_failed = false;
    AMP_CXX(
        std::string payload = "{\"api_key\":";
        append_json_string(payload, conn.api_key);
        payload += ",\"events\":[{\"event_type\":\"amplitude_sync test event\","
                   "\"user_id\":\"amplitude_sync_test_user\",\"time\":" + std::to_string(now_ms) +
                   ",\"insert_id\":\"amplitude-sync-test-" + std::to_string(now_ms) +
                   "\",\"event_properties\":{\"source\":\"amplitude_sync.send_test_event\"}}]}";
        TransportOptions options = transport_options(conn);
        HttpResponse r = http_post_once(std::string(conn.base_url) + "/2/httpapi", "application/json",
                                        payload, options, interrupt_pending);
        status = r.status;
        transport_failed = r.status == 0;
        std::string shown = redact(transport_failed ? r.transport_error : r.body, conn.api_key, 4000);
        answer = static_cast<char *>(malloc(shown.size() + 1));
        if (!answer) throw std::bad_alloc();
        memcpy(answer, shown.c_str(), shown.size() + 1));
    // Copy into PostgreSQL memory, then free the malloc'd text before any ERROR.
    char *answer_pg = pstrdup(answer);
    free(answer);
    if (transport_failed) {
        CHECK_FOR_INTERRUPTS();
        ereport(ERROR, (errcode(ERRCODE_CONNECTION_FAILURE),
                        errmsg("could not reach amplitude for server \"%s\"", conn.server_name),
                        errdetail("POST %s/2/httpapi failed: %s.", conn.base_url, answer_pg)));
    }
    Datum result[2] = {Int32GetDatum(status), CStringGetTextDatum(answer_pg)};
    bool result_nulls[2] = {false, false};
    PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(result_desc), result, result_nulls)));
}

}  // extern "C"
