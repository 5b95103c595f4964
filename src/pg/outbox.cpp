// The transactional outbox: track() and identify() validate and encode one
// record with the field mapper of the one-shot functions (a jsonb object's
// keys play the columns) and write it to amplitude_sync.outbox in the
// caller's transaction; flush_outbox() delivers the committed entries with
// the delivery engine (one Channel per role and endpoint, as send_run does)
// and removes them in its own transaction.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "call_options.hpp"
#include "cxx_guard.hpp"
#include "delivery.hpp"
#include "event_encoder.hpp"
#include "identify_encoder.hpp"

#include "connection.hpp"
#include "datum_values.hpp"
#include "outbox.hpp"
#include "pg_headers.hpp"
#include "role_scope.hpp"
#include "sql_arguments.hpp"
#include "run_log.hpp"
#include "send_run.hpp"

using namespace amplitude_sync;

namespace {

// Entries read (and locked) at a time by flush_outbox.
constexpr int kFlushBatch = 1000;

// The encoded entry, on the C++ heap, deleted by a memory-context callback.
struct EncodedEntry {
    bool ok = false;
    Record record;
    Rejection rejection;
    std::string derived_insert_id;
};

void delete_encoded_entry(void *arg) { delete static_cast<EncodedEntry *>(arg); }

const Endpoint *endpoint_of(Target target) {
    return target == Target::kEvents ? &kHttpApiEndpoint
           : target == Target::kGroup ? &kGroupIdentifyEndpoint
                                      : &kIdentifyEndpoint;
}

const Endpoint *endpoint_by_path(const char *path) {
    for (const Endpoint *e : {&kHttpApiEndpoint, &kIdentifyEndpoint, &kGroupIdentifyEndpoint})
        if (strcmp(e->path, path) == 0) return e;
    elog(ERROR, "amplitude_sync: unknown outbox endpoint \"%s\"", path);
    pg_unreachable();
}

// Plans and encodes one record (C++ only: call through AMP_CXX). For an
// event without an insert_id, one is derived from the entry's text and its
// number: re-sending the entry is deduplicated by Amplitude, two entries
// with the same content are two events.
void encode_entry(Target target, const std::vector<ColumnInput> &columns, Value *values, bool derive_id,
                  const char *canonical, int64_t entry_id, EncodedEntry *out) {
    std::vector<ColumnInput> all = columns;
    if (derive_id) {
        out->derived_insert_id = derive_insert_id(std::string(canonical) + '\x1f' + std::to_string(entry_id));
        Value &v = values[all.size()];
        v = Value{};
        v.category = TypeCategory::kText;
        v.is_null = false;
        v.text = out->derived_insert_id.c_str();
        v.text_len = out->derived_insert_id.size();
        all.push_back({"insert_id", TypeCategory::kText});
    }
    if (target == Target::kEvents) {
        EventOptions options;
        EventEncoder encoder(plan_event_columns(all), options);
        out->ok = encoder.encode_row(static_cast<uint64_t>(entry_id), values, out->record, out->rejection);
    } else {
        IdentifyOptions options;
        options.object = target == Target::kUser     ? ProfileObject::kUser
                         : target == Target::kDevice ? ProfileObject::kDevice
                                                     : ProfileObject::kGroup;
        // An entry may be delivered more than once (Amplitude answered,
        // then the flushing transaction failed): only operations that give
        // the same profile when applied twice.
        options.idempotent_only = true;
        IdentifyEncoder encoder(plan_identify_columns(all, options), options);
        out->ok = encoder.encode_row(static_cast<uint64_t>(entry_id), values, out->record, out->rejection);
    }
    if (!out->ok) make_storable(out->rejection);
}

// The two statements every entry runs, prepared once per backend (and
// again if the extension was dropped and created anew).
struct OutboxPlans {
    Oid extension;
    SPIPlanPtr next_id;
    SPIPlanPtr insert;
};
OutboxPlans outbox_plans = {InvalidOid, nullptr, nullptr};

const Oid kInsertTypes[12] = {INT8OID, TEXTOID, TEXTOID, OIDOID, TEXTOID, TEXTOID,
                              TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, TEXTOID};

// In the extension's scope.
void prepare_outbox_plans() {
    Oid extension = get_extension_oid("amplitude_sync", false);
    if (outbox_plans.extension == extension && outbox_plans.insert) return;
    if (outbox_plans.next_id) SPI_freeplan(outbox_plans.next_id);
    if (outbox_plans.insert) SPI_freeplan(outbox_plans.insert);
    outbox_plans = {InvalidOid, nullptr, nullptr};
    SPIPlanPtr next_id =
        SPI_prepare("SELECT pg_catalog.nextval('amplitude_sync.outbox_entry_id_seq'::pg_catalog.regclass)", 0, nullptr);
    Oid types[12];
    memcpy(types, kInsertTypes, sizeof(types));
    SPIPlanPtr insert = SPI_prepare(
        "INSERT INTO amplitude_sync.outbox (entry_id, server, endpoint, queued_by, user_id, device_id, "
        "insert_id, event_type, group_type, group_value, property_count, payload) "
        "VALUES ($1, $2, $3, $4::pg_catalog.regrole, $5, $6, $7, $8, $9, $10, $11, $12::pg_catalog.json)",
        12, types);
    if (!next_id || !insert || SPI_keepplan(next_id) != 0 || SPI_keepplan(insert) != 0)
        elog(ERROR, "amplitude_sync: could not prepare the outbox statements");
    outbox_plans = {extension, next_id, insert};
}

// In the extension's scope, the plans prepared.
int64 next_entry_id() {
    if (SPI_execute_plan(outbox_plans.next_id, nullptr, nullptr, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
        elog(ERROR, "amplitude_sync: could not number the outbox entry");
    bool isnull;
    return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

// In the extension's scope, the plans prepared.
void insert_entry(int64 entry_id, const char *server_name, const Endpoint *endpoint, Oid role,
                  const EncodedEntry *entry) {
    const Record &r = entry->record;
    const std::string *texts[6] = {&r.user_id, &r.device_id, &r.insert_id, &r.event_type, &r.group_type,
                                   &r.group_value};
    Datum args[12];
    char nulls[13] = "            ";
    args[0] = Int64GetDatum(entry_id);
    args[1] = CStringGetTextDatum(server_name);
    args[2] = CStringGetTextDatum(endpoint->path);
    args[3] = ObjectIdGetDatum(role);
    for (int i = 0; i < 6; ++i) {
        if (texts[i]->empty()) nulls[4 + i] = 'n';
        else args[4 + i] = utf8_text_datum(*texts[i]);
    }
    args[10] = Int32GetDatum(static_cast<int32>(r.property_count));
    args[11] = utf8_text_datum(r.json);
    if (SPI_execute_plan(outbox_plans.insert, args, nulls, false, 0) != SPI_OK_INSERT)
        elog(ERROR, "amplitude_sync: could not write the outbox entry");
}

}  // namespace

int64 queue_outbox_entry(const char *server_name, Oid role, Target target, const OutboxField *fields, int nfields,
                         const char *canonical, bool check_mapping) {
    // The role's USAGE and mapping are checked now, as the one-shot
    // functions do: an entry that could never be sent is refused at once.
    ForeignServer *server = amplitude_server(server_name);
    AmpConnection conn;
    if (check_mapping) load_connection_as(server, role, &conn, false);

    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    bool has_time = false, has_insert_id = false;
    ColumnReader *readers = static_cast<ColumnReader *>(palloc0(sizeof(ColumnReader) * (nfields + 2)));
    Value *values = static_cast<Value *>(palloc0(sizeof(Value) * (nfields + 2)));
    int n = 0;
    for (int i = 0; i < nfields; ++i) {
        if (fields[i].is_null) continue;
        has_time |= strcmp(fields[i].name, "time") == 0;
        has_insert_id |= strcmp(fields[i].name, "insert_id") == 0;
    }
    // An event without a time happened now, not when it is delivered.
    bool add_time = target == Target::kEvents && !has_time;
    int total = nfields + (add_time ? 1 : 0);
    const char **names = static_cast<const char **>(palloc(sizeof(char *) * (total + 1)));
    for (int i = 0; i < total; ++i) {
        bool is_time = i == nfields;
        if (!is_time && fields[i].is_null) continue;  // like a NULL column: left out
        Oid type = is_time ? TIMESTAMPTZOID : fields[i].type;
        Datum datum = is_time ? TimestampTzGetDatum(GetCurrentTimestamp()) : fields[i].value;
        init_column_reader(&readers[n], type);
        read_column_value(&readers[n], datum, false, &values[n]);
        names[n] = is_time ? "time" : fields[i].name;
        ++n;
    }
    // Numbering, encoding (C++ only: no code of the caller's runs here) and
    // writing happen in one stay in the extension's scope; the values were
    // read (output functions, the caller's types) before it.
    RoleScope scope;
    enter_extension_scope(&scope);
    prepare_outbox_plans();
    int64 entry_id = next_entry_id();
    bool derive_id = target == Target::kEvents && !has_insert_id;

    EncodedEntry *entry = nullptr;
    AMP_CXX(entry = new EncodedEntry());
    MemoryContextCallback *cleanup =
        static_cast<MemoryContextCallback *>(MemoryContextAllocZero(CurrentMemoryContext, sizeof(MemoryContextCallback)));
    cleanup->func = delete_encoded_entry;
    cleanup->arg = entry;
    MemoryContextRegisterResetCallback(CurrentMemoryContext, cleanup);
    AMP_CXX(std::vector<ColumnInput> columns; for (int i = 0; i < n; ++i) columns.push_back({names[i], readers[i].category});
            encode_entry(target, columns, values, derive_id, canonical ? canonical : "", entry_id, entry));
    if (!entry->ok) {
        const Rejection &r = entry->rejection;
        // The idempotence rule is the saved syncs' one, for the same reason.
        const char *reason = r.reason.c_str();
        const char *saved = strstr(reason, "in a saved sync");
        if (saved)
            reason = psprintf("%.*sin the outbox%s", static_cast<int>(saved - reason), reason,
                              saved + strlen("in a saved sync"));
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("%s not queued: %s", target == Target::kEvents ? "event" : "identification",
                               reason),
                        r.field.empty() ? 0 : errdetail("The field is \"%s\".", r.field.c_str()),
                        errhint("The outbox takes only records Amplitude would accept; nothing was written.")));
    }
    insert_entry(entry_id, server->servername, endpoint_of(target), role, entry);
    leave_role_scope(&scope);
    outbox_note_queued();
    SPI_finish();
    return entry_id;
}

// ---------------------------------------------------------------------------
// track() and identify(): a jsonb object's members as the columns of a row.

namespace {

bool is_plain_integer(const char *text) {
    const char *p = text;
    if (*p == '-') ++p;
    size_t digits = strspn(p, "0123456789");
    return digits > 0 && digits <= 18 && p[digits] == '\0';
}

// The members of a jsonb object, typed as a query's columns would be:
// strings as text (time and session_id as timestamptz), whole numbers as
// bigint, other numbers as numeric, booleans, objects and arrays as jsonb;
// null members are left out, like NULL columns.
OutboxField *jsonb_fields(Jsonb *jb, const char *argument, int *count) {
    if (JB_ROOT_IS_SCALAR(jb) || !JB_ROOT_IS_OBJECT(jb))
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("argument \"%s\" must be a JSON object", argument),
                        errhint("Name its keys like the columns of the one-shot functions, "
                                "for example {\"event_type\": \"Signed Up\", \"user_id\": \"user-1\"}.")));
    int capacity = static_cast<int>(JB_ROOT_COUNT(jb));
    OutboxField *fields = static_cast<OutboxField *>(palloc0(sizeof(OutboxField) * (capacity + 1)));
    int n = 0;
    JsonbIterator *it = JsonbIteratorInit(&jb->root);
    JsonbValue v;
    JsonbIteratorToken token;
    char *key = nullptr;
    while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE) {
        if (token == WJB_KEY) {
            key = pnstrdup(v.val.string.val, v.val.string.len);
            continue;
        }
        if (token != WJB_VALUE || !key) continue;
        OutboxField *f = &fields[n];
        f->name = key;
        f->is_null = false;
        switch (v.type) {
            case jbvNull:
                f->is_null = true;
                f->type = TEXTOID;
                break;
            case jbvString: {
                char *s = pnstrdup(v.val.string.val, v.val.string.len);
                if (strcmp(key, "time") == 0 || strcmp(key, "session_id") == 0) {
                    f->type = TIMESTAMPTZOID;
                    f->value = DirectFunctionCall3(timestamptz_in, CStringGetDatum(s), ObjectIdGetDatum(InvalidOid),
                                                   Int32GetDatum(-1));
                } else {
                    f->type = TEXTOID;
                    f->value = CStringGetTextDatum(s);
                }
                break;
            }
            case jbvNumeric: {
                char *s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v.val.numeric)));
                if (is_plain_integer(s)) {
                    f->type = INT8OID;
                    f->value = Int64GetDatum(strtoll(s, nullptr, 10));
                } else {
                    f->type = NUMERICOID;
                    f->value = NumericGetDatum(v.val.numeric);
                }
                break;
            }
            case jbvBool:
                f->type = BOOLOID;
                f->value = BoolGetDatum(v.val.boolean);
                break;
            default:  // jbvBinary: an object or an array
                f->type = JSONBOID;
                f->value = JsonbPGetDatum(JsonbValueToJsonb(&v));
                break;
        }
        ++n;
        key = nullptr;
    }
    *count = n;
    return fields;
}

