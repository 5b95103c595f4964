// The run loop behind every sending function. PostgreSQL work (SPI cursor,
// Datums, run history) happens here in frames without C++ objects; the C++
// run state lives on the heap, owned by a memory context whose reset
// callback deletes it, so an ERROR anywhere (cancel, statement_timeout, a
// bad row in the user's query) still closes every connection and frees
// every buffer.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "cxx_guard.hpp"
#include "delivery.hpp"
#include "event_encoder.hpp"
#include "http_transport.hpp"
#include "identify_encoder.hpp"
#include "value.hpp"

#include "datum_values.hpp"
#include "pg_headers.hpp"
#include "progress.hpp"
#include "role_scope.hpp"
#include "run_log.hpp"
#include "send_run.hpp"

using namespace amplitude_sync;

namespace {

// Rows fetched from the cursor at a time: large enough to amortise the
// executor round trip, small enough that memory does not follow row count.
constexpr long kFetchRows = 1000;
constexpr long kFetchRowsCommitting = 100;
constexpr long kFetchRowsMaterializing = 10000;

// The read/encode/send timings in sync_runs are measured on one row in this
// many and scaled up.
constexpr int kTimingSample = 16;

// The wait event pg_stat_activity shows while a run waits on Amplitude:
// "AmplitudeResponse" (PostgreSQL 17+ names extension wait events), else
// the generic "Extension".
uint32 amplitude_wait_event() {
#if PG_VERSION_NUM >= 170000
    static uint32 event = 0;
    if (event == 0) event = WaitEventExtensionNew("AmplitudeResponse");
    return event;
#else
    return PG_WAIT_EXTENSION;
#endif
}

}  // namespace

// How a long run is going, said to an interactive caller every
// amplitude_sync.progress_notice_interval seconds.
struct RunProgress {
    std::string label;                    // the function, or sync "name"
    int64 rows_read = 0;
    const DeliveryStats *stats = nullptr;  // the main channel's
    size_t in_flight = 0;                  // requests, over the run's channels
    TimestampTz last = 0;
};

namespace {

// Published for other sessions (run_progress) and, when due, said in a
// NOTICE; from inside the delivery (while it waits on Amplitude) as well as
// from the run loop. A NOTICE returns; should it raise (out of memory), the
// error is dropped here rather than unwound through C++ frames. Interrupts
// are held meanwhile: sending a NOTICE checks for them, and a cancel raised
// here would be lost; held, it stays pending for the delivery's
// interrupt_pending() and the run loop's CHECK_FOR_INTERRUPTS.
void report_progress(RunProgress *p) {
    if (!p->stats) return;
    progress_update(p->rows_read, static_cast<int64>(p->stats->sent), static_cast<int64>(p->stats->rejected),
                    static_cast<int64>(p->in_flight));
    if (amplitude_sync_progress_notice_interval <= 0) return;
    TimestampTz now = GetCurrentTimestamp();
    if (p->last == 0) p->last = now;
    if (!TimestampDifferenceExceeds(p->last, now, amplitude_sync_progress_notice_interval * 1000)) return;
    p->last = now;
    MemoryContext context = CurrentMemoryContext;
    HOLD_INTERRUPTS();
    uint32 held = InterruptHoldoffCount;  // an ERROR resets it to 0
    PG_TRY();
    {
        ereport(NOTICE, (errmsg("%s: %lld rows read, %llu sent, %llu rejected, %zu requests in flight",
                                p->label.c_str(), static_cast<long long>(p->rows_read),
                                static_cast<unsigned long long>(p->stats->sent),
                                static_cast<unsigned long long>(p->stats->rejected), p->in_flight),
                         errhidestmt(true)));
    }
    PG_CATCH();
    {
        MemoryContextSwitchTo(context);
        FlushErrorState();
        InterruptHoldoffCount = held;
    }
    PG_END_TRY();
    RESUME_INTERRUPTS();
}

// The core's transport, with the wait on Amplitude's answers reported as a
// wait event (wait_event_type Extension in pg_stat_activity) and the run's
// progress NOTICEs said while it waits.
class ReportingTransport final : public Transport {
public:
    ReportingTransport(std::unique_ptr<Transport> inner, RunProgress *progress)
        : inner_(std::move(inner)), progress_(progress) {}
    void start(size_t slot, const std::string &url, const std::string &content_type,
               const std::string &body) override {
        inner_->start(slot, url, content_type, body);
        if (!progress_) return;
        progress_->in_flight++;
        report_progress(progress_);
    }
    void wait(int timeout_ms, std::vector<std::pair<size_t, HttpResponse>> &done) override {
        size_t before = done.size();
        pgstat_report_wait_start(amplitude_wait_event());
        inner_->wait(timeout_ms, done);
        pgstat_report_wait_end();
        if (!progress_) return;
        progress_->in_flight -= done.size() - before;
        report_progress(progress_);
    }
    void advance(std::vector<std::pair<size_t, HttpResponse>> &done) override {
        size_t before = done.size();
        inner_->advance(done);
        if (progress_) progress_->in_flight -= done.size() - before;
    }

private:
    std::unique_ptr<Transport> inner_;
    RunProgress *progress_;  // or nullptr: no run to report on (flush_outbox)
};

// Everything C++ a run owns. Deleted by the memory-context callback.
struct SendRun {
    RunProgress progress;  // before the channels, whose transports report to it
    std::unique_ptr<RowEncoder> encoder;
    IdentifyEncoder *identify = nullptr;  // the encoder, when it is one
    std::unique_ptr<Channel> main;
    // amplitude_identify's "properties updated" events, sent beside the identifications.
    std::string properties_event;
    std::unique_ptr<Channel> events;
    Record record, event;
    Rejection rejection;
    // Saved syncs.
    bool incremental = false;
    bool append = false;  // an event sync: confirmed events are never resent
    bool preview = false;
    std::string signature;  // settings that shape the payload, part of the fingerprint
    uint64_t unchanged = 0;
    // Said once when the run starts (Amplitude would reset fields) and
    // when it ends (Amplitude changed data silently).
    std::vector<PlanWarning> plan_warnings;
    std::vector<std::string> silent_change_warnings;
    // Where the time goes (reported in sync_runs): encoding rows into JSON
    // (the delivery times its own work, including waiting on Amplitude).
    std::chrono::steady_clock::duration encode_time{};

