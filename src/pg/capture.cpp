// Table captures: capture() keeps a mapping (a select list over the
// changed row, "new") as a view owned by the caller, checks its columns
// with the field mapper, and creates AFTER row triggers on the table; the
// trigger evaluates the mapping for each changed row, as the capture's
// owner and read-only, and queues the result in the outbox (outbox.cpp)
// in the writing transaction. uncapture() removes captures.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "call_options.hpp"
#include "cxx_guard.hpp"
#include "event_encoder.hpp"
#include "identify_encoder.hpp"

#include "connection.hpp"
#include "datum_values.hpp"
#include "outbox.hpp"
#include "pg_headers.hpp"
#include "role_scope.hpp"
#include "sql_arguments.hpp"
#include "saved_syncs.hpp"


using namespace amplitude_sync;

namespace {

const char *const kOperations[3] = {"insert", "update", "delete"};

const char *qualified_relation(Oid relation) {
    return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relation)), get_rel_name(relation));
}

// Plans the mapping view's columns with the field mapper (C++ only).
void plan_columns(Target target, const std::vector<ColumnInput> &columns) {
    if (target == Target::kEvents) {
        (void)plan_event_columns(columns);
        return;
    }
    IdentifyOptions options;
    options.object = target == Target::kUser ? ProfileObject::kUser
                     : target == Target::kDevice ? ProfileObject::kDevice
                                                 : ProfileObject::kGroup;
    options.idempotent_only = true;
    (void)plan_identify_columns(columns, options);
}

void check_mapping_columns(Oid view, Target target) {
    Relation rel = relation_open(view, AccessShareLock);
    TupleDesc desc = RelationGetDescr(rel);
    int natts = desc->natts;
    const char **names = static_cast<const char **>(palloc(sizeof(char *) * (natts + 1)));
    TypeCategory *categories = static_cast<TypeCategory *>(palloc(sizeof(TypeCategory) * (natts + 1)));
    for (int i = 0; i < natts; ++i) {
        ColumnReader reader;
        init_column_reader(&reader, TupleDescAttr(desc, i)->atttypid);
        names[i] = pstrdup(NameStr(TupleDescAttr(desc, i)->attname));
        categories[i] = reader.category;
    }
    relation_close(rel, AccessShareLock);
    AMP_CXX(std::vector<ColumnInput> columns; for (int i = 0; i < natts; ++i) columns.push_back({names[i], categories[i]});
            plan_columns(target, columns));
}

// The mapping view depends on the server: DROP SERVER needs CASCADE.
void depend_on_server(Oid view, const ForeignServer *server) {
    ObjectAddress depender, referenced;
    ObjectAddressSet(depender, RelationRelationId, view);
    ObjectAddressSet(referenced, ForeignServerRelationId, server->serverid);
    recordDependencyOn(&depender, &referenced, DEPENDENCY_NORMAL);
    CommandCounterIncrement();
}

void run_as_extension(const char *sql, int expected) {
    RoleScope scope;
    enter_extension_scope(&scope);
    if (SPI_execute(sql, false, 0) != expected) elog(ERROR, "amplitude_sync: could not run: %s", sql);
    leave_role_scope(&scope);
}

void drop_triggers(int capture_id, Oid source, const bool on[3]) {
    for (int i = 0; i < 3; ++i) {
        if (!on[i]) continue;
        const char *op = kOperations[i];
        run_as_extension(psprintf("DROP TRIGGER IF EXISTS %s ON %s",
                                  quote_identifier(psprintf("amplitude_sync_capture_%d_%s", capture_id, op)),
                                  qualified_relation(source)),
                         SPI_OK_UTILITY);
    }
}

// What a backend keeps of a capture its trigger ran for: the mapping's
// plan (prepared as the owner, with the capture's search_path) and who
// sends. Capture ids are never reused; a dropped capture has no trigger.
struct CaptureCache {
    int capture_id;  // hash key
    bool valid;
    Oid source;
    Oid owner;
    Target target;
    char server[NAMEDATALEN];
    char *search_path;  // TopMemoryContext
    SPIPlanPtr plan;
};