int64 queue_jsonb(FunctionCallInfo fcinfo, int json_arg, const char *argument, Target target) {
    const char *server_name = name_arg(fcinfo, 0, "server");
    require_arg(fcinfo, json_arg, argument);
    Jsonb *jb = PG_GETARG_JSONB_P(json_arg);
    int count = 0;
    OutboxField *fields = jsonb_fields(jb, argument, &count);
    const char *canonical = JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
    return queue_outbox_entry(server_name, GetUserId(), target, fields, count, canonical, true);
}

// ---------------------------------------------------------------------------
// flush_outbox()

// What a flush run owns in C++: its channel, and the record being filled.
struct FlushRun {
    std::unique_ptr<Channel> channel;
    Record record;
};

void delete_flush_run(void *arg) { delete static_cast<FlushRun *>(arg); }

void make_flush_run(FlushRun *run, const AmpConnection &conn, const Endpoint *endpoint) {
    // The endpoint's limits, per-ID pacing and the project's cap, as for every run.
    DeliveryLimits limits = delivery_limits(*endpoint, static_cast<size_t>(endpoint->max_records),
                                            conn.max_events_per_second, conn.rate_window_ms);
    std::unique_ptr<PayloadFormat> format;
    if (endpoint->form_encoded) format = std::make_unique<IdentificationFormat>(conn.api_key);
    else format = std::make_unique<EventsFormat>(conn.api_key, 5);
    run->channel = std::make_unique<Channel>(std::move(format), conn, endpoint->path, limits,
                                             endpoint->throttle_pause_ms);
}

