// The run loop behind every sending function. PostgreSQL work (SPI cursor,
// Datums, run history) happens here in frames without C++ objects; the C++
// run state lives on the heap, owned by a memory context whose reset
// callback deletes it, so an ERROR anywhere (cancel, statement_timeout, a
// bad row in the user's query) still closes every connection and frees
// every buffer.
#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cxx_guard.hpp"
#include "delivery.hpp"
#include "event_encoder.hpp"
#include "http_transport.hpp"
#include "identify_encoder.hpp"
#include "state_index.hpp"
#include "value.hpp"

#include "datum_values.hpp"
#include "pg_headers.hpp"
#include "progress.hpp"
#include "role_scope.hpp"
#include "row_receiver.hpp"
#include "run_log.hpp"
#include "send_run.hpp"

using namespace amplitude_sync;

bool cursor_type_supported(Oid type) {
    switch (type) {
        case INT2OID: case INT4OID: case INT8OID: case DATEOID: case TIMESTAMPOID: case TIMESTAMPTZOID: return true;
        default: return false;
    }
}

bool cursor_type_is_time(Oid type) { return type == DATEOID || type == TIMESTAMPOID || type == TIMESTAMPTZOID; }

int64 cursor_value(Oid type, Datum value) {
    switch (type) {
        case INT2OID: return DatumGetInt16(value);
        case INT4OID: return DatumGetInt32(value);
        case DATEOID: {
            DateADT d = DatumGetDateADT(value);
            if (DATE_IS_NOBEGIN(d)) return PG_INT64_MIN;
            if (DATE_IS_NOEND(d)) return PG_INT64_MAX;
            return static_cast<int64>(d) * USECS_PER_DAY;
        }
        default: return DatumGetInt64(value);  // int8, timestamp, timestamptz (microseconds)
    }
}

Datum cursor_datum(Oid type, int64 value) {
    switch (type) {
        case INT2OID: return Int16GetDatum(static_cast<int16>(Max(Min(value, (int64)PG_INT16_MAX), (int64)PG_INT16_MIN)));
        case INT4OID: return Int32GetDatum(static_cast<int32>(Max(Min(value, (int64)PG_INT32_MAX), (int64)PG_INT32_MIN)));
        case DATEOID: {
            // The day that holds the instant (floor).
            int64 days = value / USECS_PER_DAY - (value % USECS_PER_DAY < 0 ? 1 : 0);
            return DateADTGetDatum(static_cast<DateADT>(Max(Min(days, (int64)PG_INT32_MAX - 1), (int64)PG_INT32_MIN + 1)));
        }
        default: return Int64GetDatum(value);
    }
}