    // The worst state of the channels: interrupted, stopped, failed, running.
    DeliveryState state() const {
        DeliveryState s = main->delivery.state();
        if (events && s == DeliveryState::kRunning) s = events->delivery.state();
        if (events && events->delivery.state() == DeliveryState::kInterrupted) s = DeliveryState::kInterrupted;
        return s;
    }
    StopReason stop_reason() const {
        return main->delivery.state() != DeliveryState::kRunning || !events ? main->delivery.stop_reason()
                                                                              : events->delivery.stop_reason();
    }
    const std::string &error() const {
        return main->delivery.state() != DeliveryState::kRunning || !events ? main->delivery.error()
                                                                              : events->delivery.error();
    }
};


SendRun *make_send_run(const AmpConnection &conn, const SendSpec &spec,
                       const std::vector<ColumnInput> &columns) {
    const CallOptions &options = spec.options;
    auto run = std::make_unique<SendRun>();
    run->incremental = spec.sync_id != 0;
    run->append = options.target == Target::kEvents;
    run->preview = spec.preview;
    run->signature = std::string(options.endpoint->path) + '\x1f' +
                      (options.properties_event ? options.properties_event : "");
    // Two channels (identifications and their events) share the project's cap.
    double cap = conn.max_events_per_second / (options.properties_event ? 2.0 : 1.0);
    DeliveryLimits limits =
        delivery_limits(*options.endpoint, static_cast<size_t>(options.max_records), cap, conn.rate_window_ms);
    long pause_ms = options.endpoint->throttle_pause_ms;
    if (options.target == Target::kEvents) {
        EventOptions event_options;
        event_options.min_id_length = options.min_id_length;
        auto plan = plan_event_columns(columns);
        run->plan_warnings = event_plan_warnings(plan, options.endpoint == &kBatchEndpoint);
        run->encoder = std::make_unique<EventEncoder>(std::move(plan), event_options);
        run->main = std::make_unique<Channel>(std::make_unique<EventsFormat>(conn.api_key, options.min_id_length),
                                              conn, options.endpoint->path, limits, pause_ms, &run->progress);
        run->progress.stats = &run->main->delivery.stats();
        return run.release();
    }
    IdentifyOptions identify;
    identify.object = options.target == Target::kUser     ? ProfileObject::kUser
                      : options.target == Target::kDevice ? ProfileObject::kDevice
                                                          : ProfileObject::kGroup;
    identify.operations = parse_operations(spec.operations_json ? spec.operations_json : "", identify.object);
    identify.nulls_unset = options.nulls_unset;
    identify.min_id_length = options.min_id_length;
    // A saved sync sends a row only when it changed: $add and the like
    // would be skipped or applied twice.
    identify.idempotent_only = spec.saved_sync;
    auto plan = plan_identify_columns(columns, identify);
    run->plan_warnings = identify_plan_warnings(plan);
    auto encoder = std::make_unique<IdentifyEncoder>(std::move(plan), identify);
    run->identify = encoder.get();
    run->encoder = std::move(encoder);
    run->main = std::make_unique<Channel>(std::make_unique<IdentificationFormat>(conn.api_key), conn,
                                          options.endpoint->path, limits, pause_ms, &run->progress);
    run->progress.stats = &run->main->delivery.stats();
    if (options.properties_event) {
        run->properties_event = options.properties_event;
        DeliveryLimits event_limits =
            delivery_limits(kHttpApiEndpoint, static_cast<size_t>(kHttpApiEndpoint.max_records), cap,
                            conn.rate_window_ms);
        run->events = std::make_unique<Channel>(std::make_unique<EventsFormat>(conn.api_key, options.min_id_length),
                                                conn, kHttpApiEndpoint.path, event_limits,
                                                kHttpApiEndpoint.throttle_pause_ms, &run->progress);
    }
    return run.release();
}

// The synthetic event that makes an identify update visible at once: the
// same user_properties, on an event of the chosen type, in run->event
// (empty when the identification set nothing an event can carry).
void build_properties_event(SendRun *run) {
    Record &e = run->event;
    e = Record{};
    const std::string &properties = run->identify->last_properties();
    if (properties.empty()) return;
    e.row_number = run->record.row_number;
    e.user_id = run->record.user_id;
    e.device_id = run->record.device_id;
    e.event_type = run->properties_event;
    e.json = "{\"event_type\":";
    append_json_string(e.json, run->properties_event);
    for (const std::string *id : {&e.user_id, &e.device_id}) {
        if (id->empty()) continue;
        e.json += id == &e.user_id ? ",\"user_id\":" : ",\"device_id\":";
        append_json_string(e.json, *id);
    }
    e.json.append(",\"user_properties\":").append(properties);
    // Deterministic: the same row re-sent within 7 days is one event.
    e.insert_id = derive_insert_id(e.json);
    e.json.append(",\"insert_id\":\"").append(e.insert_id).append("\"}");
}

// What became of a row of a saved sync (and of a previewed row).
// kStillRejected: rejected before for a reason only the row can change, and
// unchanged since: not sent, not logged again (counted as unchanged).
enum class RowAction { kRejected, kUnchanged, kCreate, kUpdate, kStillRejected };

// What a saved sync's state holds for a row's key.
struct StoredState {
    const unsigned char *fingerprint;  // NULL: nothing stored
    const char *rejected_reason;       // NULL: Amplitude confirmed it
};

bool same_fingerprint(const std::array<unsigned char, 16> &fingerprint, const StoredState &stored) {
    return stored.fingerprint && std::equal(fingerprint.begin(), fingerprint.end(), stored.fingerprint);
}

// A rejection a saved sync remembers: keyed, with the fingerprint of what
// was rejected (the payload, or the row when it could not be encoded).
void remember_rejection(Rejection &rejection, const char *state_key, const std::array<unsigned char, 16> &fingerprint) {
    if (!state_key || !*state_key) return;
    rejection.record.state_key = state_key;
    rejection.record.fingerprint = fingerprint;
}

// Encodes a row and, unless previewing, queues it. For saved syncs a row
// whose payload Amplitude already confirmed is skipped, and so is a row
// rejected before and unchanged since. The encoded record (or the
// rejection) stays in run->record / run->rejection for a preview.
RowAction encode_and_queue(SendRun *run, uint64_t row_number, const Value *values, size_t value_count,
                           const char *state_key, const StoredState &stored) {
    // An append sync sends an event once for its life: an insert_id that
    // Amplitude confirmed is never sent again, whatever its row became
    // (Amplitude would drop it within 7 days and duplicate it after).
    if (run->incremental && run->append && stored.fingerprint && !stored.rejected_reason) {
        run->unchanged++;
        return RowAction::kUnchanged;
    }
    // Timed on one row in kTimingSample (clock reads are not free), scaled up.
    bool timed = row_number % kTimingSample == 0;
    auto started = timed ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    bool encoded = run->encoder->encode_row(row_number, values, run->record, run->rejection);
    if (timed) run->encode_time += (std::chrono::steady_clock::now() - started) * kTimingSample;
    if (!encoded) {
        if (run->incremental) {
            auto fingerprint = row_fingerprint(values, value_count, run->signature);
            if (stored.rejected_reason && same_fingerprint(fingerprint, stored)) {
                run->unchanged++;
                return RowAction::kStillRejected;
            }
            remember_rejection(run->rejection, state_key, fingerprint);
        }
        if (!run->preview) run->main->delivery.reject(std::move(run->rejection));
        return RowAction::kRejected;
    }
    RowAction action = RowAction::kCreate;
    if (run->incremental) {
        auto fingerprint = record_fingerprint(run->record.json, run->signature);
        if (same_fingerprint(fingerprint, stored)) {
            run->unchanged++;
            return stored.rejected_reason ? RowAction::kStillRejected : RowAction::kUnchanged;
        }
        if (!state_key || !*state_key) {
            // Only happens for events: the ledger needs the insert_id column.
            run->rejection = Rejection{};
            run->rejection.record = run->record;
            run->rejection.field = "insert_id";
            run->rejection.reason = "insert_id is missing: an append sync remembers events by their insert_id";
            if (!run->preview) run->main->delivery.reject(std::move(run->rejection));
            return RowAction::kRejected;
        }
        action = stored.fingerprint && !stored.rejected_reason ? RowAction::kUpdate : RowAction::kCreate;
        // Amplitude's verdict on this payload is remembered either way.
        run->record.state_key = state_key;
        run->record.fingerprint = fingerprint;
    }
    if (run->events) build_properties_event(run);
    if (run->preview) return action;
    if (run->events && !run->event.json.empty()) run->events->delivery.add(std::move(run->event));
    run->main->delivery.add(std::move(run->record));
    return action;
}

void finish_run(SendRun *run) {
    run->main->delivery.finish();
    if (run->events) run->events->delivery.finish();
}

double seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::vector<ColumnInput> column_inputs(TupleDesc desc, const ColumnReader *readers, int natts) {
    std::vector<ColumnInput> inputs;
    for (int i = 0; i < natts; ++i)
        inputs.push_back({NameStr(TupleDescAttr(desc, i)->attname), readers[i].category});
    return inputs;
}

void store_outcomes(RunLog *log, SendRun *run, const SendSpec *spec) {
    if (spec->sync_id) run_log_remember_rejections(spec->sync_id, &run->main->delivery.rejections());
    run_log_store_rejections(log, &run->main->delivery.rejections());
    if (run->events) run_log_store_rejections(log, &run->events->delivery.rejections());
    if (spec->sync_id) run_log_store_confirmed(spec->sync_id, &run->main->delivery.confirmed());
}

const char *action_name(RowAction action) {
    switch (action) {
        case RowAction::kRejected: return "reject";
        case RowAction::kUnchanged: return "unchanged";
        case RowAction::kCreate: return "create";
        case RowAction::kUpdate: return "update";
        case RowAction::kStillRejected: return "reject";
    }
    return "";
}

// One preview row: what the next run would do with a record (endpoint and
// payload as they would be sent).
void put_preview_row(TupleDesc desc, Tuplestorestate *store, uint64 row_number, const char *record_key,
                     RowAction action, const char *endpoint, const std::string *payload, const char *reason) {
    Datum values[6];
    bool nulls[6] = {false, record_key == nullptr, false, false, payload->empty(), reason == nullptr};
    values[0] = Int64GetDatum(static_cast<int64>(row_number));
    values[1] = record_key ? CStringGetTextDatum(record_key) : (Datum)0;
    values[2] = CStringGetTextDatum(action_name(action));
    values[3] = CStringGetTextDatum(endpoint);
    values[4] = payload->empty() ? (Datum)0 : PointerGetDatum(cstring_to_text_with_len(payload->data(), static_cast<int>(payload->size())));
    values[5] = reason ? CStringGetTextDatum(reason) : (Datum)0;
    tuplestore_putvalues(store, desc, values, nulls);
}

// The preview rows of one source row: the record (a row still rejected shows
// the reason it was rejected for) and the properties event sent beside it.
void put_preview_rows(const SendSpec *spec, TupleDesc desc, Tuplestorestate *store, int64 row_number,
                      const char *record_key, RowAction action, const SendRun *run, const char *stored_reason,
                      int64 *events_previewed) {
    if (action == RowAction::kUnchanged && !spec->include_unchanged) return;
    bool rejected = action == RowAction::kRejected;
    const char *reason = rejected                               ? run->rejection.reason.c_str()
                         : action == RowAction::kStillRejected ? stored_reason
                                                               : nullptr;
    put_preview_row(desc, store, static_cast<uint64>(row_number), record_key, action, spec->options.endpoint->path,
                    rejected ? &run->rejection.record.json : &run->record.json, reason);
    bool sent = action == RowAction::kCreate || action == RowAction::kUpdate;
    if (sent && run->events && !run->event.json.empty()) {
        put_preview_row(desc, store, static_cast<uint64>(row_number), record_key, RowAction::kCreate,
                        kHttpApiEndpoint.path, &run->event.json, nullptr);
        ++*events_previewed;
    }
}

// Raises the error for a run Amplitude refused to take at all (API key, 403).
[[noreturn]] void raise_stopped_run(const AmpConnection *conn, const char *error, bool bad_key, int64 rows_read,
                                    uint64_t sent) {
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


RetryPolicy retry_policy(const AmpConnection &conn, long endpoint_throttle_pause_ms) {
    RetryPolicy p;
    p.max_attempts = conn.max_attempts;
    p.max_retry_ms = conn.max_retry_seconds * 1000L;
    p.backoff_base_ms = conn.retry_backoff_ms;
    p.throttle_pause_ms = conn.throttle_pause_ms > 0 ? conn.throttle_pause_ms : endpoint_throttle_pause_ms;
    // A project-wide 429 waits longer (60 s by default); the option scales both.
    if (conn.throttle_pause_ms > 0) p.project_throttle_pause_ms = 2L * conn.throttle_pause_ms;
    return p;
}

Channel::Channel(std::unique_ptr<PayloadFormat> f, const AmpConnection &conn, const std::string &path,
                 DeliveryLimits limits, long throttle_pause_ms, RunProgress *progress)
    : format(std::move(f)),
      transport(std::make_unique<ReportingTransport>(
          make_curl_transport(static_cast<size_t>(conn.max_concurrency), transport_options(conn)), progress)),
      delivery(*format, *transport, std::string(conn.base_url) + path, limits,
               retry_policy(conn, throttle_pause_ms), static_cast<size_t>(conn.max_concurrency),
               send_run_interrupt_pending) {}

bool send_run_interrupt_pending() { return QueryCancelPending != 0 || ProcDiePending != 0; }

// WARNINGs return: the C++ state they read is the run's, on the heap.
void raise_plan_warnings(const SendRun *run) {
    for (size_t i = 0; i < run->plan_warnings.size(); ++i) {
        const PlanWarning &w = run->plan_warnings[i];
        ereport(w.notice ? NOTICE : WARNING, (errmsg("%s", w.message.c_str()), w.detail.empty() ? 0 : errdetail("%s", w.detail.c_str()),
                          w.hint.empty() ? 0 : errhint("%s", w.hint.c_str())));
    }
}

bool options_are_httpapi(const SendSpec *spec) { return spec->options.endpoint == &kHttpApiEndpoint; }

TransportOptions transport_options(const AmpConnection &conn) {
    TransportOptions t;
    t.connect_timeout_ms = conn.connect_timeout_ms;
    t.request_timeout_ms = conn.request_timeout_ms;
    t.allow_plain_http = conn.allow_plain_http;
    t.verify_tls = conn.verify_tls;
    return t;
}

namespace {

void add_elapsed(instr_time *total, instr_time started, int times) {
    instr_time now;
    INSTR_TIME_SET_CURRENT(now);
    INSTR_TIME_SUBTRACT(now, started);
    for (int i = 0; i < times; ++i) INSTR_TIME_ADD(*total, now);
}

// Everything that executes the source (planning, each fetch, reading it to
// the end) happens in this scope: as the sync's owner or the caller, with
// the sync's search_path or the caller's, and read-only.
void enter_source_scope(const SendSpec *spec, RoleScope *scope) {
    enter_role_scope(scope, spec->run_as, spec->source_search_path ? spec->source_search_path : namespace_search_path,
                     true);
}

// Where a run's rows come from: the cursor on the source or, once a run
// that commits as it goes has committed, the rest of the source read into a
// tuplestore in the source's scope (a cursor that survived the commit would
// be read to the end at commit, by PostgreSQL, as whoever commits).
struct RowSource {
    Portal portal;
    Tuplestorestate *store;
    TupleTableSlot *slot;
    TupleDesc desc;
    ColumnReader *readers;
};

// What the run's memory-context callback releases. (Not the store of a
// materialized source: a callback may run after the memory of a sibling or
// child context is gone; the store is ended explicitly, see RunSegments.)
struct RunResources {
    SendRun *run;
};

void release_run_resources(void *arg) {
    delete static_cast<RunResources *>(arg)->run;
    progress_end();
}

// Prepares the query and opens a cursor on it, in the source's scope.
void open_source(const SendSpec *spec, RowSource *source) {
    RoleScope scope;
    enter_source_scope(spec, &scope);
    SPIPlanPtr plan = SPI_prepare_cursor(spec->query, 0, nullptr, 0);
    if (!plan)
        ereport(ERROR, (errcode(ERRCODE_SYNTAX_ERROR), errmsg("could not prepare the query: %s",
                                                             SPI_result_code_string(SPI_result))));
    if (!SPI_is_cursor_plan(plan))
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("the query must be a single statement that returns rows"),
                        errhint("Pass a SELECT (or VALUES, or TABLE name).")));
    source->portal = SPI_cursor_open(nullptr, plan, nullptr, nullptr, false);
    leave_role_scope(&scope);
    source->store = nullptr;
    source->slot = nullptr;
    source->desc = CreateTupleDescCopy(source->portal->tupDesc);
    source->readers = static_cast<ColumnReader *>(palloc0(sizeof(ColumnReader) * (source->desc->natts + 1)));
    for (int i = 0; i < source->desc->natts; ++i)
        init_column_reader(&source->readers[i], TupleDescAttr(source->desc, i)->atttypid);
}

// Fetches the next rows from the cursor, in the source's scope.
SPITupleTable *fetch_source_rows(const SendSpec *spec, RowSource *source, long count, uint64 *fetched) {
    RoleScope scope;
    enter_source_scope(spec, &scope);
    SPI_cursor_fetch(source->portal, true, count);
    leave_role_scope(&scope);
    *fetched = SPI_processed;
    return SPI_tuptable;
}

// Reads the rest of the source into a tuplestore that outlives commits.
void materialize_source(const SendSpec *spec, RowSource *source, MemoryContext context) {
    // The store outlives commits (interXact) and is ended by the run, or by
    // run_sync when the run fails (spec->segments->materialized).
    MemoryContext outer = MemoryContextSwitchTo(MemoryContextGetParent(context));
    source->store = tuplestore_begin_heap(false, true, work_mem);
    spec->segments->materialized = source->store;
    MemoryContextSwitchTo(context);
    source->slot = MakeSingleTupleTableSlot(source->desc, &TTSOpsMinimalTuple);
    MemoryContextSwitchTo(outer);
    uint64 fetched;
    do {
        SPITupleTable *table = fetch_source_rows(spec, source, kFetchRowsMaterializing, &fetched);
        // Values stored out of line are fetched now: after the commit no
        // snapshot would let them be read.
        for (uint64 r = 0; r < fetched; ++r) {
            HeapTuple flat = toast_flatten_tuple(table->vals[r], source->desc);
            tuplestore_puttuple(source->store, flat);
            heap_freetuple(flat);
        }
        SPI_freetuptable(table);
    } while (fetched == static_cast<uint64>(kFetchRowsMaterializing));
    SPI_cursor_close(source->portal);
    source->portal = nullptr;
}

}  // namespace