// One entry read from the outbox, in UTF-8, into the record the delivery takes.
void queue_record(FlushRun *run, int64 entry_id, const char *const texts[7], int32 property_count) {
    Record &r = run->record;
    r = Record{};
    r.row_number = static_cast<uint64_t>(entry_id);
    r.json = texts[0];
    std::string *fields[6] = {&r.user_id, &r.device_id, &r.insert_id, &r.event_type, &r.group_type, &r.group_value};
    for (int i = 0; i < 6; ++i)
        if (texts[1 + i]) *fields[i] = texts[1 + i];
    if (!r.group_type.empty()) r.group_key = r.group_type + '\x1f' + r.group_value;
    r.property_count = static_cast<size_t>(property_count);
    // Reported back by confirmed() once Amplitude accepts it.
    r.state_key = std::to_string(entry_id);
    run->channel->delivery.add(std::move(r));
}

// Removes the entries Amplitude accepted or refused (not those not sent),
// and records the refusals in the run's rejected_records.
void settle(FlushRun *run, RunLog *log) {
    std::vector<ConfirmedRecord> &confirmed = run->channel->delivery.confirmed();
    std::vector<Rejection> &rejections = run->channel->delivery.rejections();
    int n = 0;
    int total = static_cast<int>(confirmed.size() + rejections.size());
    if (total == 0) return;
    Datum *ids = static_cast<Datum *>(palloc(sizeof(Datum) * total));
    for (size_t i = 0; i < confirmed.size(); ++i)
        ids[n++] = Int64GetDatum(strtoll(confirmed[i].state_key.c_str(), nullptr, 10));
    for (size_t i = 0; i < rejections.size(); ++i)
        if (rejections[i].outcome == Outcome::kRejected)
            ids[n++] = Int64GetDatum(static_cast<int64>(rejections[i].record.row_number));
    confirmed.clear();
    run_log_store_rejections(log, &rejections);
    if (n == 0) return;
    Oid argtypes[1] = {INT8ARRAYOID};
    Datum args[1] = {PointerGetDatum(construct_array(ids, n, INT8OID, 8, true, TYPALIGN_DOUBLE))};
    RoleScope scope;
    enter_extension_scope(&scope);
    if (SPI_execute_with_args("DELETE FROM amplitude_sync.outbox WHERE entry_id OPERATOR(pg_catalog.=) "
                              "ANY ($1::pg_catalog.int8[])",
                              1, argtypes, args, nullptr, false, 0) != SPI_OK_DELETE)
        elog(ERROR, "amplitude_sync: could not remove delivered outbox entries");
    leave_role_scope(&scope);
    pfree(ids);
}