namespace {

// Rows fetched from the cursor at a time: large enough to amortise the
// executor round trip, small enough that memory does not follow row count.
constexpr long kFetchRows = 1000;
constexpr long kFetchRowsCommitting = 100;

// A sync's state is loaded in two passes (count the keys, then fill), so
// the load never holds more than the compact set (state_index.hpp). The
// count needs no query of its own: it is made with the buckets of this many
// records (16 MB while counting more than 65,536 keys; a smaller count keeps
// the keys' buckets alone) and narrowed to the number counted.
constexpr size_t kStateCountBound = static_cast<size_t>(1) << 25;

// The rows of the source that a run must still work on after its first
// commit are kept in a tuplestore with at most this much in memory (kB);
// the rest goes to a temporary file.
constexpr int kMaterializedMemoryKb = 4096;

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
    std::string signature;  // columns and settings that shape the payload, part of the fingerprint
    uint64_t unchanged = 0;
    // The sync's state as loaded when the run started (state_index.hpp):
    // identifications confirmed as state_entry(key, fingerprint), events
    // confirmed as their key; the keys of confirmed identifications for a
    // preview (create or update); rejected records, by key.
    CompactHashSet confirmed;
    CompactHashSet known_keys;
    // While loading: the keys in state_changes, whose rows in state_entries
    // are out of date.
    std::unique_ptr<CompactHashSet> changed_keys;
    struct Rejected {
        Fingerprint fingerprint;
        std::string reason;  // previews only
    };
    std::unordered_map<uint64_t, Rejected> rejected;
    std::unique_ptr<RowFingerprint> fingerprint;  // saved syncs
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
    // Everything besides the values that shapes a payload: the columns (names
    // and types), the endpoint and the settings.
    run->signature = std::string(options.endpoint->path) + '\x1f' +
                     (options.properties_event ? options.properties_event : "") + '\x1f' + options.nulls + '\x1f' +
                     (spec.operations_json ? spec.operations_json : "");
    for (const ColumnInput &c : columns)
        run->signature.append("\x1e").append(c.name).append(1, static_cast<char>('0' + static_cast<int>(c.category)));
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

// What the sync's state says of a row, before it is encoded.
struct RowCheck {
    bool keyed = false;
    uint64_t key = 0;
    Fingerprint fingerprint{};
    // kUnchanged, kStillRejected (not sent), or kCreate / kUpdate.
    RowAction verdict = RowAction::kCreate;
    const char *reason = nullptr;  // kStillRejected in a preview: why
};

bool needs_work(RowAction verdict) {
    return verdict != RowAction::kUnchanged && verdict != RowAction::kStillRejected;
}

// A row's key and fingerprint, and the entry that stands for them in the
// state.
struct RowProbe {
    Fingerprint fingerprint;
    bool keyed;
    uint64_t key;
    uint64_t entry;
};

RowProbe probe_row(const SendRun *run, const Fingerprint &fingerprint, bool keyed, uint64_t key) {
    RowProbe p;
    p.fingerprint = fingerprint;
    p.keyed = keyed;
    p.key = key;
    // Events are remembered by key alone, identifications with their payload.
    p.entry = run->append ? p.key : state_entry(p.key, fingerprint);
    return p;
}

// Looks the row up in the state loaded at the start of the run.
RowCheck check_row(const SendRun *run, const RowProbe &p) {
    RowCheck c;
    c.fingerprint = p.fingerprint;
    c.keyed = p.keyed;
    if (!c.keyed) return c;
    c.key = p.key;
    // An append sync sends an event once for its life: an insert_id that
    // Amplitude confirmed is never sent again, whatever its row became
    // (Amplitude would drop it within 7 days and duplicate it after).
    if (run->confirmed.contains(p.entry)) {
        c.verdict = RowAction::kUnchanged;
        return c;
    }
    if (!run->rejected.empty()) {
        auto it = run->rejected.find(c.key);
        if (it != run->rejected.end() && it->second.fingerprint == c.fingerprint) {
            c.verdict = RowAction::kStillRejected;
            c.reason = it->second.reason.c_str();
            return c;
        }
    }
    if (!run->append && run->known_keys.contains(c.key)) c.verdict = RowAction::kUpdate;
    return c;
}

// A rejection a saved sync remembers: keyed, with the fingerprint of the
// row's values.
void remember_rejection(Rejection &rejection, const char *state_key, const RowCheck &check, const int64_t *position) {
    if (!state_key || !*state_key) return;
    rejection.record.state_key = state_key;
    rejection.record.fingerprint = check.fingerprint;
    rejection.record.has_position = position != nullptr;
    rejection.record.position = position ? *position : 0;
}

// Encodes a row into run->record (and its properties event into
// run->event), or its rejection into run->rejection, for the run's sink to
// take. For saved syncs a row whose payload Amplitude already confirmed is
// not encoded (a preview shows its payload all the same), and neither is a
// row rejected before and unchanged since (check_row).
RowAction encode_row_of_run(SendRun *run, uint64_t row_number, const Value *values, const char *state_key,
                            const RowCheck &check, const int64_t *position) {
    if (run->incremental && !needs_work(check.verdict)) {
        run->unchanged++;
        // A preview shows the payload of an unchanged record too.
        if (run->preview && !run->encoder->encode_row(row_number, values, run->record, run->rejection))
            run->record.json.clear();
        return check.verdict;
    }
    // Timed on one row in kTimingSample (clock reads are not free), scaled up.
    bool timed = row_number % kTimingSample == 0;
    auto started = timed ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    bool encoded = run->encoder->encode_row(row_number, values, run->record, run->rejection);
    if (timed) run->encode_time += (std::chrono::steady_clock::now() - started) * kTimingSample;
    if (!encoded) {
        if (run->incremental) remember_rejection(run->rejection, state_key, check, position);
        return RowAction::kRejected;
    }
    RowAction action = RowAction::kCreate;
    if (run->incremental) {
        if (!check.keyed) {
            // Only happens for events: the ledger needs the insert_id column.
            run->rejection = Rejection{};
            run->rejection.record = run->record;
            run->rejection.field = "insert_id";
            run->rejection.reason = "insert_id is missing: an append sync remembers events by their insert_id";
            return RowAction::kRejected;
        }
        action = check.verdict;
        // Amplitude's verdict on this payload is remembered either way.
        run->record.state_key = state_key;
        run->record.fingerprint = check.fingerprint;
        run->record.has_position = position != nullptr;
        run->record.position = position ? *position : 0;
    }
    if (run->events) build_properties_event(run);
    return action;
}

// Hands what encode_row_of_run made to the deliveries: a record to send
// (and its properties event), or a rejection to record.
void queue_row(SendRun *run, RowAction action) {
    if (action == RowAction::kRejected) {
        run->main->delivery.reject(std::move(run->rejection));
    } else if (action == RowAction::kCreate || action == RowAction::kUpdate) {
        if (run->state() != DeliveryState::kRunning) {
            // The run stopped while rows it had read waited to be queued:
            // each is listed as not sent (and its properties event is not
            // sent either).
            Rejection left;
            left.record = std::move(run->record);
            left.outcome = Outcome::kNotSent;
            left.reason = "not sent: " + run->error();
            run->main->delivery.reject(std::move(left));
            return;
        }
        if (run->events && !run->event.json.empty()) run->events->delivery.add(std::move(run->event));
        run->main->delivery.add(std::move(run->record));
    }
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
    if (spec->state_tables)
        run_log_remember_rejections(spec->sync_id, spec->state_tables, &run->main->delivery.rejections());
    run_log_store_rejections(log, &run->main->delivery.rejections());
    if (run->events) run_log_store_rejections(log, &run->events->delivery.rejections());
    if (spec->state_tables) run_log_store_confirmed(spec->sync_id, spec->state_tables, &run->main->delivery.confirmed());
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
    TupleDesc stored_desc;  // the store's: desc and the row number
    ColumnReader *readers;
    // Watermark syncs: the cursor column's index, and the highest value read.
    int cursor_index;
    bool has_max_position;
    int64 max_position;
};

void note_position(RowSource *source, Datum value) {
    int64 v = cursor_value(TupleDescAttr(source->desc, source->cursor_index)->atttypid, value);
    if (!source->has_max_position || v > source->max_position) source->max_position = v;
    source->has_max_position = true;
}

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

// The fingerprint's signature besides the run's (columns and settings):
// the columns' types and the settings that shape output functions' text.
void prepare_fingerprints(SendRun *run, TupleDesc desc, const ColumnReader *readers, int payload_natts) {
    const char *settings[] = {"DateStyle", "IntervalStyle", "TimeZone", "extra_float_digits", "bytea_output",
                              "lc_monetary"};
    std::string *signature = &run->signature;
    for (int i = 0; i < payload_natts; ++i) {
        char *type = psprintf("\x1e%u.%d", TupleDescAttr(desc, i)->atttypid, TupleDescAttr(desc, i)->atttypmod);
        AMP_CXX(signature->append(type));
    }
    // Only columns read through their type's output function (interval,
    // money, bytea, ...) depend on these; the others are formatted by the
    // encoders. (A sync run by sessions with different settings would
    // otherwise resend everything.)
    bool output_text = false;
    for (int i = 0; i < payload_natts; ++i)
        output_text |= readers[i].category == TypeCategory::kOther ||
                       (readers[i].category == TypeCategory::kArray && readers[i].elem_category == TypeCategory::kOther);
    for (const char *name : settings) {
        if (!output_text) break;
        const char *value = GetConfigOption(name, true, false);
        AMP_CXX(signature->append("\x1f").append(value ? value : ""));
    }
    AMP_CXX(run->fingerprint = std::make_unique<RowFingerprint>(run->signature));
}

// One pass over one of the sync's state tables (in the extension's scope):
// the first counts, the second fills (state_index.hpp). A key's row in
// state_changes replaces its row in state_entries, so state_changes is read
// first and the entries of the keys it holds are left out.
struct StateReceiver {
    RowReceiver receiver;
    SendRun *run;
    bool filling;    // the second pass
    bool changes;    // reading state_changes
    bool keys;       // the known keys too (previews of identifications)
    int64 rows;      // rows read
    MemoryContext row_context;
};

bool receive_state_row(TupleTableSlot *slot, RowReceiver *receiver) {
    StateReceiver *r = reinterpret_cast<StateReceiver *>(receiver);
    SendRun *run = r->run;
    slot_getallattrs(slot);
    MemoryContext outer = MemoryContextSwitchTo(r->row_context);
    uint64_t k = static_cast<uint64_t>(DatumGetInt64(slot->tts_values[0]));  // key_hash
    ++r->rows;
    if (!r->filling) {
        // Counting needs only the bucket, which an entry takes from its key
        // (state_entry). (Rejected records are counted too, and entries
        // replaced by changes; the fill leaves their places out.)
        if (r->changes && run->changed_keys) run->changed_keys->count(k);
        run->confirmed.count(k);
        if (r->keys) run->known_keys.count(k);
    } else if (r->changes || !run->changed_keys || run->changed_keys->size() == 0 ||
               !run->changed_keys->contains(k)) {
        if (r->changes && run->changed_keys) run->changed_keys->fill(k);
        Fingerprint f;
        memcpy(f.data(), DatumGetUUIDP(slot->tts_values[1])->data, f.size());
        if (!slot->tts_isnull[2]) {
            // (A key's change was read first, and wins.)
            const char *why = run->preview ? TextDatumGetCString(slot->tts_values[2]) : "";
            AMP_CXX(run->rejected.try_emplace(k, SendRun::Rejected{f, why}));
        } else {
            run->confirmed.fill(run->append ? k : state_entry(k, f));
            if (r->keys) run->known_keys.fill(k);
        }
    }
    MemoryContextSwitchTo(outer);
    MemoryContextReset(r->row_context);
    return true;
}

// Returns the rows read.
int64 scan_sync_state(const SendSpec *spec, SendRun *run, bool changes, bool filling) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid types[2] = {INT4OID, INT8OID};
    Datum args[2] = {Int32GetDatum(spec->sync_id), Int64GetDatum(spec->state_floor)};
    // (The counting pass reads the keys' hashes alone.) A watermark run
    // needs the ledger from its bound up (entries whose position is unknown
    // were given the highest one: see alter_sync).
    const char *query = psprintf(
        "SELECT %s FROM amplitude_sync.%s WHERE sync_id OPERATOR(pg_catalog.=) $1%s",
        filling ? "key_hash, fingerprint, rejected_reason" : "key_hash", kStateTableNames[changes ? 1 : 0],
        spec->has_state_floor ? " AND position OPERATOR(pg_catalog.>=) $2" : "");
    // (Not read-only: that takes the active snapshot, which a procedure
    // that committed has none of; this takes a fresh one, as the source.)
    Portal portal = SPI_cursor_open_with_args(nullptr, query, spec->has_state_floor ? 2 : 1, types, args, nullptr,
                                              false, 0);
    StateReceiver receiver;
    init_row_receiver(&receiver.receiver, receive_state_row);
    receiver.run = run;
    receiver.filling = filling;
    receiver.changes = changes;
    receiver.keys = run->preview && !run->append;
    receiver.rows = 0;
    receiver.row_context = AllocSetContextCreate(CurrentMemoryContext, "amplitude_sync state row",
                                                 ALLOCSET_SMALL_SIZES);
    fetch_rows(portal, FETCH_ALL, &receiver.receiver);
    MemoryContextDelete(receiver.row_context);
    SPI_cursor_close(portal);
    leave_role_scope(&scope);
    return receiver.rows;
}