HTAB *capture_cache = nullptr;

CaptureCache *load_capture(int capture_id, Relation relation) {
    if (!capture_cache) {
        HASHCTL ctl;
        memset(&ctl, 0, sizeof(ctl));
        ctl.keysize = sizeof(int);
        ctl.entrysize = sizeof(CaptureCache);
        capture_cache = hash_create("amplitude_sync captures", 16, &ctl, HASH_ELEM | HASH_BLOBS);
    }
    bool found;
    CaptureCache *entry = static_cast<CaptureCache *>(hash_search(capture_cache, &capture_id, HASH_ENTER, &found));
    if (found && entry->valid) return entry;
    entry->valid = false;
    Oid argtypes[1] = {INT4OID};
    Datum args[1] = {Int32GetDatum(capture_id)};
    RoleScope scope;
    enter_extension_scope(&scope);
    if (SPI_execute_with_args("SELECT cap.server::pg_catalog.text, cap.object, cap.mapping, cap.search_path, "
                              "cap.source::pg_catalog.oid, c.relowner FROM amplitude_sync.captures cap "
                              "JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) cap.mapping_view::pg_catalog.oid "
                              "WHERE cap.capture_id OPERATOR(pg_catalog.=) $1",
                              1, argtypes, args, nullptr, true, 1) != SPI_OK_SELECT)
        elog(ERROR, "amplitude_sync: could not read the capture");
    leave_role_scope(&scope);
    if (SPI_processed != 1)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
                        errmsg("capture %d of table %s does not exist", capture_id, RelationGetRelationName(relation)),
                        errhint("Its trigger outlived it: DROP TRIGGER amplitude_sync_capture_%d_... on the table, "
                                "or capture the table again.", capture_id)));
    HeapTuple tuple = SPI_tuptable->vals[0];
    TupleDesc desc = SPI_tuptable->tupdesc;
    bool isnull;
    const char *server = SPI_getvalue(tuple, desc, 1);
    const char *object = SPI_getvalue(tuple, desc, 2);
    const char *mapping = SPI_getvalue(tuple, desc, 3);
    const char *search_path = SPI_getvalue(tuple, desc, 4);
    Oid source = DatumGetObjectId(SPI_getbinval(tuple, desc, 5, &isnull));
    Oid owner = DatumGetObjectId(SPI_getbinval(tuple, desc, 6, &isnull));
    if (source != RelationGetRelid(relation))
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("capture %d does not capture table %s", capture_id, RelationGetRelationName(relation))));
    CallArguments arguments;
    arguments.object = object;
    CallOptions options;
    AMP_CXX(options = check_call_arguments(arguments));
    // The row arrives as one parameter of the table's row type.
    Oid rowtype = relation->rd_rel->reltype;
    const char *query = psprintf("SELECT %s\nFROM (SELECT ($1).*) AS new", mapping);
    enter_role_scope(&scope, owner, search_path, true);
    SPIPlanPtr plan = SPI_prepare(query, 1, &rowtype);
    if (!plan) elog(ERROR, "amplitude_sync: could not prepare the mapping of capture %d", capture_id);
    leave_role_scope(&scope);
    if (SPI_keepplan(plan) != 0) elog(ERROR, "amplitude_sync: could not keep the mapping's plan");
    entry->source = source;
    entry->owner = owner;
    entry->target = options.target;
    snprintf(entry->server, NAMEDATALEN, "%s", server);
    entry->search_path = MemoryContextStrdup(TopMemoryContext, search_path);
    entry->plan = plan;
    entry->valid = true;
    return entry;
}

}  // namespace