int64 count_entries(const char *server_name, Oid role, const char *endpoint) {
    Oid argtypes[3] = {TEXTOID, OIDOID, TEXTOID};
    Datum args[3] = {CStringGetTextDatum(server_name), ObjectIdGetDatum(role), CStringGetTextDatum(endpoint)};
    RoleScope scope;
    enter_extension_scope(&scope);
    if (SPI_execute_with_args("SELECT pg_catalog.count(*) FROM amplitude_sync.outbox WHERE server "
                              "OPERATOR(pg_catalog.=) $1::pg_catalog.name AND queued_by::pg_catalog.oid "
                              "OPERATOR(pg_catalog.=) $2 AND endpoint OPERATOR(pg_catalog.=) $3",
                              3, argtypes, args, nullptr, true, 1) != SPI_OK_SELECT)
        elog(ERROR, "amplitude_sync: could not count outbox entries");
    bool isnull;
    int64 count = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    leave_role_scope(&scope);
    return count;
}

void put_report(Tuplestorestate *store, TupleDesc desc, const RunLog *log, const char *status, int64 rows_read,
                const DeliveryStats *stats) {
    Datum values[10] = {Int64GetDatum(log->run_id),
                        CStringGetTextDatum(status),
                        Int64GetDatum(rows_read),
                        Int64GetDatum(static_cast<int64>(stats->sent)),
                        Int64GetDatum(static_cast<int64>(stats->rejected)),
                        Int64GetDatum(static_cast<int64>(stats->not_sent)),
                        Int64GetDatum(0),
                        Int64GetDatum(static_cast<int64>(stats->requests)),
                        Int64GetDatum(static_cast<int64>(stats->retries)),
                        run_log_elapsed(log)};
    bool nulls[10] = {false, false, false, false, false, false, false, false, false, false};
    tuplestore_putvalues(store, desc, values, nulls);
}

