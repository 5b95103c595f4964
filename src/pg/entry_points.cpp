// The one-shot SQL entry points: argument checks (call_options.hpp), then
// one shared run (send_run.cpp). send_test_event is the one-request set-up
// check. Saved syncs are in saved_syncs.cpp.
#include <cstring>
#include <string>

#include "call_options.hpp"
#include "cxx_guard.hpp"
#include "http_transport.hpp"
#include "json_text.hpp"

#include "connection.hpp"
#include "pg_headers.hpp"
#include "run_log.hpp"
#include "send_run.hpp"
#include "source_query.hpp"
#include "sql_arguments.hpp"

using namespace amplitude_sync;

namespace {

bool interrupt_pending() { return QueryCancelPending != 0 || ProcDiePending != 0; }

// An int4 argument, or kNotGiven when NULL.
int optional_int_arg(FunctionCallInfo fcinfo, int arg) {
    return PG_ARGISNULL(arg) ? kNotGiven : PG_GETARG_INT32(arg);
}

// jsonb argument as text, or NULL.
const char *jsonb_arg(FunctionCallInfo fcinfo, int arg) {
    if (PG_ARGISNULL(arg)) return nullptr;
    Jsonb *jb = PG_GETARG_JSONB_P(arg);
    return JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
}

// The arguments checked in one place (call_options.hpp), and the query.
void one_shot_spec(FunctionCallInfo fcinfo, const CallArguments &arguments, const char *function_name,
                   SendSpec *spec) {
    *spec = SendSpec{};
    AMP_CXX(spec->options = check_call_arguments(arguments));
    spec->function_name = function_name;
    spec->query = checked_source_query(text_arg(fcinfo, 1, "query"));
}

Datum run_one_shot(FunctionCallInfo fcinfo, const SendSpec *spec) {
    AmpConnection conn;
    load_connection(name_arg(fcinfo, 0, "server"), &conn);
    return execute_send_run(fcinfo, &conn, spec);
}

}  // namespace

extern "C" {

PG_FUNCTION_INFO_V1(amplitude_sync_send_events);

// amplitude_send_events(server name, query text, api text, batch_size int,
//                       min_id_length int) RETURNS amplitude_sync.run_report
Datum amplitude_sync_send_events(PG_FUNCTION_ARGS) {
    CallArguments arguments;
    arguments.object = "event";
    arguments.api = text_arg(fcinfo, 2, "api");
    arguments.batch_size = optional_int_arg(fcinfo, 3);
    arguments.min_id_length = PG_ARGISNULL(4) ? 5 : PG_GETARG_INT32(4);
    SendSpec spec;
    one_shot_spec(fcinfo, arguments, "amplitude_send_events", &spec);
    PG_RETURN_DATUM(run_one_shot(fcinfo, &spec));
}

PG_FUNCTION_INFO_V1(amplitude_sync_identify);

// amplitude_identify(server name, query text, object text, operations jsonb,
//                    nulls text, properties_event text, batch_size int,
//                    min_id_length int) RETURNS amplitude_sync.run_report
Datum amplitude_sync_identify(PG_FUNCTION_ARGS) {
    CallArguments arguments;
    arguments.object = text_arg(fcinfo, 2, "object");
    arguments.nulls = text_arg(fcinfo, 4, "nulls");
    arguments.properties_event = optional_text_arg(fcinfo, 5);
    arguments.batch_size = optional_int_arg(fcinfo, 6);
    arguments.min_id_length = PG_ARGISNULL(7) ? 5 : PG_GETARG_INT32(7);
    if (pg_strcasecmp(arguments.object, "user") != 0 && pg_strcasecmp(arguments.object, "device") != 0)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("invalid value for argument \"object\": \"%s\"", arguments.object),
                        errhint("Use \"user\" (keyed by user_id) or \"device\" (keyed by device_id); "
                                "groups have amplitude_group_identify(), events amplitude_send_events().")));
    SendSpec spec;
    one_shot_spec(fcinfo, arguments, "amplitude_identify", &spec);
    spec.operations_json = jsonb_arg(fcinfo, 3);
    PG_RETURN_DATUM(run_one_shot(fcinfo, &spec));
}

PG_FUNCTION_INFO_V1(amplitude_sync_group_identify);

// amplitude_group_identify(server name, query text, operations jsonb,
//                          nulls text, batch_size int) RETURNS amplitude_sync.run_report
Datum amplitude_sync_group_identify(PG_FUNCTION_ARGS) {
    CallArguments arguments;
    arguments.object = "group";
    arguments.nulls = text_arg(fcinfo, 3, "nulls");
    arguments.batch_size = optional_int_arg(fcinfo, 4);
    SendSpec spec;
    one_shot_spec(fcinfo, arguments, "amplitude_group_identify", &spec);
    spec.operations_json = jsonb_arg(fcinfo, 2);
    PG_RETURN_DATUM(run_one_shot(fcinfo, &spec));
}

PG_FUNCTION_INFO_V1(amplitude_sync_send_test_event);

// send_test_event(server name, OUT http_status int, OUT response text)
Datum amplitude_sync_send_test_event(PG_FUNCTION_ARGS) {
    const char *server_name = name_arg(fcinfo, 0, "server");
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