extern "C" {

PG_FUNCTION_INFO_V1(amplitude_sync_capture);

// capture(source regclass, server name, object text, mapping text,
//         on_insert bool, on_update bool, on_delete bool) RETURNS int
Datum amplitude_sync_capture(PG_FUNCTION_ARGS) {
    // (mapping may be NULL: new.*)
    const char *required[7] = {"source", "server", "object", nullptr, "on_insert", "on_update", "on_delete"};
    for (int i = 0; i < 7; ++i)
        if (required[i]) require_arg(fcinfo, i, required[i]);
    Oid source = PG_GETARG_OID(0);
    const char *server_name = name_arg(fcinfo, 1, "server");
    const char *object = text_arg(fcinfo, 2, "object");
    const char *mapping = PG_ARGISNULL(3) ? "new.*" : text_to_cstring(PG_GETARG_TEXT_PP(3));
    bool on[3] = {PG_GETARG_BOOL(4), PG_GETARG_BOOL(5), PG_GETARG_BOOL(6)};

    char relkind = get_rel_relkind(source);
    if (relkind != RELKIND_RELATION)
        ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE),
                        errmsg("\"%s\" is not a table", get_rel_name(source) ? get_rel_name(source) : "?"),
                        errdetail("Only plain tables can be captured (not views, partitioned or foreign tables)."),
                        errhint("Capture each partition.")));
    Oid schema = get_rel_namespace(source);
    if (schema == PG_CATALOG_NAMESPACE || schema == get_namespace_oid("amplitude_sync", false) ||
        isAnyTempNamespace(schema))
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("table %s cannot be captured", qualified_relation(source)),
                        errdetail("Catalogs, the extension's own tables and temporary tables are not captured.")));
    AclResult acl = pg_class_aclcheck(source, GetUserId(), ACL_TRIGGER);
    if (acl != ACLCHECK_OK) aclcheck_error(acl, OBJECT_TABLE, get_rel_name(source));
    CallArguments arguments;
    arguments.object = object;
    CallOptions options;
    AMP_CXX(options = check_call_arguments(arguments));
    if (on[2] && options.target != Target::kEvents)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("only event captures can queue deleted rows"),
                        errhint("Capture deletes as events (object => 'event'), e.g. 'Account Deleted' AS event_type.")));
    if (!on[0] && !on[1] && !on[2])
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("a capture needs at least one of "
                                                                         "on_insert, on_update and on_delete")));
    // The owner's USAGE and mapping, now: entries it could never send are
    // refused at the start rather than reported by every flush.
    ForeignServer *server = amplitude_server(server_name);
    AmpConnection conn;
    load_connection_as(server, GetUserId(), &conn, false);

    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    RoleScope scope;
    enter_extension_scope(&scope);
    if (SPI_execute("SELECT pg_catalog.nextval('amplitude_sync.captures_capture_id_seq'::pg_catalog.regclass)", false,
                    1) != SPI_OK_SELECT)
        elog(ERROR, "amplitude_sync: could not number the capture");
    bool isnull;
    int capture_id =
        static_cast<int>(DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)));
    leave_role_scope(&scope);

    // The mapping is checked (one read-only SELECT), made into a view by
    // the caller, and its columns planned by the field mapper.
    const char *query = psprintf("SELECT %s\nFROM %s AS new", mapping, qualified_relation(source));
    Oid view = create_source_view(psprintf("capture_%d_mapping", capture_id),
                                  psprintf("capture %d of table %s", capture_id, qualified_relation(source)), query,
                                  GetUserId());
    check_mapping_columns(view, options.target);
    depend_on_server(view, server);

    Oid argtypes[10] = {INT4OID, OIDOID, TEXTOID, TEXTOID, TEXTOID, OIDOID, TEXTOID, BOOLOID, BOOLOID, BOOLOID};
    Datum args[10] = {Int32GetDatum(capture_id),          ObjectIdGetDatum(source),
                      CStringGetTextDatum(server->servername), CStringGetTextDatum(options.object),
                      CStringGetTextDatum(mapping),       ObjectIdGetDatum(view),
                      CStringGetTextDatum(namespace_search_path), BoolGetDatum(on[0]),
                      BoolGetDatum(on[1]),                BoolGetDatum(on[2])};
    enter_extension_scope(&scope);
    if (SPI_execute_with_args(
            "INSERT INTO amplitude_sync.captures (capture_id, source, server, object, mapping, mapping_view, "
            "search_path, on_insert, on_update, on_delete) VALUES ($1, $2::pg_catalog.regclass, $3, $4, $5, "
            "$6::pg_catalog.regclass, $7, $8, $9, $10)",
            10, argtypes, args, nullptr, false, 0) != SPI_OK_INSERT)
        elog(ERROR, "amplitude_sync: could not save the capture");
    leave_role_scope(&scope);
    // The triggers are the extension's (their function is not executable
    // by others); the caller's TRIGGER privilege was checked above. An
    // update queues only a row that changed.
    for (int op = 0; op < 3; ++op) {
        if (!on[op]) continue;
        run_as_extension(
            psprintf("CREATE TRIGGER %s AFTER %s ON %s FOR EACH ROW %s EXECUTE FUNCTION "
                     "amplitude_sync._capture_trigger('%d')",
                     quote_identifier(psprintf("amplitude_sync_capture_%d_%s", capture_id, kOperations[op])),
                     op == 0 ? "INSERT" : op == 1 ? "UPDATE" : "DELETE", qualified_relation(source),
                     op == 1 ? "WHEN (OLD.* IS DISTINCT FROM NEW.*)" : "", capture_id),
            SPI_OK_UTILITY);
    }
    SPI_finish();
    PG_RETURN_INT32(capture_id);
}