// Delivers the entries of one role to one endpoint: one run.
void flush_group(const ForeignServer *server, Oid role, const char *endpoint_path, Tuplestorestate *store,
                 TupleDesc desc) {
    const Endpoint *endpoint = endpoint_by_path(endpoint_path);
    RunLog log;
    run_log_start_as(&log, role, "flush_outbox", server->servername, endpoint->path, 0, nullptr, "running", nullptr);
    RunTimings timings = {0, 0, 0};
    AmpConnection conn;
    if (!load_connection_as(server, role, &conn, true)) {
        // Never another role's key: the entries wait for a mapping.
        int64 waiting = count_entries(server->servername, role, endpoint->path);
        DeliveryStats stats;
        stats.not_sent = static_cast<uint64_t>(waiting);
        const char *role_name = GetUserNameFromId(role, false);
        char *error = psprintf("role \"%s\" has no user mapping with an api_key (or no USAGE) on server \"%s\"; "
                               "its %lld outbox entries stay queued",
                               role_name, server->servername, static_cast<long long>(waiting));
        run_log_finish(&log, "failed", waiting, 0, &stats, error, &timings);
        ereport(WARNING, (errmsg("%s", error), errdetail("Run %lld.", static_cast<long long>(log.run_id)),
                          errhint("Give that role a mapping of its own: CREATE USER MAPPING FOR %s SERVER %s OPTIONS (api_key '...'); then flush again.",
                                  quote_identifier(role_name), quote_identifier(server->servername))));
        put_report(store, desc, &log, "failed", waiting, &stats);
        return;
    }

    MemoryContext run_context = AllocSetContextCreate(CurrentMemoryContext, "amplitude_sync flush", ALLOCSET_DEFAULT_SIZES);
    MemoryContext outer = MemoryContextSwitchTo(run_context);
    FlushRun *run = nullptr;
    AMP_CXX(run = new FlushRun());
    MemoryContextCallback *cleanup =
        static_cast<MemoryContextCallback *>(MemoryContextAllocZero(run_context, sizeof(MemoryContextCallback)));
    cleanup->func = delete_flush_run;
    cleanup->arg = run;
    MemoryContextRegisterResetCallback(run_context, cleanup);
    AMP_CXX(make_flush_run(run, conn, endpoint));
    MemoryContext batch_context = AllocSetContextCreate(run_context, "amplitude_sync flush batch", ALLOCSET_DEFAULT_SIZES);

    int64 rows_read = 0, last_id = 0;
    instr_time read_time;
    INSTR_TIME_SET_ZERO(read_time);
    for (;;) {
        CHECK_FOR_INTERRUPTS();
        MemoryContextSwitchTo(batch_context);
        instr_time started, now;
        INSTR_TIME_SET_CURRENT(started);
        Oid argtypes[5] = {TEXTOID, OIDOID, TEXTOID, INT8OID, INT4OID};
        Datum args[5] = {CStringGetTextDatum(server->servername), ObjectIdGetDatum(role),
                         CStringGetTextDatum(endpoint->path), Int64GetDatum(last_id), Int32GetDatum(kFlushBatch)};
        RoleScope scope;
        enter_extension_scope(&scope);
        // Entries another flush holds are skipped (it delivers them); those
        // of transactions not yet committed are not visible.
        if (SPI_execute_with_args(
                "SELECT entry_id, payload::pg_catalog.text, user_id, device_id, insert_id, event_type, group_type, "
                "group_value, property_count FROM amplitude_sync.outbox "
                "WHERE server OPERATOR(pg_catalog.=) $1::pg_catalog.name AND queued_by::pg_catalog.oid "
                "OPERATOR(pg_catalog.=) $2 AND endpoint OPERATOR(pg_catalog.=) $3 AND entry_id OPERATOR(pg_catalog.>) $4 "
                "ORDER BY entry_id LIMIT $5 FOR UPDATE SKIP LOCKED",
                5, argtypes, args, nullptr, false, 0) != SPI_OK_SELECT)
            elog(ERROR, "amplitude_sync: could not read the outbox");
        leave_role_scope(&scope);
        uint64 fetched = SPI_processed;
        SPITupleTable *table = SPI_tuptable;
        INSTR_TIME_SET_CURRENT(now);
        INSTR_TIME_SUBTRACT(now, started);
        INSTR_TIME_ADD(read_time, now);
        for (uint64 i = 0; i < fetched && run->channel->delivery.state() == DeliveryState::kRunning; ++i) {
            bool isnull;
            HeapTuple tuple = table->vals[i];
            int64 entry_id = DatumGetInt64(SPI_getbinval(tuple, table->tupdesc, 1, &isnull));
            const char *texts[7];
            for (int c = 0; c < 7; ++c) {
                char *t = SPI_getvalue(tuple, table->tupdesc, 2 + c);
                texts[c] = t ? pg_server_to_any(t, static_cast<int>(strlen(t)), PG_UTF8) : nullptr;
            }
            int32 property_count = DatumGetInt32(SPI_getbinval(tuple, table->tupdesc, 9, &isnull));
            last_id = entry_id;
            ++rows_read;
            AMP_CXX(queue_record(run, entry_id, texts, property_count));
        }
        SPI_freetuptable(table);
        MemoryContextSwitchTo(run_context);
        MemoryContextReset(batch_context);
        settle(run, &log);
        if (fetched < static_cast<uint64>(kFlushBatch) || run->channel->delivery.state() != DeliveryState::kRunning)
            break;
    }
    AMP_CXX(run->channel->delivery.finish());
    if (run->channel->delivery.state() == DeliveryState::kInterrupted) {
        CHECK_FOR_INTERRUPTS();
        ereport(ERROR, (errcode(ERRCODE_QUERY_CANCELED), errmsg("canceling statement due to user request")));
    }
    settle(run, &log);
    const DeliveryStats stats = run->channel->delivery.stats();
    DeliveryState state = run->channel->delivery.state();
    char *error = nullptr;
    if (state != DeliveryState::kRunning) {
        error = psprintf("%s; %llu entries stay queued", run->channel->delivery.error().c_str(),
                         static_cast<unsigned long long>(stats.not_sent));
        // What was not read is not sent either: the next flush takes it.
    }
    timings.read_seconds = INSTR_TIME_GET_DOUBLE(read_time);
    AMP_CXX(timings.send_seconds = std::chrono::duration<double>(run->channel->delivery.network_time()).count());
    const char *status = error ? "failed" : "succeeded";
    run_log_finish(&log, status, rows_read, 0, &stats, error, &timings);
    if (error)
        ereport(WARNING, (errmsg("amplitude_sync outbox flush failed: %s", error),
                          errdetail("Run %lld: %llu entries were sent, %llu rejected and %llu not sent.",
                                    static_cast<long long>(log.run_id), static_cast<unsigned long long>(stats.sent),
                                    static_cast<unsigned long long>(stats.rejected),
                                    static_cast<unsigned long long>(stats.not_sent)),
                          errhint("Entries not sent stay in amplitude_sync.outbox; the next flush sends them.")));
    MemoryContextSwitchTo(outer);
    put_report(store, desc, &log, status, rows_read, &stats);
    MemoryContextDelete(run_context);
}

}  // namespace