// Whether the sync has rows in state_changes below its state floor (which
// the load does not read).
bool has_unread_changes(const SendSpec *spec) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid types[1] = {INT4OID};
    Datum args[1] = {Int32GetDatum(spec->sync_id)};
    if (SPI_execute_with_args("SELECT FROM amplitude_sync.state_changes WHERE sync_id OPERATOR(pg_catalog.=) $1 "
                              "LIMIT 1",
                              1, types, args, nullptr, false, 1) != SPI_OK_SELECT)
        elog(ERROR, "amplitude_sync: could not read the sync's state");
    bool found = SPI_processed > 0;
    leave_role_scope(&scope);
    return found;
}

// Loads what the sync's state holds into the run (the compact set of what
// Amplitude confirmed, the rejected records), once per run: two passes, so
// that loading never holds more than the set. Measures the two tables into
// tables, and chooses where the run writes.
void load_sync_state(const SendSpec *spec, SendRun *run, StateTables *tables) {
    bool keys = run->preview && !run->append;
    // An event sync's entries need no check against its changes: an event
    // is confirmed by key alone, and a confirmed one is never sent again
    // (an out-of-date rejection is read after the key's change and loses).
    // For identifications the check may wrongly skip an entry (the set's
    // false positives, about 7e-12 a lookup): that record is sent again.
    AMP_CXX(if (!run->append) {
        run->changed_keys = std::make_unique<CompactHashSet>();
        run->changed_keys->begin(kStateCountBound);
    } run->confirmed.begin(kStateCountBound);
            if (keys) run->known_keys.begin(kStateCountBound));
    tables->changes = scan_sync_state(spec, run, true, false);
    tables->entries = scan_sync_state(spec, run, false, false);
    AMP_CXX(if (run->changed_keys) run->changed_keys->begin_fill(); run->confirmed.begin_fill();
            if (keys) run->known_keys.begin_fill());
    if (tables->changes > 0) scan_sync_state(spec, run, true, true);
    AMP_CXX(if (run->changed_keys) run->changed_keys->end_fill());
    scan_sync_state(spec, run, false, true);
    AMP_CXX(run->confirmed.end_fill(); if (keys) run->known_keys.end_fill(); run->changed_keys.reset());
    // A sync with no state yet fills state_entries directly (nothing there
    // to replace); from then on its runs write state_changes.
    tables->into_changes = tables->entries > 0 || tables->changes > 0 ||
                           (spec->has_state_floor && has_unread_changes(spec));
    tables->written = 0;
}