PG_FUNCTION_INFO_V1(amplitude_sync_uncapture);

// uncapture(source regclass, server name, object text) RETURNS int
Datum amplitude_sync_uncapture(PG_FUNCTION_ARGS) {
    require_arg(fcinfo, 0, "source");
    Oid source = PG_GETARG_OID(0);
    Oid argtypes[3] = {OIDOID, TEXTOID, TEXTOID};
    Datum args[3] = {ObjectIdGetDatum(source), PG_ARGISNULL(1) ? (Datum)0 : CStringGetTextDatum(NameStr(*PG_GETARG_NAME(1))),
                     PG_ARGISNULL(2) ? (Datum)0 : PG_GETARG_DATUM(2)};
    char nulls[4] = "   ";
    if (PG_ARGISNULL(1)) nulls[1] = 'n';
    if (PG_ARGISNULL(2)) nulls[2] = 'n';
    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    RoleScope scope;
    enter_extension_scope(&scope);
    if (SPI_execute_with_args(
            "SELECT cap.capture_id, cap.mapping_view::pg_catalog.oid, c.relowner, cap.on_insert, cap.on_update, "
            "cap.on_delete FROM amplitude_sync.captures cap "
            "JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) cap.mapping_view::pg_catalog.oid "
            "WHERE cap.source::pg_catalog.oid OPERATOR(pg_catalog.=) $1 "
            "AND ($2 IS NULL OR cap.server OPERATOR(pg_catalog.=) $2::pg_catalog.name) "
            "AND ($3 IS NULL OR cap.object OPERATOR(pg_catalog.=) pg_catalog.lower($3)) ORDER BY 1",
            3, argtypes, args, nulls, true, 0) != SPI_OK_SELECT)
        elog(ERROR, "amplitude_sync: could not read the captures");
    leave_role_scope(&scope);
    int found = static_cast<int>(SPI_processed);
    int *ids = static_cast<int *>(palloc(sizeof(int) * (found + 1)));
    Oid *views = static_cast<Oid *>(palloc(sizeof(Oid) * (found + 1)));
    Oid *owners = static_cast<Oid *>(palloc(sizeof(Oid) * (found + 1)));
    bool(*on)[3] = static_cast<bool(*)[3]>(palloc(sizeof(bool[3]) * (found + 1)));
    for (int i = 0; i < found; ++i) {
        bool isnull;
        for (int op = 0; op < 3; ++op)
            on[i][op] = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 4 + op, &isnull));
        ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
        views[i] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
        owners[i] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull));
    }
    int removed = 0;
    Oid caller = GetUserId();
    for (int i = 0; i < found; ++i) {
        // Captures of roles the caller is not a member of are not its own
        // (and not visible to it).
        if (!has_privs_of_role(caller, owners[i])) continue;
        drop_triggers(ids[i], source, on[i]);
        Oid idtype[1] = {INT4OID};
        Datum id[1] = {Int32GetDatum(ids[i])};
        enter_extension_scope(&scope);
        if (SPI_execute_with_args("DELETE FROM amplitude_sync.captures WHERE capture_id OPERATOR(pg_catalog.=) $1",
                                  1, idtype, id, nullptr, false, 0) != SPI_OK_DELETE)
            elog(ERROR, "amplitude_sync: could not remove the capture");
        leave_role_scope(&scope);
        run_as_extension(psprintf("DROP VIEW %s", qualified_relation(views[i])), SPI_OK_UTILITY);
        ++removed;
    }
    SPI_finish();
    PG_RETURN_INT32(removed);
}