void check_source_columns(const SendSpec *spec) {
    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    RowSource source;
    open_source(spec, &source);
    TupleDesc desc = source.desc;
    bool has_insert_id = false;
    for (int i = 0; i < desc->natts; ++i)
        has_insert_id |= strcmp(NameStr(TupleDescAttr(desc, i)->attname), "insert_id") == 0;
    AmpConnection conn{};
    conn.api_key = "";
    conn.base_url = "";
    conn.max_concurrency = 1;
    // Building the run plans the columns and raises the mapper's errors.
    SendRun *run = nullptr;
    AMP_CXX(run = make_send_run(conn, *spec, column_inputs(desc, source.readers, desc->natts)));
    raise_plan_warnings(run);
    AMP_CXX(delete run);
    if (spec->options.target == Target::kEvents && !has_insert_id)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
                        errmsg("an event sync needs an \"insert_id\" column"),
                        errdetail("An append sync remembers the events it sent by their insert_id, "
                                  "so each is sent once for the life of the sync."),
                        errhint("Add a unique, stable key, for example: 'order-' || id AS insert_id.")));
    SPI_cursor_close(source.portal);
    SPI_finish();
}

Datum execute_send_run(FunctionCallInfo fcinfo, const AmpConnection *conn, const SendSpec *spec) {
    TupleDesc result_desc = spec->report_desc;
    if (!result_desc && get_call_result_type(fcinfo, nullptr, &result_desc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "amplitude_sync: return type must be a row type");
    Tuplestorestate *preview_store = nullptr;
    if (spec->preview) {
        MemoryContext outer = MemoryContextSwitchTo(spec->rsinfo->econtext->ecxt_per_query_memory);
        preview_store = tuplestore_begin_heap(true, false, work_mem);
        result_desc = CreateTupleDescCopy(result_desc);
        MemoryContextSwitchTo(outer);
        spec->rsinfo->returnMode = SFRM_Materialize;
        spec->rsinfo->setResult = preview_store;
        spec->rsinfo->setDesc = result_desc;
    }

    bool own_spi = spec->segments == nullptr;
    if (own_spi && SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    RowSource source;
    open_source(spec, &source);
    TupleDesc desc = source.desc;
    ColumnReader *readers = source.readers;
    int natts = desc->natts;
    // A saved sync's query ends with the stored fingerprint, the stored
    // rejection reason and the record key.
    int payload_natts = spec->sync_id ? natts - 3 : natts;

    // The C++ run state, freed with this context on success and on error.
    MemoryContext run_context = AllocSetContextCreate(CurrentMemoryContext, "amplitude_sync run",
                                                      ALLOCSET_DEFAULT_SIZES);
    MemoryContextCallback *cleanup = static_cast<MemoryContextCallback *>(
        MemoryContextAllocZero(run_context, sizeof(MemoryContextCallback)));
    RunResources *resources = static_cast<RunResources *>(MemoryContextAllocZero(run_context, sizeof(RunResources)));
    SendRun *run = nullptr;
    AMP_CXX(run = make_send_run(*conn, *spec, column_inputs(desc, readers, payload_natts));
            run->progress.label = spec->sync_id ? "sync \"" + std::string(spec->sync_name) + "\""
                                                : std::string(spec->function_name));
    if (spec->preview) run->progress.stats = nullptr;  // nothing is sent: no progress to tell
    resources->run = run;
    raise_plan_warnings(run);
    cleanup->func = release_run_resources;
    cleanup->arg = resources;
    MemoryContextRegisterResetCallback(run_context, cleanup);

    RunLog own_log;
    RunLog *log = spec->log;
    if (!spec->preview && !log) {
        log = &own_log;
        run_log_start(log, spec->function_name, conn->server_name, spec->options.endpoint->path, spec->sync_id,
                      spec->sync_name, "running", nullptr);
    }
    if (!spec->preview) progress_begin(log->run_id, run->progress.label.c_str());
    TimestampTz last_commit = GetCurrentTimestamp();

    Datum *datums = static_cast<Datum *>(palloc(sizeof(Datum) * (natts + 1)));
    bool *nulls = static_cast<bool *>(palloc(sizeof(bool) * (natts + 1)));
    Value *values = static_cast<Value *>(palloc0(sizeof(Value) * (natts + 1)));
    MemoryContext row_context = AllocSetContextCreate(run_context, "amplitude_sync row",
                                                      ALLOCSET_DEFAULT_SIZES);
    int64 rows_read = 0;
    int64 counts[5] = {0, 0, 0, 0, 0};  // by RowAction
    int64 events_previewed = 0;         // properties events a run would send beside
    instr_time read_time;            // fetching rows and reading their values
    INSTR_TIME_SET_ZERO(read_time);
    bool more = true;
    while (more && run->state() == DeliveryState::kRunning) {
        CHECK_FOR_INTERRUPTS();
        // A run that commits as it goes fetches less at a time, so it can
        // commit about once a second even when Amplitude is slow.
        long fetch_rows = spec->segments ? kFetchRowsCommitting : kFetchRows;
        instr_time read_started;
        INSTR_TIME_SET_CURRENT(read_started);
        SPITupleTable *table = nullptr;
        uint64 fetched = 0;
        if (source.portal) {
            table = fetch_source_rows(spec, &source, fetch_rows, &fetched);
            more = fetched == static_cast<uint64>(fetch_rows);
        } else {
            more = true;
            fetched = 0;
        }
        add_elapsed(&read_time, read_started, 1);
        for (uint64 r = 0; (table ? r < fetched : more) && run->state() == DeliveryState::kRunning; ++r) {
            MemoryContext outer = MemoryContextSwitchTo(row_context);
            bool timed = (rows_read + 1) % kTimingSample == 0;
            if (timed) INSTR_TIME_SET_CURRENT(read_started);
            if (table) {
                heap_deform_tuple(table->vals[r], desc, datums, nulls);
            } else {
                // Materialized: up to fetch_rows rows from the tuplestore. A
                // row read back from disk is palloc'd and freed by the slot at
                // the next read: it must not live in the per-row context.
                MemoryContextSwitchTo(outer);
                bool got = r < static_cast<uint64>(fetch_rows) &&
                           tuplestore_gettupleslot(source.store, true, false, source.slot);
                MemoryContextSwitchTo(row_context);
                if (!got) {
                    if (r < static_cast<uint64>(fetch_rows)) more = false;
                    MemoryContextSwitchTo(outer);
                    break;
                }
                slot_getallattrs(source.slot);
                memcpy(datums, source.slot->tts_values, sizeof(Datum) * natts);
                memcpy(nulls, source.slot->tts_isnull, sizeof(bool) * natts);
            }
            for (int i = 0; i < payload_natts; ++i)
                read_column_value(&readers[i], datums[i], nulls[i], &values[i]);
            if (timed) add_elapsed(&read_time, read_started, kTimingSample);
            StoredState stored = {nullptr, nullptr};
            const char *record_key = nullptr;
            if (spec->sync_id) {
                if (!nulls[natts - 3]) stored.fingerprint = DatumGetUUIDP(datums[natts - 3])->data;
                if (!nulls[natts - 2]) stored.rejected_reason = TextDatumGetCString(datums[natts - 2]);
                if (!nulls[natts - 1]) record_key = TextDatumGetCString(datums[natts - 1]);
            }
            ++rows_read;
            run->progress.rows_read = rows_read;
            RowAction action = RowAction::kCreate;
            AMP_CXX(action = encode_and_queue(run, static_cast<uint64_t>(rows_read), values,
                                              static_cast<size_t>(payload_natts), record_key, stored));
            counts[static_cast<int>(action)]++;
            if (spec->preview) put_preview_rows(spec, result_desc, preview_store, rows_read, record_key, action,
                                                run, stored.rejected_reason, &events_previewed);
            MemoryContextSwitchTo(outer);
            MemoryContextReset(row_context);
        }
        if (table) SPI_freetuptable(table);
        report_progress(&run->progress);
        if (!spec->preview) store_outcomes(log, run, spec);
        if (spec->counts) {
            const DeliveryStats &so_far = run->main->delivery.stats();
            *spec->counts = {rows_read, static_cast<int64>(so_far.sent), static_cast<int64>(so_far.rejected),
                             static_cast<int64>(run->unchanged)};
        }
        // About once a second: publish the counts, keep what Amplitude confirmed.
        if (spec->segments && more && TimestampDifferenceExceeds(last_commit, GetCurrentTimestamp(), 1000)) {
            run_log_progress(log, rows_read, static_cast<int64>(run->unchanged), &run->main->delivery.stats());
            if (source.portal) materialize_source(spec, &source, run_context);
            spec->segments->commit(spec->segments);
            last_commit = GetCurrentTimestamp();
        }
    }
    if (source.portal) SPI_cursor_close(source.portal);

    if (spec->preview) {
        // Census's "recap of what will happen".
        // The properties events go to /2/httpapi beside the identifications.
        const char *events_part =
            spec->options.properties_event
                ? psprintf(" and send %lld \"%s\" events", static_cast<long long>(events_previewed),
                           spec->options.properties_event)
                : "";
        ereport(NOTICE, (errmsg("sync \"%s\" would create %lld, update %lld and reject %lld records%s; "
                                "%lld are unchanged",
                                spec->sync_name, static_cast<long long>(counts[2]), static_cast<long long>(counts[3]),
                                static_cast<long long>(counts[0] + counts[4]), events_part,
                                static_cast<long long>(counts[1])),
                         counts[4] ? errdetail("%lld of the rejected are rows rejected before and unchanged since.",
                                               static_cast<long long>(counts[4]))
                                   : 0));
        MemoryContextDelete(run_context);
        if (own_spi) SPI_finish();
        return (Datum)0;
    }

    AMP_CXX(finish_run(run); run->silent_change_warnings = run->encoder->silent_changes().warnings());
    for (size_t i = 0; i < run->silent_change_warnings.size(); ++i)
        ereport(WARNING, (errmsg("%s", run->silent_change_warnings[i].c_str())));
    if (spec->counts) {
        const DeliveryStats &so_far = run->main->delivery.stats();
        *spec->counts = {rows_read, static_cast<int64>(so_far.sent), static_cast<int64>(so_far.rejected),
                         static_cast<int64>(run->unchanged)};
    }
    if (run->state() == DeliveryState::kInterrupted) {
        CHECK_FOR_INTERRUPTS();
        ereport(ERROR, (errcode(ERRCODE_QUERY_CANCELED), errmsg("canceling statement due to user request")));
    }
    store_outcomes(log, run, spec);

    const DeliveryStats *stats = &run->main->delivery.stats();
    if (run->state() == DeliveryState::kStopped)
        raise_stopped_run(conn, run->error().c_str(), run->stop_reason() == StopReason::kBadApiKey, rows_read,
                          stats->sent);

    // Requests and retries count the synthetic events' too; sent, rejected,
    // not_sent and unchanged count rows, so they add up to rows_read.
    uint64_t requests = stats->requests, retries = stats->retries, pacing_wait_ms = stats->pacing_wait_ms;
    if (run->events) {
        requests += run->events->delivery.stats().requests;
        retries += run->events->delivery.stats().retries;
        pacing_wait_ms = std::max(pacing_wait_ms, run->events->delivery.stats().pacing_wait_ms);
    }
    int64 unchanged = static_cast<int64>(run->unchanged);
    bool failed = run->state() == DeliveryState::kFailed;
    char *error = nullptr;
    // (more: the source may hold rows the run did not read.)
    if (failed)
        error = more ? psprintf("%s; the run stopped after reading %lld rows (the rest of the query was not read)",
                                run->error().c_str(), static_cast<long long>(rows_read))
                     : psprintf("%s; the run stopped after reading all %lld rows of the query",
                                run->error().c_str(), static_cast<long long>(rows_read));
    DeliveryStats logged = *stats;
    logged.requests = requests;
    logged.retries = retries;
    logged.pacing_wait_ms = pacing_wait_ms;
    RunTimings timings = {INSTR_TIME_GET_DOUBLE(read_time), 0, 0};
    AMP_CXX(timings.encode_seconds = seconds(run->encode_time);
            timings.send_seconds = seconds(run->main->delivery.network_time() +
                                           (run->events ? run->events->delivery.network_time()
                                                        : std::chrono::steady_clock::duration{})));
    run_log_finish(log, failed ? "failed" : "succeeded", rows_read, unchanged, &logged, error, &timings);
    if (failed) {
        char *detail = psprintf("Run %lld: %llu rows were sent, %llu rejected and %llu not sent.",
                                static_cast<long long>(log->run_id), static_cast<unsigned long long>(stats->sent),
                                static_cast<unsigned long long>(stats->rejected),
                                static_cast<unsigned long long>(stats->not_sent));
        char *hint = psprintf("See amplitude_sync.rejected_records for run %lld; running it again resends "
                              "nothing twice.", static_cast<long long>(log->run_id));
        // A saved sync's run raises, after its record is committed, so that
        // pg_cron and every caller see the failure. A one-shot call cannot
        // commit (it runs in the caller's transaction): it warns and returns
        // status "failed", so its record and not-sent rows survive.
        if (spec->segments) {
            spec->segments->commit(spec->segments);
            ereport(ERROR, (errcode(ERRCODE_CONNECTION_FAILURE),
                            errmsg("sync \"%s\" failed: %s", spec->sync_name, run->error().c_str()),
                            errdetail("%s", detail), errhint("%s", hint)));
        }
        ereport(WARNING, (errmsg("amplitude_sync run failed: %s", run->error().c_str()), errdetail("%s", detail),
                          errhint("%s", hint)));
    }

    // Pacing that held most of the run back on /2/httpapi: /batch allows
    // 1,000 events per second and ID instead of 30.
    double elapsed_ms = static_cast<double>(GetCurrentTimestamp() - log->started_at) / 1000.0;
    if (options_are_httpapi(spec) && stats->id_pacing_wait_ms > 1000 && stats->id_pacing_wait_ms * 2 > elapsed_ms)
        ereport(NOTICE, (errmsg("pacing held the run back most of its time: Amplitude takes at most %.0f events "
                                "per second of one user or device on %s",
                                kHttpApiEndpoint.per_id_events_per_second, kHttpApiEndpoint.path),
                         errdetail("Per-ID pacing held the run back %.1f s of %.1f s.",
                                   static_cast<double>(stats->id_pacing_wait_ms) / 1000.0, elapsed_ms / 1000.0),
                         errhint("Send heavy users' events with api => 'batch' (%.0f per second and ID).",
                                 kBatchEndpoint.per_id_events_per_second)));

    // A saved sync's run that rejected rows says so: its status alone
    // ("succeeded": everything was accounted for) would hide them.
    if (spec->sync_id && stats->rejected > 0)
        ereport(WARNING, (errmsg("sync \"%s\" rejected %llu of %lld rows", spec->sync_name,
                                 static_cast<unsigned long long>(stats->rejected), static_cast<long long>(rows_read)),
                          errdetail("The reasons are in amplitude_sync.rejected_records, run %lld.",
                                    static_cast<long long>(log->run_id)),
                          errhint("Fix the rows, or the sync, and run it again: rows rejected are retried.")));

    Datum result[10] = {Int64GetDatum(log->run_id),
                        CStringGetTextDatum(failed ? "failed" : "succeeded"),
                        Int64GetDatum(rows_read),
                        Int64GetDatum(static_cast<int64>(stats->sent)),
                        Int64GetDatum(static_cast<int64>(stats->rejected)),
                        Int64GetDatum(static_cast<int64>(stats->not_sent)),
                        Int64GetDatum(unchanged),
                        Int64GetDatum(static_cast<int64>(requests)),
                        Int64GetDatum(static_cast<int64>(retries)),
                        run_log_elapsed(log)};
    bool result_nulls[10] = {false, false, false, false, false, false, false, false, false, false};
    HeapTuple tuple = heap_form_tuple(BlessTupleDesc(result_desc), result, result_nulls);
    if (source.store) {
        tuplestore_end(source.store);
        spec->segments->materialized = nullptr;
    }
    MemoryContextDelete(run_context);
    // Copy the result out of SPI's memory before SPI_finish frees it.
    Datum out = SPI_datumTransfer(HeapTupleGetDatum(tuple), false, -1);
    if (own_spi) SPI_finish();
    return out;
}