// Prepares the query and opens a cursor on it, in the source's scope.
void open_source(const SendSpec *spec, RowSource *source) {
    RoleScope scope;
    enter_source_scope(spec, &scope);
    // A watermark run reads the rows at or above its bound ($1, typed as the
    // cursor column).
    Oid bound_type[1] = {spec->cursor_type};
    Datum bound[1] = {spec->has_bound ? cursor_datum(spec->cursor_type, spec->bound) : (Datum)0};
    int nargs = spec->has_bound ? 1 : 0;
    SPIPlanPtr plan = SPI_prepare_cursor(spec->query, nargs, nargs ? bound_type : nullptr, 0);
    if (!plan)
        ereport(ERROR, (errcode(ERRCODE_SYNTAX_ERROR), errmsg("could not prepare the query: %s",
                                                             SPI_result_code_string(SPI_result))));
    if (!SPI_is_cursor_plan(plan))
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("the query must be a single statement that returns rows"),
                        errhint("Pass a SELECT (or VALUES, or TABLE name).")));
    source->portal = SPI_cursor_open(nullptr, plan, nargs ? bound : nullptr, nullptr, false);
    leave_role_scope(&scope);
    source->store = nullptr;
    source->slot = nullptr;
    source->stored_desc = nullptr;
    source->desc = CreateTupleDescCopy(source->portal->tupDesc);
    source->cursor_index = -1;
    source->has_max_position = false;
    source->max_position = 0;
    for (int i = 0; spec->cursor_column && i < source->desc->natts; ++i)
        if (strcmp(NameStr(TupleDescAttr(source->desc, i)->attname), spec->cursor_column) == 0) source->cursor_index = i;
    source->readers = static_cast<ColumnReader *>(palloc0(sizeof(ColumnReader) * (source->desc->natts + 1)));
    for (int i = 0; i < source->desc->natts; ++i)
        init_column_reader(&source->readers[i], TupleDescAttr(source->desc, i)->atttypid);
}

// The tuple layout of a materialized source: its columns and the row's
// number in what the run read.
TupleDesc with_row_number(TupleDesc desc) {
    TupleDesc out = CreateTemplateTupleDesc(desc->natts + 1);
    for (int i = 1; i <= desc->natts; ++i) TupleDescCopyEntry(out, static_cast<AttrNumber>(i), desc, static_cast<AttrNumber>(i));
    TupleDescInitEntry(out, static_cast<AttrNumber>(desc->natts + 1), "amplitude_sync.row_number", INT8OID, -1, 0);
    return out;
}

// What a run knows of one row of a saved sync's source: its key (the
// query's last column) and, for watermark syncs, its cursor value.
struct RowKey {
    const char *data;
    size_t len;
};

RowKey row_key(Datum *datums, bool *nulls, int natts) {
    if (nulls[natts - 1]) return {nullptr, 0};
    text *t = DatumGetTextPP(datums[natts - 1]);
    return {VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)};
}

