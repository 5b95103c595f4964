// The SQL entry points: argument checks, then one shared run (send_run.cpp).
// send_test_event is the one-request set-up check.
#include <cstring>
#include <string>

#include "cxx_guard.hpp"
#include "http_transport.hpp"
#include "json_text.hpp"

#include "connection.hpp"
#include "pg_headers.hpp"
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

}  // namespace

extern "C" {

PG_FUNCTION_INFO_V1(amplitude_sync_send_events);

// amplitude_send_events(server name, query text, api text, batch_size int,
//                       min_id_length int) RETURNS amplitude_sync.run_report
Datum amplitude_sync_send_events(PG_FUNCTION_ARGS) {
    const char *server_name = server_arg(fcinfo);
    SendSpec spec{};
    spec.kind = SendKind::kEvents;
    spec.function_name = "amplitude_send_events";
    spec.query = text_arg(fcinfo, 1, "query");
    const char *api = text_arg(fcinfo, 2, "api");
    spec.max_records = int_arg(fcinfo, 3, "batch_size", 1, 2000);
    spec.min_id_length = int_arg(fcinfo, 4, "min_id_length", 1, 1000);
    bool use_batch_api = strcmp(api, "batch") == 0;
    if (!use_batch_api && strcmp(api, "httpapi") != 0)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("invalid value for argument \"api\": \"%s\"", api),
                        errhint("Use \"httpapi\" (/2/httpapi, near real time) or \"batch\" (/batch, for backfills).")));
    spec.endpoint_path = use_batch_api ? "/batch" : "/2/httpapi";
    spec.max_bytes = use_batch_api ? 20000000 : 1000000 - 1;
    spec.throttle_pause_ms = use_batch_api ? 15000 : 30000;

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