PG_FUNCTION_INFO_V1(amplitude_sync_capture_trigger);

// The AFTER row trigger of a capture; its argument is the capture_id.
Datum amplitude_sync_capture_trigger(PG_FUNCTION_ARGS) {
    if (!CALLED_AS_TRIGGER(fcinfo))
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("amplitude_sync._capture_trigger() may only be called as a trigger")));
    TriggerData *data = reinterpret_cast<TriggerData *>(fcinfo->context);
    if (!TRIGGER_FIRED_AFTER(data->tg_event) || !TRIGGER_FIRED_FOR_ROW(data->tg_event) ||
        data->tg_trigger->tgnargs != 1)
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("amplitude_sync._capture_trigger() must be an AFTER row trigger made by capture()")));
    int capture_id = atoi(data->tg_trigger->tgargs[0]);
    Relation relation = data->tg_relation;
    HeapTuple row = TRIGGER_FIRED_BY_UPDATE(data->tg_event) ? data->tg_newtuple : data->tg_trigtuple;

    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    CaptureCache *capture = load_capture(capture_id, relation);
    Datum argument = heap_copy_tuple_as_datum(row, RelationGetDescr(relation));
    // The mapping runs as the capture's owner, read-only, with its path.
    RoleScope scope;
    enter_role_scope(&scope, capture->owner, capture->search_path, true);
    int rc = SPI_execute_plan(capture->plan, &argument, nullptr, true, 0);
    leave_role_scope(&scope);
    if (rc != SPI_OK_SELECT) elog(ERROR, "amplitude_sync: the mapping of capture %d failed", capture_id);
    SPITupleTable *table = SPI_tuptable;
    uint64 rows = SPI_processed;
    TupleDesc desc = table->tupdesc;
    OutboxField *fields = static_cast<OutboxField *>(palloc0(sizeof(OutboxField) * (desc->natts + 1)));
    for (uint64 r = 0; r < rows; ++r) {
        for (int i = 0; i < desc->natts; ++i) {
            Form_pg_attribute attr = TupleDescAttr(desc, i);
            fields[i].name = NameStr(attr->attname);
            fields[i].type = attr->atttypid;
            fields[i].value = SPI_getbinval(table->vals[r], desc, i + 1, &fields[i].is_null);
        }
        (void)queue_outbox_entry(capture->server, capture->owner, capture->target, fields, desc->natts, "", false);
    }
    SPI_finish();
    return PointerGetDatum(nullptr);
}

}  // extern "C"