// The row's fingerprint from its Datums (state_index.hpp): pass-by-value
// values as their Datum, others as their detoasted bytes; no output
// function runs. spans has room for the payload columns.
Fingerprint datum_fingerprint(SendRun *run, TupleDesc desc, Datum *datums, bool *nulls, int payload_natts,
                              ByteSpan *spans) {
    for (int i = 0; i < payload_natts; ++i) {
        Form_pg_attribute a = TupleDescAttr(desc, i);
        if (nulls[i]) {
            spans[i] = {nullptr, 0};
        } else if (a->attbyval) {
            spans[i] = {&datums[i], sizeof(Datum)};
        } else if (a->attlen > 0) {
            spans[i] = {DatumGetPointer(datums[i]), static_cast<size_t>(a->attlen)};
        } else if (a->attlen == -1) {
            struct varlena *v = pg_detoast_datum_packed(reinterpret_cast<struct varlena *>(DatumGetPointer(datums[i])));
            spans[i] = {VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v)};
        } else {
            const char *c = DatumGetCString(datums[i]);
            spans[i] = {c, strlen(c)};
        }
    }
    Fingerprint f{};
    AMP_CXX(f = run->fingerprint->of(spans, static_cast<size_t>(payload_natts)));
    return f;
}

// What the state says of a row of a saved sync. Its key is hashed first so
// that the state's bucket for it is fetched into cache while the row is
// fingerprinted (state_entry's top bits are the key's). Detoasted values
// live in CurrentMemoryContext.
RowCheck check_source_row(SendRun *run, TupleDesc desc, Datum *datums, bool *nulls, int payload_natts,
                          ByteSpan *spans) {
    RowKey key = row_key(datums, nulls, desc->natts);
    bool keyed = key.len > 0;
    uint64_t hash = 0;
    AMP_CXX(hash = keyed ? key_hash(std::string_view(key.data, key.len)) : 0);
    run->confirmed.prefetch(hash);
    Fingerprint fingerprint = datum_fingerprint(run, desc, datums, nulls, payload_natts, spans);
    run->confirmed.prefetch_entries(hash);
    RowCheck check;
    AMP_CXX(check = check_row(run, probe_row(run, fingerprint, keyed, hash)));
    return check;
}

// A row of the source that a fetch handed to the run loop: its number in
// what the run read and, for a saved sync, what the state says of it.
struct KeptRow {
    HeapTuple tuple;
    int64 row_number;
    RowCheck check;
};

// Receives the source's rows as the executor produces them. A saved sync
// looks each row up in its state as it comes and keeps only those the run
// must still work on (every row for one-shot calls and for previews that
// show every row): in the batch the run loop reads next or, once the run
// reads the rest of its source before its first commit, in the tuplestore.
// A row whose payload Amplitude already has is counted and dropped.
struct SourceReceiver {
    RowReceiver receiver;
    const SendSpec *spec;
    SendRun *run;
    RowSource *source;
    int payload_natts;
    bool keep_all;
    ByteSpan *spans;
    MemoryContext row_context;    // the row being looked at, reset after it
    MemoryContext batch_context;  // the kept rows, reset by the run loop
    KeptRow *kept;                // room for kFetchRows
    uint64 kept_count;
    Datum *datums;  // materializing: the stored row (its columns and number)
    bool *nulls;
    int64 *rows_read;
    int64 *counts;  // by RowAction
    int64 stored;   // rows put in the tuplestore
};

bool receive_source_row(TupleTableSlot *slot, RowReceiver *receiver) {
    SourceReceiver *r = reinterpret_cast<SourceReceiver *>(receiver);
    RowSource *source = r->source;
    MemoryContext outer = MemoryContextSwitchTo(r->row_context);
    int64 row_number = ++*r->rows_read;
    RowCheck check;
    bool keep = true;
    if (r->spec->sync_id) {
        slot_getallattrs(slot);
        check = check_source_row(r->run, source->desc, slot->tts_values, slot->tts_isnull, r->payload_natts, r->spans);
        keep = r->keep_all || needs_work(check.verdict);
    }
    if (!keep) {
        r->run->unchanged++;
        r->counts[static_cast<int>(check.verdict)]++;
        if (source->cursor_index >= 0 && !slot->tts_isnull[source->cursor_index])
            note_position(source, slot->tts_values[source->cursor_index]);
    } else if (source->store) {
        // Values stored out of line are fetched now: after the commit no
        // snapshot would let them be read.
        int natts = source->desc->natts;
        HeapTuple tuple = ExecCopySlotHeapTuple(slot);
        if (HeapTupleHasExternal(tuple)) tuple = toast_flatten_tuple(tuple, source->desc);
        heap_deform_tuple(tuple, source->desc, r->datums, r->nulls);
        r->datums[natts] = Int64GetDatum(row_number);
        r->nulls[natts] = false;
        tuplestore_putvalues(source->store, source->stored_desc, r->datums, r->nulls);
        r->stored++;
    } else {
        MemoryContextSwitchTo(r->batch_context);
        r->kept[r->kept_count++] = KeptRow{ExecCopySlotHeapTuple(slot), row_number, check};
    }
    MemoryContextSwitchTo(outer);
    MemoryContextReset(r->row_context);
    return true;
}

// Fetches up to count rows of the source into the receiver, in the
// source's scope; returns how many were read.
uint64 fetch_source_rows(SourceReceiver *receiver, long count) {
    RoleScope scope;
    enter_source_scope(receiver->spec, &scope);
    uint64 fetched = fetch_rows(receiver->source->portal, count, &receiver->receiver);
    leave_role_scope(&scope);
    return fetched;
}