extern "C" {

PG_FUNCTION_INFO_V1(amplitude_sync_track);

// track(server name, event jsonb) RETURNS bigint
Datum amplitude_sync_track(PG_FUNCTION_ARGS) {
    PG_RETURN_INT64(queue_jsonb(fcinfo, 1, "event", Target::kEvents));
}

PG_FUNCTION_INFO_V1(amplitude_sync_outbox_identify);

// identify(server name, object text, identification jsonb) RETURNS bigint
Datum amplitude_sync_outbox_identify(PG_FUNCTION_ARGS) {
    const char *object = text_arg(fcinfo, 1, "object");
    CallArguments arguments;
    arguments.object = object;
    CallOptions options;
    AMP_CXX(options = check_call_arguments(arguments));
    if (options.target == Target::kEvents)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("invalid value for argument \"object\": \"%s\"", object),
                        errhint("Use \"user\", \"device\" or \"group\"; events have amplitude_sync.track().")));
    PG_RETURN_INT64(queue_jsonb(fcinfo, 2, "identification", options.target));
}

PG_FUNCTION_INFO_V1(amplitude_sync_flush_outbox);

// flush_outbox(server name) RETURNS SETOF amplitude_sync.run_report
Datum amplitude_sync_flush_outbox(PG_FUNCTION_ARGS) {
    ForeignServer *server = amplitude_server(name_arg(fcinfo, 0, "server"));
    if (!has_server_usage(server, GetUserId()))
        aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_FOREIGN_SERVER, server->servername);
    ReturnSetInfo *rsinfo = reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo);
    if (!rsinfo || !IsA(rsinfo, ReturnSetInfo) || !(rsinfo->allowedModes & SFRM_Materialize))
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("flush_outbox must be called where a set is accepted"),
                        errhint("SELECT * FROM amplitude_sync.flush_outbox('server');")));
    TupleDesc desc;
    if (get_call_result_type(fcinfo, nullptr, &desc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "amplitude_sync: return type must be a row type");
    MemoryContext outer = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
    desc = CreateTupleDescCopy(desc);
    Tuplestorestate *store = tuplestore_begin_heap(true, false, work_mem);
    MemoryContextSwitchTo(outer);
    rsinfo->returnMode = SFRM_Materialize;
    rsinfo->setResult = store;
    rsinfo->setDesc = desc;

    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    // The roles and endpoints with entries: each is one run, with that
    // role's own key. A role flushes the entries of the roles it is a
    // member of (a superuser, or the background worker, all of them).
    Oid argtypes[1] = {TEXTOID};
    Datum args[1] = {CStringGetTextDatum(server->servername)};
    RoleScope scope;
    enter_extension_scope(&scope);
    if (SPI_execute_with_args("SELECT DISTINCT queued_by::pg_catalog.oid, endpoint FROM amplitude_sync.outbox "
                              "WHERE server OPERATOR(pg_catalog.=) $1::pg_catalog.name ORDER BY 1, 2",
                              1, argtypes, args, nullptr, true, 0) != SPI_OK_SELECT)
        elog(ERROR, "amplitude_sync: could not read the outbox");
    leave_role_scope(&scope);
    int groups = static_cast<int>(SPI_processed);
    Oid *roles = static_cast<Oid *>(palloc(sizeof(Oid) * (groups + 1)));
    char **endpoints = static_cast<char **>(palloc(sizeof(char *) * (groups + 1)));
    for (int i = 0; i < groups; ++i) {
        bool isnull;
        roles[i] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
        endpoints[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
    }
    Oid caller = GetUserId();
    for (int i = 0; i < groups; ++i) {
        if (!is_member_of_role(caller, roles[i])) continue;
        flush_group(server, roles[i], endpoints[i], store, desc);
    }
    SPI_finish();
    return (Datum)0;
}

}  // extern "C"
