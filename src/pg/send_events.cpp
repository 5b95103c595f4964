// amplitude_send_events() and send_test_event(): the SQL entry points that
// deliver events. PostgreSQL work (SPI cursor, Datums, run log) happens here
// in frames without C++ objects; the C++ run state lives on the heap, owned
// by a memory context whose reset callback deletes it, so an ERROR anywhere
// (cancel, statement_timeout, a bad row in the user's query) still closes
// every connection and frees every buffer.
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cxx_guard.hpp"
#include "delivery.hpp"
#include "event_encoder.hpp"
#include "http_transport.hpp"
#include "value.hpp"

#include "connection.hpp"
#include "datum_values.hpp"
#include "pg_headers.hpp"
#include "run_log.hpp"

using namespace amplitude_sync;

namespace {

// Rows fetched from the cursor at a time: large enough to amortise the
// executor round trip, small enough that memory does not follow row count.
constexpr long kFetchRows = 1000;

bool interrupt_pending() { return QueryCancelPending != 0 || ProcDiePending != 0; }

// Everything C++ a run owns. Deleted by the memory-context callback.
struct EventRun {
    EventRun(const AmpConnection &conn, const std::string &url, std::vector<ColumnPlan> plan,
             int min_id_length, DeliveryLimits limits, long throttle_pause_ms)
        : format(conn.api_key, min_id_length),
          transport(make_curl_transport(static_cast<size_t>(conn.max_concurrency), transport_options(conn))),
          delivery(format, *transport, url, limits, retry_policy(conn, throttle_pause_ms),
                   static_cast<size_t>(conn.max_concurrency), interrupt_pending),
          encoder(std::move(plan), min_id_length) {}

    static TransportOptions transport_options(const AmpConnection &conn) {
        TransportOptions t;
        t.connect_timeout_ms = conn.connect_timeout_ms;
        t.request_timeout_ms = conn.request_timeout_ms;
        t.allow_plain_http = conn.allow_plain_http;
        t.verify_tls = conn.verify_tls;
        return t;
    }
    static RetryPolicy retry_policy(const AmpConnection &conn, long throttle_pause_ms) {
        RetryPolicy p;
        p.max_attempts = conn.max_attempts;
        p.max_retry_ms = conn.max_retry_seconds * 1000L;
        p.backoff_base_ms = conn.retry_backoff_ms;
        p.throttle_pause_ms = conn.throttle_pause_ms > 0 ? conn.throttle_pause_ms : throttle_pause_ms;
        // A project-wide 429 waits longer (60 s by default); the option scales both.
        if (conn.throttle_pause_ms > 0) p.project_throttle_pause_ms = 2L * conn.throttle_pause_ms;
        return p;
    }

    EventsFormat format;
    std::unique_ptr<Transport> transport;
    Delivery delivery;
    EventEncoder encoder;
    Record record;
    Rejection rejection;
};

void delete_event_run(void *arg) { delete static_cast<EventRun *>(arg); }

void encode_and_queue(EventRun *run, uint64_t row_number, const Value *values) {
    if (run->encoder.encode_row(row_number, values, run->record, run->rejection)) {
        run->delivery.add(std::move(run->record));
    } else {
        run->delivery.reject(std::move(run->rejection));
    }
}

std::vector<ColumnPlan> plan_columns(TupleDesc desc, const ColumnReader *readers) {
    std::vector<ColumnInput> inputs;
    for (int i = 0; i < desc->natts; ++i) {
        Form_pg_attribute att = TupleDescAttr(desc, i);
        inputs.push_back({NameStr(att->attname), readers[i].category});
    }
    return plan_event_columns(inputs);
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

// Raises the error for a run Amplitude refused to take at all (API key, 403).
[[noreturn]] void raise_stopped_run(const AmpConnection *conn, const char *error, int64 rows_read,
                                    uint64_t sent) {
    bool bad_key = strstr(error, "Invalid API key") != nullptr;
    ereport(ERROR,
            (errcode(bad_key ? ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION
                             : ERRCODE_SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION),
             bad_key ? errmsg("amplitude rejected the API key of server \"%s\"", conn->server_name)
                     : errmsg("amplitude refused the requests of server \"%s\"", conn->server_name),
             errdetail("Amplitude answered: %s. Of %lld rows read, %llu were sent before the run stopped; "
                       "the rest were not sent.",
                       error, static_cast<long long>(rows_read), static_cast<unsigned long long>(sent)),
             bad_key ? errhint("Check the api_key option of your user mapping for server \"%s\".",
                               conn->server_name)
                     : 0));
    pg_unreachable();
}

}  // namespace

extern "C" {

PG_FUNCTION_INFO_V1(amplitude_sync_send_events);

// amplitude_send_events(server name, query text, api text, batch_size int,
//                       min_id_length int) RETURNS amplitude_sync.run_report
Datum amplitude_sync_send_events(PG_FUNCTION_ARGS) {
    if (PG_ARGISNULL(0))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("argument \"server\" must not be null")));
    const char *server_name = NameStr(*PG_GETARG_NAME(0));
    const char *query = text_arg(fcinfo, 1, "query");
    const char *api = text_arg(fcinfo, 2, "api");
    int batch_size = int_arg(fcinfo, 3, "batch_size", 1, 2000);
    int min_id_length = int_arg(fcinfo, 4, "min_id_length", 1, 1000);