// At the first commit of a run that commits as it goes: reads the rest of
// the source (in its scope, before the commit ends the snapshot) and keeps
// only the rows the run must still work on, with their row numbers, in a
// tuplestore that outlives commits; rows whose payload Amplitude already
// has are counted as read and unchanged, and not copied.
void materialize_source(SourceReceiver *receiver, MemoryContext context) {
    const SendSpec *spec = receiver->spec;
    RowSource *source = receiver->source;
    // The store outlives commits (interXact) and is ended by the run, or by
    // run_sync when the run fails (spec->segments->materialized).
    MemoryContext outer = MemoryContextSwitchTo(MemoryContextGetParent(context));
    source->store = tuplestore_begin_heap(false, true, Min(work_mem, kMaterializedMemoryKb));
    spec->segments->materialized = source->store;
    MemoryContextSwitchTo(context);
    source->stored_desc = with_row_number(source->desc);
    source->slot = MakeSingleTupleTableSlot(source->stored_desc, &TTSOpsMinimalTuple);
    MemoryContextSwitchTo(outer);
    fetch_source_rows(receiver, FETCH_ALL);
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

namespace {

// What the run loop hands over when the source is read.
struct RunEnd {
    const AmpConnection *conn;
    SendRun *run;
    RowSource *source;
    TupleDesc result_desc;
    MemoryContext run_context;
    bool own_spi;
    int64 rows_read;
    int64 *counts;  // by RowAction
    instr_time read_time;
    bool more;  // the query may hold rows the run did not read
    int64 unqueued;  // rows read that the run stopped before queueing: not sent
};

// Where the rows of a run go once checked and encoded: to Amplitude, or
// into preview_sync's result. The run loop is the same for both: it hands
// the sink each row, tells it when a fetched batch is done, and lets it end
// the run.
struct RowSink {
    void (*take)(RowSink *sink, SendRun *run, int64 row_number, const char *record_key, RowAction action,
                 const char *stored_reason);
    void (*batch_done)(RowSink *sink, SendRun *run);
    Datum (*finish)(RowSink *sink, RunEnd *end);
    bool every_row;  // it shows unchanged rows too: their keys and values are read
    const SendSpec *spec;
    RunLog *log;                // delivery: the run's record
    RunLog own_log;             // delivery: when the caller keeps none
    TupleDesc desc;             // preview: its rows' type
    Tuplestorestate *store;     // preview: its rows
    int64 events_previewed;     // preview: properties events a run would send beside
};

Datum finish_delivery(RowSink *sink, RunEnd *end);
Datum finish_preview(RowSink *sink, RunEnd *end);

void deliver_row(RowSink *, SendRun *run, int64, const char *, RowAction action, const char *) {
    AMP_CXX(queue_row(run, action));
}

void store_batch_outcomes(RowSink *sink, SendRun *run) { store_outcomes(sink->log, run, sink->spec); }

void preview_row(RowSink *sink, SendRun *run, int64 row_number, const char *record_key, RowAction action,
                 const char *stored_reason) {
    put_preview_rows(sink->spec, sink->desc, sink->store, row_number, record_key, action, run, stored_reason,
                     &sink->events_previewed);
}

void nothing_to_store(RowSink *, SendRun *) {}

// Sends: the run has a record (the caller's, or its own) and shows its
// progress to other sessions.
void start_delivery_sink(RowSink *sink, const SendSpec *spec, const AmpConnection *conn, SendRun *run) {
    *sink = RowSink{};
    sink->take = deliver_row;
    sink->batch_done = store_batch_outcomes;
    sink->finish = finish_delivery;
    sink->spec = spec;
    sink->log = spec->log;
    if (!sink->log) {
        sink->log = &sink->own_log;
        run_log_start(sink->log, spec->function_name, conn->server_name, spec->options.endpoint->path,
                      spec->sync_id, spec->sync_name, "running", nullptr);
    }
    progress_begin(sink->log->run_id, run->progress.label.c_str());
}

// Sends nothing and writes nothing: the rows go to preview_sync's result.
void start_preview_sink(RowSink *sink, const SendSpec *spec, TupleDesc result_desc, SendRun *run) {
    *sink = RowSink{};
    sink->take = preview_row;
    sink->batch_done = nothing_to_store;
    sink->finish = finish_preview;
    sink->every_row = true;
    sink->spec = spec;
    MemoryContext outer = MemoryContextSwitchTo(spec->rsinfo->econtext->ecxt_per_query_memory);
    sink->store = tuplestore_begin_heap(true, false, work_mem);
    sink->desc = CreateTupleDescCopy(result_desc);
    MemoryContextSwitchTo(outer);
    spec->rsinfo->returnMode = SFRM_Materialize;
    spec->rsinfo->setResult = sink->store;
    spec->rsinfo->setDesc = sink->desc;
    run->progress.stats = nullptr;  // nothing is sent: no progress to tell
}

}  // namespace

Datum execute_send_run(FunctionCallInfo fcinfo, const AmpConnection *conn, const SendSpec *spec) {
    TupleDesc result_desc = spec->report_desc;
    if (!result_desc && get_call_result_type(fcinfo, nullptr, &result_desc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "amplitude_sync: return type must be a row type");

    bool own_spi = spec->segments == nullptr;
    if (own_spi && SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    RowSource source;
    open_source(spec, &source);
    TupleDesc desc = source.desc;
    ColumnReader *readers = source.readers;
    int natts = desc->natts;
    // A saved sync's query ends with the record key.
    int payload_natts = spec->sync_id ? natts - 1 : natts;

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
    resources->run = run;
    raise_plan_warnings(run);
    cleanup->func = release_run_resources;
    cleanup->arg = resources;
    MemoryContextRegisterResetCallback(run_context, cleanup);

    // The call's options chose where the rows go; the loop below is the
    // same for both.
    RowSink sink;
    if (spec->preview) start_preview_sink(&sink, spec, result_desc, run);
    else start_delivery_sink(&sink, spec, conn, run);
    RunLog *log = sink.log;
    TimestampTz last_commit = GetCurrentTimestamp();

    Datum *datums = static_cast<Datum *>(palloc(sizeof(Datum) * (natts + 2)));
    bool *nulls = static_cast<bool *>(palloc(sizeof(bool) * (natts + 2)));
    Value *values = static_cast<Value *>(palloc0(sizeof(Value) * (natts + 1)));
    ByteSpan *spans = static_cast<ByteSpan *>(palloc0(sizeof(ByteSpan) * (natts + 1)));
    if (spec->sync_id) prepare_fingerprints(run, desc, readers, payload_natts);
    MemoryContext row_context = AllocSetContextCreate(run_context, "amplitude_sync row",
                                                      ALLOCSET_DEFAULT_SIZES);
    int64 rows_read = 0;
    int64 unqueued = 0;
    int64 counts[5] = {0, 0, 0, 0, 0};  // by RowAction
    SourceReceiver receiver;
    init_row_receiver(&receiver.receiver, receive_source_row);
    receiver.spec = spec;
    receiver.run = run;
    receiver.source = &source;
    receiver.payload_natts = payload_natts;
    receiver.keep_all = !spec->sync_id || sink.every_row;
    receiver.spans = spans;
    receiver.row_context = AllocSetContextCreate(run_context, "amplitude_sync source row", ALLOCSET_DEFAULT_SIZES);
    receiver.batch_context = AllocSetContextCreate(run_context, "amplitude_sync batch", ALLOCSET_DEFAULT_SIZES);
    receiver.kept = static_cast<KeptRow *>(palloc(sizeof(KeptRow) * kFetchRows));
    receiver.kept_count = 0;
    receiver.datums = datums;
    receiver.nulls = nulls;
    receiver.rows_read = &rows_read;
    receiver.counts = counts;
    receiver.stored = 0;
    int64 taken = 0;  // rows taken back out of the tuplestore
    instr_time read_time;            // fetching rows and reading their values
    INSTR_TIME_SET_ZERO(read_time);
    // A saved sync compares rows with its state, loaded once.
    StateTables preview_tables;
    if (spec->sync_id) load_sync_state(spec, run, spec->state_tables ? spec->state_tables : &preview_tables);
    bool more = true;
    bool idle = false;  // the last batch had nothing to send
    while (more && run->state() == DeliveryState::kRunning) {
        CHECK_FOR_INTERRUPTS();
        // A run that commits as it goes fetches less at a time, so it can
        // commit about once a second even when Amplitude is slow.
        // (A batch with nothing to send after one that had nothing either is
        // read 1,000 rows at a time: an unchanged run reads at full speed.)
        long fetch_count = spec->segments && !idle ? kFetchRowsCommitting : kFetchRows;
        uint64_t unchanged_before = run->unchanged;
        int64 read_before = rows_read;
        instr_time read_started;
        INSTR_TIME_SET_CURRENT(read_started);
        // From the cursor: the rows the receiver kept. From the store (the
        // rest of the source, read before the first commit): up to
        // fetch_count rows.
        bool from_cursor = source.portal != nullptr;
        if (from_cursor) {
            receiver.kept_count = 0;
            more = fetch_source_rows(&receiver, fetch_count) == static_cast<uint64>(fetch_count);
        }
        run->progress.rows_read = rows_read;
        add_elapsed(&read_time, read_started, 1);
        uint64 batch_rows = from_cursor ? receiver.kept_count : static_cast<uint64>(fetch_count);
        // Rows the receiver kept are all queued, also after the deliveries
        // stopped (queue_row lists them as not sent); the store is left
        // as it is (its rows are counted as not sent at the end).
        uint64 r = 0;
        for (; r < batch_rows && (from_cursor ? run->state() != DeliveryState::kInterrupted
                                              : run->state() == DeliveryState::kRunning);
             ++r) {
            MemoryContext outer = MemoryContextSwitchTo(row_context);
            bool timed = (r + 1) % kTimingSample == 0;
            if (timed) INSTR_TIME_SET_CURRENT(read_started);
            int64 row_number;
            RowCheck check;
            if (from_cursor) {
                heap_deform_tuple(receiver.kept[r].tuple, desc, datums, nulls);
                row_number = receiver.kept[r].row_number;
                check = receiver.kept[r].check;
            } else {
                // A row read back from disk is palloc'd and freed by the slot
                // at the next read: it must not live in the per-row context.
                MemoryContextSwitchTo(outer);
                bool got = tuplestore_gettupleslot(source.store, true, false, source.slot);
                MemoryContextSwitchTo(row_context);
                if (!got) {
                    more = false;
                    MemoryContextSwitchTo(outer);
                    break;
                }
                slot_getallattrs(source.slot);
                memcpy(datums, source.slot->tts_values, sizeof(Datum) * (natts + 1));
                memcpy(nulls, source.slot->tts_isnull, sizeof(bool) * (natts + 1));
                // Counted as read when it was stored.
                row_number = DatumGetInt64(datums[natts]);
                taken++;
                check = check_source_row(run, desc, datums, nulls, payload_natts, spans);
            }
            const char *record_key = nullptr;
            int64 position = 0;
            bool has_position = source.cursor_index >= 0 && !nulls[source.cursor_index];
            if (has_position) {
                position = cursor_value(TupleDescAttr(desc, source.cursor_index)->atttypid,
                                        datums[source.cursor_index]);
                note_position(&source, datums[source.cursor_index]);
            }
            if (spec->sync_id) {
                RowKey key = row_key(datums, nulls, natts);
                if (key.data && (sink.every_row || needs_work(check.verdict)))
                    record_key = pnstrdup(key.data, key.len);
            }
            // The values are read (output functions, UTF-8) only for rows that
            // are encoded.
            if (!spec->sync_id || sink.every_row || needs_work(check.verdict))
                for (int i = 0; i < payload_natts; ++i)
                    read_column_value(&readers[i], datums[i], nulls[i], &values[i]);
            if (timed) add_elapsed(&read_time, read_started, kTimingSample);
            RowAction action = RowAction::kCreate;
            AMP_CXX(action = encode_row_of_run(run, static_cast<uint64_t>(row_number), values, record_key, check,
                                               has_position ? &position : nullptr));
            counts[static_cast<int>(action)]++;
            sink.take(&sink, run, row_number, record_key, action, check.reason);
            MemoryContextSwitchTo(outer);
            MemoryContextReset(row_context);
        }
        // Rows of the fetch left when the run was interrupted were read:
        // they are not sent.
        if (from_cursor) unqueued += static_cast<int64>(batch_rows - r);
        MemoryContextReset(receiver.batch_context);
        report_progress(&run->progress);
        idle = spec->sync_id && rows_read > read_before &&
               run->unchanged - unchanged_before == static_cast<uint64_t>(rows_read - read_before);
        sink.batch_done(&sink, run);
        if (spec->counts) {
            const DeliveryStats &so_far = run->main->delivery.stats();
            *spec->counts = {rows_read, static_cast<int64>(so_far.sent), static_cast<int64>(so_far.rejected),
                             static_cast<int64>(run->unchanged)};
        }
        // About once a second: publish the counts, keep what Amplitude confirmed.
        // (Not once the deliveries stopped: the loop ends, and the rest of
        // the source is not read just to be counted as not sent.)
        if (spec->segments && more && run->state() == DeliveryState::kRunning &&
            TimestampDifferenceExceeds(last_commit, GetCurrentTimestamp(), 1000)) {
            if (source.portal) materialize_source(&receiver, run_context);
            run_log_progress(log, rows_read, static_cast<int64>(run->unchanged), &run->main->delivery.stats());
            if (spec->counts) {
                const DeliveryStats &so_far = run->main->delivery.stats();
                *spec->counts = {rows_read, static_cast<int64>(so_far.sent), static_cast<int64>(so_far.rejected),
                                 static_cast<int64>(run->unchanged)};
            }
            spec->segments->commit(spec->segments);
            last_commit = GetCurrentTimestamp();
        }
    }
    // Rows left in the store were read and are not sent; once the source is
    // in the store, the query was read to its end.
    if (source.store) unqueued += receiver.stored - taken;
    bool query_left = more && source.portal != nullptr;
    if (source.portal) SPI_cursor_close(source.portal);
    RunEnd end = {conn, run, &source, result_desc, run_context, own_spi, rows_read, counts, read_time, query_left, unqueued};
    return sink.finish(&sink, &end);
}

namespace {

// A preview ends with Census's "recap of what will happen"; its rows are
// already in the result.
Datum finish_preview(RowSink *sink, RunEnd *end) {
    const SendSpec *spec = sink->spec;
    const int64 *counts = end->counts;
    // The properties events go to /2/httpapi beside the identifications.
    const char *events_part =
        spec->options.properties_event
            ? psprintf(" and send %lld \"%s\" events", static_cast<long long>(sink->events_previewed),
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
    MemoryContextDelete(end->run_context);
    if (end->own_spi) SPI_finish();
    return (Datum)0;
}


// A delivery ends by waiting for Amplitude's last answers, recording the
// run and returning its report (or raising, when the run failed).
Datum finish_delivery(RowSink *sink, RunEnd *end) {
    const SendSpec *spec = sink->spec;
    const AmpConnection *conn = end->conn;
    SendRun *run = end->run;
    RunLog *log = sink->log;
    RowSource &source = *end->source;
    int64 rows_read = end->rows_read;
    bool more = end->more;
    instr_time read_time = end->read_time;
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

    DeliveryStats totals = run->main->delivery.stats();
    totals.not_sent += static_cast<uint64_t>(end->unqueued);
    const DeliveryStats *stats = &totals;
    if (run->state() == DeliveryState::kStopped) {
        // A saved sync keeps what this segment confirmed and the rows it
        // lists as not sent: the error rolls back only what follows.
        if (spec->segments) spec->segments->commit(spec->segments);
        raise_stopped_run(conn, run->error().c_str(), run->stop_reason() == StopReason::kBadApiKey, rows_read,
                          stats->sent);
    }

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
        error = more ? psprintf("%s; the run stopped after reading %lld rows (the rest of the query, if any, was not read)",
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
    // A watermark sync that read, and accounted for, every row it was given
    // moves its watermark up and prunes its ledger below watermark - lookback.
    if (spec->sync_id && spec->cursor_column && !failed && stats->not_sent == 0 && source.has_max_position)
        run_log_advance_watermark(spec->sync_id, source.max_position, spec->lookback);
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
    HeapTuple tuple = heap_form_tuple(BlessTupleDesc(end->result_desc), result, result_nulls);
    if (source.store) {
        tuplestore_end(source.store);
        spec->segments->materialized = nullptr;
    }
    MemoryContextDelete(end->run_context);
    // Copy the result out of SPI's memory before SPI_finish frees it.
    Datum out = SPI_datumTransfer(HeapTupleGetDatum(tuple), false, -1);
    if (end->own_spi) SPI_finish();
    return out;
}

}  // namespace