    bool use_batch_api = strcmp(api, "batch") == 0;
    if (!use_batch_api && strcmp(api, "httpapi") != 0)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("invalid value for argument \"api\": \"%s\"", api),
                        errhint("Use \"httpapi\" (/2/httpapi, near real time) or \"batch\" (/batch, for backfills).")));
    const char *endpoint_path = use_batch_api ? "/batch" : "/2/httpapi";

    TupleDesc result_desc;
    if (get_call_result_type(fcinfo, nullptr, &result_desc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "amplitude_sync: return type must be a row type");

    AmpConnection conn;
    load_connection(server_name, &conn);

    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    SPIPlanPtr plan = SPI_prepare(query, 0, nullptr);
    if (!plan)
        ereport(ERROR, (errcode(ERRCODE_SYNTAX_ERROR), errmsg("could not prepare the query: %s",
                                                             SPI_result_code_string(SPI_result))));
    if (!SPI_is_cursor_plan(plan))
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("the query must be a single statement that returns rows"),
                        errhint("Pass a SELECT (or VALUES, or TABLE name).")));
    // The query runs with the caller's rights: this function is not SECURITY DEFINER.
    Portal portal = SPI_cursor_open(nullptr, plan, nullptr, nullptr, false);
    TupleDesc desc = portal->tupDesc;
    int natts = desc->natts;

    ColumnReader *readers = static_cast<ColumnReader *>(palloc0(sizeof(ColumnReader) * (natts + 1)));
    for (int i = 0; i < natts; ++i) init_column_reader(&readers[i], TupleDescAttr(desc, i)->atttypid);

    // The C++ run state, freed with this context on success and on error.
    MemoryContext run_context = AllocSetContextCreate(CurrentMemoryContext, "amplitude_sync run",
                                                      ALLOCSET_DEFAULT_SIZES);
    MemoryContextCallback *cleanup = static_cast<MemoryContextCallback *>(
        MemoryContextAllocZero(run_context, sizeof(MemoryContextCallback)));
    EventRun *run = nullptr;
    DeliveryLimits limits;
    limits.max_records = static_cast<size_t>(batch_size);
    limits.max_bytes = use_batch_api ? 20000000 : 1000000 - 1;
    long api_throttle_pause_ms = use_batch_api ? 15000 : 30000;
    AMP_CXX(run = new EventRun(conn, std::string(conn.base_url) + endpoint_path,
                               plan_columns(desc, readers), min_id_length, limits,
                               api_throttle_pause_ms));
    cleanup->func = delete_event_run;
    cleanup->arg = run;
    MemoryContextRegisterResetCallback(run_context, cleanup);

    RunLog log;
    run_log_start(&log, "amplitude_send_events", conn.server_name, endpoint_path);

    Datum *datums = static_cast<Datum *>(palloc(sizeof(Datum) * (natts + 1)));
    bool *nulls = static_cast<bool *>(palloc(sizeof(bool) * (natts + 1)));
    Value *values = static_cast<Value *>(palloc0(sizeof(Value) * (natts + 1)));
    MemoryContext row_context = AllocSetContextCreate(run_context, "amplitude_sync row",
                                                      ALLOCSET_DEFAULT_SIZES);
    int64 rows_read = 0;
    bool more = true;
    while (more && run->delivery.state() == DeliveryState::kRunning) {
        CHECK_FOR_INTERRUPTS();
        SPI_cursor_fetch(portal, true, kFetchRows);
        more = SPI_processed == static_cast<uint64>(kFetchRows);
        SPITupleTable *table = SPI_tuptable;
        for (uint64 r = 0; r < SPI_processed && run->delivery.state() == DeliveryState::kRunning; ++r) {
            MemoryContext outer = MemoryContextSwitchTo(row_context);
            heap_deform_tuple(table->vals[r], desc, datums, nulls);
            for (int i = 0; i < natts; ++i) read_column_value(&readers[i], datums[i], nulls[i], &values[i]);
            ++rows_read;
            AMP_CXX(encode_and_queue(run, static_cast<uint64_t>(rows_read), values));
            MemoryContextSwitchTo(outer);
            MemoryContextReset(row_context);
        }
        SPI_freetuptable(table);
        run_log_store_rejections(&log, &run->delivery.rejections());
    }
    SPI_cursor_close(portal);
    AMP_CXX(run->delivery.finish());
    if (run->delivery.state() == DeliveryState::kInterrupted) {
        CHECK_FOR_INTERRUPTS();
        ereport(ERROR, (errcode(ERRCODE_QUERY_CANCELED), errmsg("canceling statement due to user request")));
    }
    run_log_store_rejections(&log, &run->delivery.rejections());

    const DeliveryStats *stats = &run->delivery.stats();
    if (run->delivery.state() == DeliveryState::kStopped)
        raise_stopped_run(&conn, run->delivery.error().c_str(), rows_read, stats->sent);

    bool failed = run->delivery.state() == DeliveryState::kFailed;
    char *error = nullptr;
    if (failed) {
        error = psprintf("%s; the run stopped after reading %lld rows (the rest of the query was not read)",
                         run->delivery.error().c_str(), static_cast<long long>(rows_read));
        ereport(WARNING, (errmsg("amplitude_sync run failed: %s", run->delivery.error().c_str()),
                          errdetail("Run %lld: %llu rows were sent, %llu rejected and %llu not sent.",
                                    static_cast<long long>(log.run_id),
                                    static_cast<unsigned long long>(stats->sent),
                                    static_cast<unsigned long long>(stats->rejected),
                                    static_cast<unsigned long long>(stats->not_sent)),
                          errhint("See amplitude_sync.rejected_records for run %lld; running the same "
                                  "query again resends nothing twice.", static_cast<long long>(log.run_id))));
    }
    run_log_finish(&log, failed ? "failed" : "succeeded", rows_read, stats, error);

    Datum result[9] = {Int64GetDatum(log.run_id),
                       CStringGetTextDatum(failed ? "failed" : "succeeded"),
                       Int64GetDatum(rows_read),
                       Int64GetDatum(static_cast<int64>(stats->sent)),
                       Int64GetDatum(static_cast<int64>(stats->rejected)),
                       Int64GetDatum(static_cast<int64>(stats->not_sent)),
                       Int64GetDatum(static_cast<int64>(stats->requests)),
                       Int64GetDatum(static_cast<int64>(stats->retries)),
                       run_log_elapsed(&log)};
    bool result_nulls[9] = {false, false, false, false, false, false, false, false, false};
    // Copy the result out of SPI's memory before SPI_finish frees it.
    HeapTuple tuple = heap_form_tuple(BlessTupleDesc(result_desc), result, result_nulls);
    MemoryContextDelete(run_context);
    Datum out = SPI_datumTransfer(HeapTupleGetDatum(tuple), false, -1);
    SPI_finish();
    PG_RETURN_DATUM(out);
}

PG_FUNCTION_INFO_V1(amplitude_sync_send_test_event);

// send_test_event(server name, OUT http_status int, OUT response text)
Datum amplitude_sync_send_test_event(PG_FUNCTION_ARGS) {
    if (PG_ARGISNULL(0))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("argument \"server\" must not be null")));
    TupleDesc result_desc;
    if (get_call_result_type(fcinfo, nullptr, &result_desc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "amplitude_sync: return type must be a row type");
    AmpConnection conn;
    load_connection(NameStr(*PG_GETARG_NAME(0)), &conn);

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
        TransportOptions options = EventRun::transport_options(conn);
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
