// Saved syncs: create_sync, alter_sync, drop_sync, resync, run_sync and
// preview_sync. A sync's source is a view owned by the sync's owner
// (amplitude_sync.sync_<id>_source); every statement that executes it
// runs as that owner, read-only (role_scope.hpp), whoever calls; every
// write to the extension's tables runs as the extension's owner.
#include <cstring>

#include "call_options.hpp"
#include "cxx_guard.hpp"

#include "connection.hpp"
#include "pg_headers.hpp"
#include "role_scope.hpp"
#include "sql_arguments.hpp"
#include "run_log.hpp"
#include "saved_syncs.hpp"
#include "send_run.hpp"
#include "source_query.hpp"

using namespace amplitude_sync;

namespace {

// A saved sync as stored, visible to the current role.
struct SavedSync {
    int sync_id;
    Oid owner;  // its source view's owner
    const char *name;
    const char *server;
    const char *object;
    const char *behaviour;
    const char *api;
    const char *source;
    Oid source_view;
    const char *search_path;
    const char *operations;
    const char *nulls;
    const char *properties_event;  // or NULL
    int batch_size;                // kNotGiven: the endpoint's maximum
    int min_id_length;
    // Watermark mode (events): NULL cursor_column: none.
    const char *cursor_column;
    const char *lookback;
    bool has_watermark;
    int64 watermark;
    bool has_floor;
    int64 ledger_floor;
};

const char *copied_value(HeapTuple tuple, TupleDesc desc, int column) {
    char *value = SPI_getvalue(tuple, desc, column);
    if (!value) return nullptr;
    size_t len = strlen(value) + 1;
    char *copy = static_cast<char *>(SPI_palloc(len));
    memcpy(copy, value, len);
    return copy;
}

// A member that may use the owner's rights (or become it) manages its syncs;
// PostgreSQL 16's memberships WITH INHERIT FALSE, SET FALSE do not count.
bool may_act_as(Oid member, Oid owner) {
#if PG_VERSION_NUM >= 160000
    return has_privs_of_role(member, owner) || member_can_set_role(member, owner);
#else
    return is_member_of_role(member, owner);
#endif
}

// SPI connected. Finds the sync named name that the current role may manage
// (a member of its owner's role); raises 42704 otherwise, as for a sync that
// does not exist.
void load_saved_sync(const char *name, SavedSync *sync) {
    Oid caller = GetUserId();
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[1] = {TEXTOID};
    Datum args[1] = {CStringGetTextDatum(name)};
    int rc = SPI_execute_with_args(
        "SELECT s.sync_id, c.relowner, s.name, COALESCE((SELECT f.srvname::pg_catalog.text "
        "FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_foreign_server f ON f.oid OPERATOR(pg_catalog.=) d.refobjid "
        "WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
        "AND d.objid OPERATOR(pg_catalog.=) s.source_view::pg_catalog.oid "
        "AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_foreign_server'::pg_catalog.regclass), "
        "s.server::pg_catalog.text), s.object, s.behaviour, s.source, "
        "s.source_view::pg_catalog.oid, s.search_path, s.operations::pg_catalog.text, s.nulls, s.properties_event, "
        "s.batch_size, s.min_id_length, s.api, s.cursor_column, s.lookback, s.watermark, s.ledger_floor "
        "FROM amplitude_sync.syncs s JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) s.source_view "
        "WHERE s.name OPERATOR(pg_catalog.=) $1",
        1, argtypes, args, nullptr, true, 1);
    leave_role_scope(&scope);
    if (rc != SPI_OK_SELECT) elog(ERROR, "amplitude_sync: could not read sync \"%s\"", name);
    bool isnull = true;
    Oid owner = InvalidOid;
    if (SPI_processed == 1) owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
    if (SPI_processed != 1 || !may_act_as(caller, owner))
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT), errmsg("sync \"%s\" does not exist", name),
                        errhint("Syncs of roles you are not a member of are not visible; see amplitude_sync.syncs.")));
    HeapTuple tuple = SPI_tuptable->vals[0];
    TupleDesc desc = SPI_tuptable->tupdesc;
    sync->sync_id = DatumGetInt32(SPI_getbinval(tuple, desc, 1, &isnull));
    sync->owner = owner;
    sync->name = copied_value(tuple, desc, 3);
    sync->server = copied_value(tuple, desc, 4);
    sync->object = copied_value(tuple, desc, 5);
    sync->behaviour = copied_value(tuple, desc, 6);
    sync->source = copied_value(tuple, desc, 7);
    sync->source_view = DatumGetObjectId(SPI_getbinval(tuple, desc, 8, &isnull));
    sync->search_path = copied_value(tuple, desc, 9);
    sync->operations = copied_value(tuple, desc, 10);
    sync->nulls = copied_value(tuple, desc, 11);
    sync->properties_event = copied_value(tuple, desc, 12);
    Datum batch = SPI_getbinval(tuple, desc, 13, &isnull);
    sync->batch_size = isnull ? kNotGiven : DatumGetInt32(batch);
    sync->min_id_length = DatumGetInt32(SPI_getbinval(tuple, desc, 14, &isnull));
    sync->api = copied_value(tuple, desc, 15);
    sync->cursor_column = copied_value(tuple, desc, 16);
    sync->lookback = copied_value(tuple, desc, 17);
    Datum mark = SPI_getbinval(tuple, desc, 18, &isnull);
    sync->has_watermark = !isnull;
    sync->watermark = isnull ? 0 : DatumGetInt64(mark);
    mark = SPI_getbinval(tuple, desc, 19, &isnull);
    sync->has_floor = !isnull;
    sync->ledger_floor = isnull ? 0 : DatumGetInt64(mark);
}

CallArguments sync_arguments(const SavedSync *sync) {
    CallArguments a;
    a.object = sync->object;
    a.behaviour = sync->behaviour;
    a.nulls = sync->nulls;
    a.properties_event = sync->properties_event;
    a.batch_size = sync->batch_size;
    a.min_id_length = sync->min_id_length;
    a.cursor_column = sync->cursor_column;
    a.lookback = sync->lookback;
    return a;
}

// A watermark sync's cursor column in its source view: its type (one
// cursor_value() supports) and its lookback in the cursor's units.
Oid cursor_column_type(const SavedSync *sync, int64 *lookback) {
    AttrNumber attnum = get_attnum(sync->source_view, sync->cursor_column);
    if (attnum == InvalidAttrNumber)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
                        errmsg("cursor_column \"%s\" is not a column of the source of sync \"%s\"",
                               sync->cursor_column, sync->name),
                        errhint("Name a column of the source that grows with new rows, such as created_at or a "
                                "serial id.")));
    Oid type = getBaseType(get_atttype(sync->source_view, attnum));
    if (!cursor_type_supported(type))
        ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH),
                        errmsg("cursor_column \"%s\" has type %s, which cannot be a watermark", sync->cursor_column,
                               format_type_be(type)),
                        errhint("Use a column of type timestamptz, timestamp, date, bigint, integer or smallint.")));
    long long units = 0;
    AMP_CXX(units = lookback_units(sync->lookback, cursor_type_is_time(type)));
    *lookback = static_cast<int64>(units);
    return type;
}

// The expression that names a record of the sync's object in its source.
const char *record_key_expression(Target target) {
    switch (target) {
        case Target::kUser: return "src.user_id::pg_catalog.text";
        case Target::kDevice: return "src.device_id::pg_catalog.text";
        case Target::kGroup:
            return "src.group_type::pg_catalog.text OPERATOR(pg_catalog.||) pg_catalog.chr(31) "
                   "OPERATOR(pg_catalog.||) src.group_value::pg_catalog.text";
        case Target::kEvents: return "src.insert_id::pg_catalog.text";
    }
    return "";
}

const char *qualified_relation_name(Oid relation) {
    return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relation)), get_rel_name(relation));
}

// The spec of a run (or preview, or check) of a sync: its checked options,
// its source read in the owner's scope. with_state: the query also returns
// the stored fingerprint and the record key (run and preview).
void sync_spec(const SavedSync *sync, const char *api, bool with_state, SendSpec *spec) {
    *spec = SendSpec{};
    CallArguments arguments = sync_arguments(sync);
    arguments.api = api;
    AMP_CXX(spec->options = check_call_arguments(arguments));
    spec->function_name = "run_sync";
    spec->saved_sync = true;
    spec->operations_json = sync->operations;
    spec->run_as = sync->owner;
    spec->source_search_path = sync->search_path;
    spec->sync_name = sync->name;
    const char *view = qualified_relation_name(sync->source_view);
    if (!with_state) {
        spec->query = psprintf("SELECT * FROM %s", view);
        return;
    }
    spec->sync_id = sync->sync_id;
    const char *key = record_key_expression(spec->options.target);
    // The state is not joined: the run loads it once (state_index.hpp).
    spec->query = psprintf("SELECT src.*, %s AS \"amplitude_sync.record_key\" FROM %s src", key, view);
    if (!sync->cursor_column) return;
    // Watermark mode: rows at or above the watermark minus the lookback, and
    // never below the ledger's floor (its entries below are pruned).
    spec->cursor_column = sync->cursor_column;
    spec->cursor_type = cursor_column_type(sync, &spec->lookback);
    if (sync->has_watermark) {
        int64 bound = sync->watermark < PG_INT64_MIN + spec->lookback ? PG_INT64_MIN : sync->watermark - spec->lookback;
        if (sync->has_floor && sync->ledger_floor > bound) bound = sync->ledger_floor;
        spec->has_bound = true;
        spec->bound = bound;
    } else if (sync->has_floor) {
        spec->has_bound = true;
        spec->bound = sync->ledger_floor;
    }
    if (spec->has_bound) {
        spec->has_state_floor = true;
        spec->state_floor = spec->bound;
        spec->query = psprintf("%s WHERE src.%s OPERATOR(pg_catalog.>=) $1", spec->query,
                               quote_identifier(sync->cursor_column));
    }
}

}  // namespace

void execute_as_extension(const char *sql) {
    RoleScope scope;
    enter_extension_scope(&scope);
    if (SPI_execute(sql, false, 0) < 0) elog(ERROR, "amplitude_sync: could not run: %s", sql);
    leave_role_scope(&scope);
}

// How many objects of this database the role owns.
int64 owned_objects(Oid role) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[1] = {OIDOID};
    Datum args[1] = {ObjectIdGetDatum(role)};
    if (SPI_execute_with_args("SELECT pg_catalog.count(*) FROM pg_catalog.pg_shdepend d "
                              "WHERE d.refobjid OPERATOR(pg_catalog.=) $1 AND d.deptype OPERATOR(pg_catalog.=) 'o' "
                              "AND d.dbid OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database "
                              "WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())",
                              1, argtypes, args, nullptr, false, 1) != SPI_OK_SELECT)
        elog(ERROR, "amplitude_sync: could not read pg_shdepend");
    bool isnull;
    int64 owned = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    leave_role_scope(&scope);
    return owned;
}

// Makes the view that holds a sync's source, owned by owner: the source is
// a relation name (read whole, its columns as they are now) or a checked
// read-only query, resolved with the current search_path. Returns its oid.
Oid create_source_view(const char *view_name, const char *what, const char *source, Oid owner) {
    Oid relation = source_relation(source);
    const char *query = OidIsValid(relation) ? psprintf("SELECT * FROM %s", qualified_relation_name(relation))
                                             : checked_source_query(source);
    // Planned first as the owner, read-only: errors name the source, not
    // the view, and the owner's rights are checked before anything is made.
    RoleScope scope;
    enter_role_scope(&scope, owner, namespace_search_path, true);
    if (!SPI_prepare(query, 0, nullptr)) elog(ERROR, "amplitude_sync: could not prepare the source");
    leave_role_scope(&scope);
    // The owner creates the view: parsing it can run the owner's code (a
    // domain's CHECK on a constant), which must never run as anyone else.
    // It may create in the extension's schema for this one statement, and
    // nothing but the view may come of it.
    Oid schema = get_namespace_oid("amplitude_sync", false);
#if PG_VERSION_NUM >= 160000
    bool may_create = object_aclcheck(NamespaceRelationId, schema, owner, ACL_CREATE) == ACLCHECK_OK;
#else
    bool may_create = pg_namespace_aclcheck(schema, owner, ACL_CREATE) == ACLCHECK_OK;
#endif
    const char *role = quote_identifier(GetUserNameFromId(owner, false));
    if (!may_create) execute_as_extension(psprintf("GRANT CREATE ON SCHEMA amplitude_sync TO %s", role));
    int64 owned_before = owned_objects(owner);
    enter_role_scope(&scope, owner, namespace_search_path, false);
    if (SPI_execute(psprintf("CREATE VIEW amplitude_sync.%s AS\n%s\n", quote_identifier(view_name), query), false,
                    0) != SPI_OK_UTILITY)
        elog(ERROR, "amplitude_sync: could not create the source view");
    leave_role_scope(&scope);
    if (!may_create) execute_as_extension(psprintf("REVOKE CREATE ON SCHEMA amplitude_sync FROM %s", role));
    // (A superuser's code runs as itself anyway; PostgreSQL records no
    // ownership for the bootstrap superuser.)
    if (!superuser_arg(owner) && owned_objects(owner) != owned_before + 1)
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("the source of %s created objects while it was parsed", what),
                        errdetail("Only its view may be made.")));
    execute_as_extension(psprintf("COMMENT ON VIEW amplitude_sync.%s IS %s", quote_identifier(view_name),
                                  quote_literal_cstr(psprintf("The source of %s.", what))));
    CommandCounterIncrement();
    return get_relname_relid(view_name, schema);
}

namespace {

// The sync depends on its server through its view: DROP SERVER needs
// CASCADE (which drops the sync), and a renamed server is followed.
void depend_on_server(Oid view, const char *server_name) {
    ForeignServer *server = GetForeignServerByName(server_name, false);
    deleteDependencyRecordsForClass(RelationRelationId, view, ForeignServerRelationId, DEPENDENCY_NORMAL);
    ObjectAddress depender, referenced;
    ObjectAddressSet(depender, RelationRelationId, view);
    ObjectAddressSet(referenced, ForeignServerRelationId, server->serverid);
    recordDependencyOn(&depender, &referenced, DEPENDENCY_NORMAL);
    CommandCounterIncrement();
}

// The connection a sync uses, as its owner: USAGE on the server and the
// user mapping are the owner's, whoever runs the sync.
void load_owner_connection(const SavedSync *sync, AmpConnection *conn) {
    RoleScope scope;
    enter_role_scope(&scope, sync->owner, AMP_PINNED_SEARCH_PATH, false);
    load_connection(sync->server, conn);
    leave_role_scope(&scope);
}

// Checks a sync as it would run: its options, its server and mapping (as
// its owner), and its source's columns (in the owner's scope).
void check_sync(const SavedSync *sync, const char *api) {
    AmpConnection conn;
    load_owner_connection(sync, &conn);
    SendSpec spec;
    sync_spec(sync, api, false, &spec);
    if (sync->cursor_column) {
        int64 lookback;
        cursor_column_type(sync, &lookback);
    }
    check_source_columns(&spec);
}

Datum sync_row(int sync_id) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[1] = {INT4OID};
    Datum args[1] = {Int32GetDatum(sync_id)};
    if (SPI_execute_with_args("SELECT s FROM amplitude_sync.syncs s WHERE s.sync_id OPERATOR(pg_catalog.=) $1", 1,
                              argtypes, args, nullptr, false, 1) != SPI_OK_SELECT ||
        SPI_processed != 1)
        elog(ERROR, "amplitude_sync: sync %d vanished", sync_id);
    bool isnull;
    Datum row = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
    leave_role_scope(&scope);
    return SPI_datumTransfer(row, false, -1);
}

// pg_cron jobs made by schedule_sync follow their sync: renamed with it
// (name and command), unscheduled when it is dropped, rather than failing
// every minute. Only jobs of this database kept in this database's cron.job
// (pg_cron elsewhere is out of reach: see the README). As the extension's
// owner, so that a member dropping a sync removes the job of the role that
// scheduled it; pg_cron's table is a superuser's, so an owner that is not
// one leaves the jobs with a NOTICE.
// Only pg_cron itself is trusted: a schema merely named cron may be
// anyone's, and its code would run as the extension's owner here; so the
// schema comes from amplitude_sync._cron_schema() (the extension pg_cron's
// own). Runs sql_format (its %s: that schema, every time) with $1..$3 text as
// the extension's owner; returns the rows it touched, or -1 when it could
// not run.
int64 change_cron_jobs(const char *sql_format, const char *arg1, const char *arg2, const char *arg3,
                       const char *what) {
    RoleScope scope;
    enter_extension_scope(&scope);
    if (SPI_execute("SELECT amplitude_sync._cron_schema()", true, 1) != SPI_OK_SELECT || SPI_processed != 1)
        elog(ERROR, "amplitude_sync: could not look for pg_cron");
    char *schema = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
    if (!schema) {
        leave_role_scope(&scope);
        return 0;
    }
    if (!superuser()) {
        leave_role_scope(&scope);
        ereport(NOTICE, (errmsg("pg_cron jobs of %s were left as they are", what),
                         errdetail("The extension's owner is not a superuser and cannot change pg_cron's jobs."),
                         errhint("See cron.job for jobs named amplitude_sync:<sync>.")));
        return -1;
    }
    Oid types[3] = {TEXTOID, TEXTOID, TEXTOID};
    Datum args[3] = {CStringGetTextDatum(arg1), CStringGetTextDatum(arg2 ? arg2 : ""),
                     CStringGetTextDatum(arg3 ? arg3 : "")};
    int rc = SPI_execute_with_args(psprintf(sql_format, schema, schema), 3, types, args, nullptr, false, 0);
    if (rc != SPI_OK_UPDATE && rc != SPI_OK_SELECT) elog(ERROR, "amplitude_sync: could not change pg_cron's jobs");
    int64 jobs = static_cast<int64>(SPI_processed);
    leave_role_scope(&scope);
    return jobs;
}

// The schema amplitude_sync is made by CREATE EXTENSION (the control file
// names it) and is not part of the extension, so DROP EXTENSION leaves it
// behind. When a DROP EXTENSION amplitude_sync commits, the schema goes too
// if CREATE EXTENSION made it (the install script marks it so with a
// comment that begins with this) and nothing is left in it (a CREATE
// EXTENSION in the same transaction keeps it). A schema a user made
// beforehand stays.
constexpr char kSchemaMadeByExtension[] = "Made by CREATE EXTENSION amplitude_sync";
bool drop_schema_at_commit = false;

bool schema_made_by_extension() {
    Oid schema = get_namespace_oid("amplitude_sync", true);
    if (!OidIsValid(schema)) return false;
    char *comment = GetComment(schema, NamespaceRelationId, 0);
    return comment && strncmp(comment, kSchemaMadeByExtension, strlen(kSchemaMadeByExtension)) == 0;
}

bool schema_in_use(Oid schema) {
    Relation depend = table_open(DependRelationId, AccessShareLock);
    ScanKeyData keys[2];
    ScanKeyInit(&keys[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber, F_OIDEQ,
                ObjectIdGetDatum(NamespaceRelationId));
    ScanKeyInit(&keys[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(schema));
    SysScanDesc scan = systable_beginscan(depend, DependReferenceIndexId, true, nullptr, 2, keys);
    bool used = HeapTupleIsValid(systable_getnext(scan));
    systable_endscan(scan);
    table_close(depend, AccessShareLock);
    return used;
}

void drop_empty_schema(XactEvent event, void *) {
    bool due = event == XACT_EVENT_PRE_COMMIT && drop_schema_at_commit;
    drop_schema_at_commit = false;
    if (!due) return;
    Oid schema = get_namespace_oid("amplitude_sync", true);
    if (!OidIsValid(schema) || schema_in_use(schema)) return;
    ObjectAddress address;
    ObjectAddressSet(address, NamespaceRelationId, schema);
    performDeletion(&address, DROP_RESTRICT, PERFORM_DELETION_INTERNAL);
}

// A table (or view) source is read with the columns it had when the sync
// was made, so a column added later (PII, say) is never sent unreviewed;
// runs and previews say when there are such columns.
void notice_unsent_columns(const SavedSync *sync) {
    if (!source_names_relation(sync->source)) return;
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid types[1] = {OIDOID};
    Datum args[1] = {ObjectIdGetDatum(sync->source_view)};
    int rc = SPI_execute_with_args(
        "SELECT pg_catalog.format('%s', c.oid::pg_catalog.regclass), "
        "pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) "
        "FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid "
        " AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped "
        "WHERE c.oid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT d.refobjid FROM pg_catalog.pg_rewrite r "
        " JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass "
        "  AND d.objid OPERATOR(pg_catalog.=) r.oid "
        "  AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
        "  AND d.refobjid OPERATOR(pg_catalog.<>) $1 "
        " WHERE r.ev_class OPERATOR(pg_catalog.=) $1)) "
        "AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute v "
        " WHERE v.attrelid OPERATOR(pg_catalog.=) $1 AND v.attname OPERATOR(pg_catalog.=) a.attname) "
        "GROUP BY c.oid",
        1, types, args, nullptr, true, 0);
    if (rc != SPI_OK_SELECT) elog(ERROR, "amplitude_sync: could not read the source's columns");
    char *relation = nullptr, *columns = nullptr;
    if (SPI_processed == 1) {
        relation = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
        columns = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
    }
    leave_role_scope(&scope);
    if (columns)
        ereport(NOTICE, (errmsg("\"%s\" has columns that sync \"%s\" does not send: %s", relation, sync->name,
                                columns),
                         errdetail("A table or view source is read with the columns it had when the sync was "
                                   "created or its source last set."),
                         errhint("To send them: SELECT amplitude_sync.alter_sync(%s, source => %s);",
                                 quote_literal_cstr(sync->name), quote_literal_cstr(sync->source))));
}

// The jobs schedule_sync made for a sync: its job name and its command.
#define SYNC_JOBS_WHERE                                                                     \
    "WHERE jobname OPERATOR(pg_catalog.=) $1 "                                              \
    "AND command OPERATOR(pg_catalog.=) pg_catalog.format('CALL amplitude_sync.run_sync(%%L)', $2) " \
    "AND database OPERATOR(pg_catalog.=) pg_catalog.current_database()"

void follow_cron_jobs(const char *old_name, const char *new_name) {
    const char *job = psprintf("amplitude_sync:%s", old_name);
    const char *what = psprintf("sync \"%s\"", old_name);
    int64 jobs =
        new_name ? change_cron_jobs("UPDATE %s.job SET jobname = 'amplitude_sync:' OPERATOR(pg_catalog.||) $3, "
                                    "command = pg_catalog.format('CALL amplitude_sync.run_sync(%%L)', $3) " SYNC_JOBS_WHERE,
                                    job, old_name, new_name, what)
                 : change_cron_jobs("SELECT %s.unschedule(jobid) FROM %s.job " SYNC_JOBS_WHERE, job, old_name,
                                    nullptr, what);
    if (jobs > 0)
        ereport(NOTICE, (new_name ? errmsg("pg_cron job \"amplitude_sync:%s\" now runs sync \"%s\"", old_name,
                                           new_name)
                                  : errmsg("pg_cron job \"amplitude_sync:%s\" was unscheduled", old_name)));
}

void check_name_free(const char *name) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[1] = {TEXTOID};
    Datum args[1] = {CStringGetTextDatum(name)};
    if (SPI_execute_with_args("SELECT FROM amplitude_sync.syncs WHERE name OPERATOR(pg_catalog.=) $1", 1, argtypes,
                              args, nullptr, true, 1) != SPI_OK_SELECT)
        elog(ERROR, "amplitude_sync: could not read the syncs");
    leave_role_scope(&scope);
    if (SPI_processed > 0)
        ereport(ERROR, (errcode(ERRCODE_DUPLICATE_OBJECT), errmsg("sync \"%s\" already exists", name),
                        errhint("Use amplitude_sync.alter_sync() to change it, or choose another name.")));
}

void check_sync_name(const char *name) {
    if (!*name)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("a sync's name must not be empty")));
}

// The overlap guard (see sync_claims in the install script). Returns the
// advisory-lock key this session now holds for the run, or 0 when another
// session is running the sync.
int64 claim_sync_run(int sync_id) {
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[3] = {INT4OID, OIDOID, OIDOID};
    Datum args[3] = {Int32GetDatum(sync_id), 0, 0};
    // The row lock serializes runs that start at the same time.
    if (SPI_execute_with_args(
            "SELECT c.pid, c.lock_key, c.backend_start FROM amplitude_sync.syncs s "
            "LEFT JOIN amplitude_sync.sync_claims c "
            "ON c.sync_id OPERATOR(pg_catalog.=) s.sync_id WHERE s.sync_id OPERATOR(pg_catalog.=) $1 "
            "FOR NO KEY UPDATE OF s",
            1, argtypes, args, nullptr, false, 1) != SPI_OK_SELECT ||
        SPI_processed != 1)
        elog(ERROR, "amplitude_sync: sync %d vanished", sync_id);
    bool no_claim;
    int32 pid = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &no_claim));
    bool isnull;
    int64 key = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
    Datum started = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
    if (!no_claim) {
        // Running means: the claiming session (the same pid, started at the
        // same time: pids are reused) still holds the claim's lock.
        Datum lock_args[4] = {Int32GetDatum(pid), ObjectIdGetDatum(static_cast<Oid>(static_cast<uint64>(key) >> 32)),
                              ObjectIdGetDatum(static_cast<Oid>(static_cast<uint64>(key) & 0xffffffffu)), started};
        Oid lock_types[4] = {INT4OID, OIDOID, OIDOID, TIMESTAMPTZOID};
        if (SPI_execute_with_args(
                "SELECT FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a "
                "ON a.pid OPERATOR(pg_catalog.=) l.pid WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' "
                "AND l.pid OPERATOR(pg_catalog.=) $1 AND l.classid OPERATOR(pg_catalog.=) $2 "
                "AND l.objid OPERATOR(pg_catalog.=) $3 AND l.objsubid OPERATOR(pg_catalog.=) 1 AND l.granted "
                "AND a.backend_start OPERATOR(pg_catalog.=) $4",
                4, lock_types, lock_args, nullptr, true, 1) != SPI_OK_SELECT)
            elog(ERROR, "amplitude_sync: could not read pg_locks");
        if (SPI_processed > 0) {
            leave_role_scope(&scope);
            return 0;
        }
    }
    // A fresh random key nobody could have seen: no other role can hold it.
    do {
        if (!pg_strong_random(&key, sizeof key)) elog(ERROR, "amplitude_sync: no random numbers");
        key &= INT64_MAX;
    } while (key == 0 || !DatumGetBool(DirectFunctionCall1(pg_try_advisory_lock_int8, Int64GetDatum(key))));
    Oid claim_types[4] = {INT4OID, INT4OID, INT8OID, TIMESTAMPTZOID};
    Datum claim[4] = {Int32GetDatum(sync_id), Int32GetDatum(MyProcPid), Int64GetDatum(key),
                      TimestampTzGetDatum(MyStartTimestamp)};
    if (SPI_execute_with_args("INSERT INTO amplitude_sync.sync_claims (sync_id, pid, lock_key, backend_start) "
                              "VALUES ($1, $2, $3, $4) ON CONFLICT (sync_id) DO UPDATE SET pid = EXCLUDED.pid, "
                              "lock_key = EXCLUDED.lock_key, backend_start = EXCLUDED.backend_start",
                              4, claim_types, claim, nullptr, false, 0) != SPI_OK_INSERT)
        elog(ERROR, "amplitude_sync: could not claim sync %d", sync_id);
    leave_role_scope(&scope);
    return key;
}

void release_sync_run(int64 key) {
    if (key) DirectFunctionCall1(pg_advisory_unlock_int8, Int64GetDatum(key));
}

// Segments of a run that commits as it goes: each is a subtransaction, so
// that an error rolls back only the unfinished segment and the run can
// still record its failure, and commit.
struct Segments {
    RunSegments hooks;
    MemoryContext context;   // the procedure's SPI context
    ResourceOwner owner;     // the current transaction's resource owner
    bool in_subtransaction;
};

void begin_segment(Segments *segments) {
    segments->owner = CurrentResourceOwner;
    BeginInternalSubTransaction(nullptr);
    segments->in_subtransaction = true;
    MemoryContextSwitchTo(segments->context);
}

void end_segment(Segments *segments) {
    segments->in_subtransaction = false;
    ReleaseCurrentSubTransaction();
    MemoryContextSwitchTo(segments->context);
    CurrentResourceOwner = segments->owner;
}

void commit_segment(RunSegments *hooks) {
    Segments *segments = reinterpret_cast<Segments *>(hooks);
    end_segment(segments);
    SPI_commit();
    MemoryContextSwitchTo(segments->context);
    begin_segment(segments);
}

// The report of a run that did not start.
Datum skipped_report(TupleDesc desc, int64 run_id) {
    Datum values[10] = {Int64GetDatum(run_id), CStringGetTextDatum("skipped"), 0, 0, 0, 0, 0, 0, 0, 0};
    bool nulls[10] = {false, false, true, true, true, true, true, true, true, true};
    return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls));
}

}  // namespace

extern "C" {

PG_FUNCTION_INFO_V1(amplitude_sync_create_sync);

// create_sync(name, server, object, source, behaviour, operations, nulls,
//             properties_event, api, batch_size, min_id_length) RETURNS syncs
Datum amplitude_sync_create_sync(PG_FUNCTION_ARGS) {
    SavedSync sync{};
    sync.name = text_arg(fcinfo, 0, "name");
    sync.server = name_arg(fcinfo, 1, "server");
    sync.object = text_arg(fcinfo, 2, "object");
    sync.source = text_arg(fcinfo, 3, "source");
    sync.behaviour = optional_text_arg(fcinfo, 4);
    sync.operations = "{}";
    if (!PG_ARGISNULL(5)) {
        Jsonb *jb = PG_GETARG_JSONB_P(5);
        sync.operations = JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
    }
    sync.nulls = PG_ARGISNULL(6) ? "skip" : text_arg(fcinfo, 6, "nulls");
    sync.properties_event = optional_text_arg(fcinfo, 7);
    const char *api = PG_ARGISNULL(8) ? "httpapi" : text_arg(fcinfo, 8, "api");
    sync.batch_size = PG_ARGISNULL(9) ? kNotGiven : PG_GETARG_INT32(9);
    sync.min_id_length = PG_ARGISNULL(10) ? 5 : PG_GETARG_INT32(10);
    sync.cursor_column = optional_text_arg(fcinfo, 11);
    sync.lookback = optional_text_arg(fcinfo, 12);
    sync.owner = GetUserId();
    sync.search_path = pstrdup(namespace_search_path);
    check_sync_name(sync.name);
    CallArguments arguments = sync_arguments(&sync);
    arguments.api = api;
    CallOptions options;
    AMP_CXX(options = check_call_arguments(arguments));

    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    check_name_free(sync.name);
    RoleScope scope;
    enter_extension_scope(&scope);
    if (SPI_execute("SELECT pg_catalog.nextval('amplitude_sync.syncs_sync_id_seq')", false, 1) != SPI_OK_SELECT)
        elog(ERROR, "amplitude_sync: could not number the sync");
    bool isnull;
    sync.sync_id = static_cast<int>(DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)));
    leave_role_scope(&scope);
    sync.source_view = create_source_view(psprintf("sync_%d_source", sync.sync_id), psprintf("sync \"%s\"", sync.name), sync.source, sync.owner);
    check_sync(&sync, api);
    depend_on_server(sync.source_view, sync.server);

    enter_extension_scope(&scope);
    Oid argtypes[16] = {INT4OID, TEXTOID, NAMEOID, TEXTOID, TEXTOID, TEXTOID, OIDOID,  TEXTOID,
                        TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, INT4OID, TEXTOID, TEXTOID};
    Datum args[16] = {Int32GetDatum(sync.sync_id), CStringGetTextDatum(sync.name), PG_GETARG_DATUM(1),
                      CStringGetTextDatum(options.object), CStringGetTextDatum(options.behaviour),
                      CStringGetTextDatum(sync.source), ObjectIdGetDatum(sync.source_view),
                      CStringGetTextDatum(sync.search_path), CStringGetTextDatum(sync.operations),
                      CStringGetTextDatum(options.nulls),
                      options.properties_event ? CStringGetTextDatum(options.properties_event) : (Datum)0,
                      CStringGetTextDatum(options.api), Int32GetDatum(options.batch_size),
                      Int32GetDatum(options.min_id_length),
                      options.cursor_column ? CStringGetTextDatum(options.cursor_column) : (Datum)0,
                      options.lookback ? CStringGetTextDatum(options.lookback) : (Datum)0};
    char nulls[17] = "                ";
    if (!options.properties_event) nulls[10] = 'n';
    if (options.batch_size == kNotGiven) nulls[12] = 'n';
    if (!options.cursor_column) nulls[14] = 'n';
    if (!options.lookback) nulls[15] = 'n';
    if (SPI_execute_with_args(
            "INSERT INTO amplitude_sync.syncs (sync_id, name, server, object, behaviour, source, source_view, "
            "search_path, operations, nulls, properties_event, api, batch_size, min_id_length, cursor_column, lookback) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7::pg_catalog.regclass, $8, $9::pg_catalog.jsonb, $10, $11, $12, $13, $14, "
            "$15, $16)",
            16, argtypes, args, nulls, false, 0) != SPI_OK_INSERT)
        elog(ERROR, "amplitude_sync: could not save the sync");
    // A new sync starts with no state, whatever an earlier sync under the
    // same id left (the state has no foreign key; see the install script).
    leave_role_scope(&scope);
    run_log_forget_state(sync.sync_id, "true");
    Datum row = sync_row(sync.sync_id);
    SPI_finish();
    PG_RETURN_DATUM(row);
}

PG_FUNCTION_INFO_V1(amplitude_sync_alter_sync);

// alter_sync(name, server, source, operations, nulls, properties_event, api,
//            batch_size, min_id_length, new_name) RETURNS syncs
Datum amplitude_sync_alter_sync(PG_FUNCTION_ARGS) {
    const char *name = text_arg(fcinfo, 0, "name");
    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    SavedSync sync;
    load_saved_sync(name, &sync);
    const char *api = sync.api;
    if (!PG_ARGISNULL(1)) sync.server = pstrdup(NameStr(*PG_GETARG_NAME(1)));
    const char *new_source = optional_text_arg(fcinfo, 2);
    if (!PG_ARGISNULL(3)) {
        Jsonb *jb = PG_GETARG_JSONB_P(3);
        sync.operations = JsonbToCString(nullptr, &jb->root, VARSIZE(jb));
    }
    if (!PG_ARGISNULL(4)) sync.nulls = text_arg(fcinfo, 4, "nulls");
    // properties_event => '' removes it.
    if (!PG_ARGISNULL(5)) {
        const char *event = text_arg(fcinfo, 5, "properties_event");
        sync.properties_event = *event ? event : nullptr;
    }
    if (!PG_ARGISNULL(6)) api = text_arg(fcinfo, 6, "api");
    if (!PG_ARGISNULL(7)) sync.batch_size = PG_GETARG_INT32(7);
    if (!PG_ARGISNULL(8)) sync.min_id_length = PG_GETARG_INT32(8);
    const char *new_name = optional_text_arg(fcinfo, 9);
    if (new_name) {
        check_sync_name(new_name);
        if (strcmp(new_name, sync.name) != 0) check_name_free(new_name);
        sync.name = new_name;
    }
    // cursor_column => '' leaves watermark mode; lookback => '' sets none.
    bool cursor_changed = false;
    if (!PG_ARGISNULL(10)) {
        const char *given = text_arg(fcinfo, 10, "cursor_column");
        const char *cursor = *given ? given : nullptr;
        cursor_changed = (cursor == nullptr) != (sync.cursor_column == nullptr) ||
                         (cursor && strcmp(cursor, sync.cursor_column) != 0);
        sync.cursor_column = cursor;
        if (!cursor) sync.lookback = nullptr;
    }
    if (!PG_ARGISNULL(11)) {
        const char *given = text_arg(fcinfo, 11, "lookback");
        sync.lookback = *given ? given : nullptr;
    }
    if (cursor_changed && sync.has_floor)
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("the cursor_column of sync \"%s\" cannot change: its ledger was pruned", sync.name),
                        errdetail("Its rows below the ledger floor would be read, and their events sent, again."),
                        errhint("Create a new sync for the new cursor, with a source that leaves out the events "
                                "already sent.")));
    CallArguments arguments = sync_arguments(&sync);
    arguments.api = api;
    CallOptions options;
    AMP_CXX(options = check_call_arguments(arguments));

    Oid old_view = sync.source_view;
    if (new_source) {
        // The new view is made beside the old one, takes its place in the
        // sync, and then its name; the old one is dropped.
        sync.source = new_source;
        sync.search_path = pstrdup(namespace_search_path);
        sync.source_view = create_source_view(psprintf("sync_%d_source_new", sync.sync_id), psprintf("sync \"%s\"", sync.name), new_source,
                                              sync.owner);
    }
    check_sync(&sync, api);
    depend_on_server(sync.source_view, sync.server);

    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[16] = {INT4OID, TEXTOID, TEXTOID, TEXTOID, OIDOID,  TEXTOID, TEXTOID, TEXTOID,
                        TEXTOID, TEXTOID, INT4OID, INT4OID, TEXTOID, TEXTOID, TEXTOID, BOOLOID};
    Datum args[16] = {Int32GetDatum(sync.sync_id), CStringGetTextDatum(sync.name), CStringGetTextDatum(sync.server),
                      CStringGetTextDatum(sync.source), ObjectIdGetDatum(sync.source_view),
                      CStringGetTextDatum(sync.search_path), CStringGetTextDatum(sync.operations),
                      CStringGetTextDatum(options.nulls),
                      options.properties_event ? CStringGetTextDatum(options.properties_event) : (Datum)0,
                      CStringGetTextDatum(options.api), Int32GetDatum(options.batch_size),
                      Int32GetDatum(options.min_id_length), 0,
                      options.cursor_column ? CStringGetTextDatum(options.cursor_column) : (Datum)0,
                      options.lookback ? CStringGetTextDatum(options.lookback) : (Datum)0,
                      BoolGetDatum(cursor_changed)};
    char nulls[17] = "            n   ";
    if (!options.properties_event) nulls[8] = 'n';
    if (options.batch_size == kNotGiven) nulls[10] = 'n';
    if (!options.cursor_column) nulls[13] = 'n';
    if (!options.lookback) nulls[14] = 'n';
    if (SPI_execute_with_args(
            "UPDATE amplitude_sync.syncs SET name = $2, server = $3::pg_catalog.name, source = $4, "
            "source_view = $5::pg_catalog.regclass, search_path = $6, operations = $7::pg_catalog.jsonb, nulls = $8, "
            "properties_event = $9, api = $10, batch_size = $11, min_id_length = $12, "
            "cursor_column = $14, lookback = $15, "
            "watermark = CASE WHEN $16 THEN NULL ELSE watermark END, "
            "ledger_floor = CASE WHEN $16 THEN NULL ELSE ledger_floor END, "
            "updated_at = pg_catalog.now() WHERE sync_id OPERATOR(pg_catalog.=) $1",
            16, argtypes, args, nulls, false, 0) != SPI_OK_UPDATE)
        elog(ERROR, "amplitude_sync: could not change the sync");
    // Ledger entries from before this cursor have no known position: they
    // are kept for good (a watermark run loads the entries at or above its
    // bound, and prunes those below the floor).
    for (const char *table : kStateTableNames)
        if (cursor_changed && options.cursor_column &&
            SPI_execute_with_args(psprintf("UPDATE amplitude_sync.%s SET position = 9223372036854775807 "
                                           "WHERE sync_id OPERATOR(pg_catalog.=) $1",
                                           table),
                                  1, argtypes, args, nullptr, false, 0) != SPI_OK_UPDATE)
            elog(ERROR, "amplitude_sync: could not keep the sync's ledger");
    leave_role_scope(&scope);
    // A changed sync may take rows it rejected before: they are tried again.
    run_log_forget_state(sync.sync_id, "rejected_reason IS NOT NULL");
    if (strcmp(sync.name, name) != 0) follow_cron_jobs(name, sync.name);
    if (sync.source_view != old_view) {
        execute_as_extension(psprintf("DROP VIEW %s", qualified_relation_name(old_view)));
        execute_as_extension(psprintf("ALTER VIEW amplitude_sync.%s RENAME TO %s",
                                      quote_identifier(psprintf("sync_%d_source_new", sync.sync_id)),
                                      quote_identifier(psprintf("sync_%d_source", sync.sync_id))));
    }
    Datum row = sync_row(sync.sync_id);
    SPI_finish();
    PG_RETURN_DATUM(row);
}

PG_FUNCTION_INFO_V1(amplitude_sync_drop_sync);

// drop_sync(name): the sync, its state and its source view; not its history.
Datum amplitude_sync_drop_sync(PG_FUNCTION_ARGS) {
    const char *name = text_arg(fcinfo, 0, "name");
    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    SavedSync sync;
    load_saved_sync(name, &sync);
    RoleScope scope;
    enter_extension_scope(&scope);
    Oid argtypes[1] = {INT4OID};
    Datum args[1] = {Int32GetDatum(sync.sync_id)};
    if (SPI_execute_with_args("DELETE FROM amplitude_sync.syncs WHERE sync_id OPERATOR(pg_catalog.=) $1", 1,
                              argtypes, args, nullptr, false, 0) != SPI_OK_DELETE)
        elog(ERROR, "amplitude_sync: could not drop the sync");
    leave_role_scope(&scope);
    // Its runs still marked running were interrupted (a live one would fail
    // at its next write and record that itself).
    run_log_close_stale(sync.sync_id, 0);
    follow_cron_jobs(sync.name, nullptr);
    execute_as_extension(psprintf("DROP VIEW %s", qualified_relation_name(sync.source_view)));
    SPI_finish();
    PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(amplitude_sync_resync);

// resync(name, predicate): forget what Amplitude confirmed, for every record
// or those whose source row matches predicate (read as the sync's owner).
Datum amplitude_sync_resync(PG_FUNCTION_ARGS) {
    const char *name = text_arg(fcinfo, 0, "name");
    const char *predicate = optional_text_arg(fcinfo, 1);
    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    SavedSync sync;
    load_saved_sync(name, &sync);
    SendSpec spec;
    sync_spec(&sync, sync.api, false, &spec);
    if (!predicate && spec.options.target == Target::kEvents)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("resync of append sync \"%s\" needs a predicate", sync.name),
                        errdetail("Resending every event of an append sync would duplicate events older than "
                                  "Amplitude's 7-day deduplication window."),
                        errhint("Name the events to resend, for example: resync('%s', 'created_at > now() - "
                                "interval ''1 day''').",
                                sync.name)));
    Datum keys = (Datum)0;
    bool all = predicate == nullptr;
    if (!all) {
        // The keys of the matching rows, read like the source: as its owner,
        // read-only; the predicate is checked to be part of one query.
        const char *query = checked_source_query(
            psprintf("SELECT pg_catalog.array_agg(%s) FROM %s src WHERE (%s\n)",
                     record_key_expression(spec.options.target), qualified_relation_name(sync.source_view),
                     predicate));
        RoleScope scope;
        enter_role_scope(&scope, sync.owner, sync.search_path, true);
        if (SPI_execute(query, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
            elog(ERROR, "amplitude_sync: could not read the source");
        leave_role_scope(&scope);
        bool isnull;
        keys = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
        if (isnull) {
            SPI_finish();
            PG_RETURN_INT64(0);
        }
    }
    Oid types[1] = {TEXTARRAYOID};
    int64 forgotten =
        all ? run_log_forget_state(sync.sync_id, "true")
            : run_log_forget_state(sync.sync_id,
                                   "key_hash OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT amplitude_sync.record_key_hash(k) "
                                   "FROM pg_catalog.unnest($2::pg_catalog.text[]) AS k))",
                                   1, types, &keys);
    SPI_finish();
    PG_RETURN_INT64(forgotten);
}

// A step after a run, in a subtransaction: a step that fails (a cancel, a
// lock timeout) changes nothing, and the run it follows succeeded all the
// same: a WARNING says so (with detail and hint). Returns whether it ran.
bool after_run_step(void (*step)(void *), void *arg, const char *failure, const char *detail, const char *hint) {
    MemoryContext context = CurrentMemoryContext;
    ResourceOwner owner = CurrentResourceOwner;
    volatile bool done = false;
    BeginInternalSubTransaction(nullptr);
    MemoryContextSwitchTo(context);
    PG_TRY();
    {
        step(arg);
        ReleaseCurrentSubTransaction();
        MemoryContextSwitchTo(context);
        CurrentResourceOwner = owner;
        done = true;
    }
    PG_CATCH();
    {
        MemoryContextSwitchTo(context);
        ErrorData *error = CopyErrorData();
        FlushErrorState();
        RollbackAndReleaseCurrentSubTransaction();
        MemoryContextSwitchTo(context);
        CurrentResourceOwner = owner;
        ereport(WARNING, (errcode(error->sqlerrcode), errmsg("%s: %s", failure, error->message),
                          errdetail("%s", detail), errhint("%s", hint)));
        FreeErrorData(error);
    }
    PG_END_TRY();
    return done;
}

struct StateMerge {
    int sync_id;
    int64 merged;
};

void merge_step(void *arg) {
    StateMerge *m = static_cast<StateMerge *>(arg);
    m->merged = run_log_merge_state_changes(m->sync_id);
}

void prune_step(void *arg) { run_log_prune_state_entries(static_cast<StateMerge *>(arg)->sync_id); }

// After a run, once its outcomes are committed: the merge, when due, then
// (once it is committed) one read of the merged entries, which prunes the
// row versions the merge replaced while their pages are still logged in
// this checkpoint cycle (the next run's read would log each page whole
// again after a checkpoint: 0.8 GB at 10,000,000 records). Returns the
// rows written into state_entries by the run and the merge.
int64 settle_state(int sync_id, const char *sync_name, const StateTables *tables) {
    int64 into_entries = tables->into_changes ? 0 : tables->written;
    if (!run_log_merge_due(tables)) return into_entries;
    StateMerge merge{sync_id, 0};
    const char *failure = psprintf("could not merge the state changes of sync \"%s\"", sync_name);
    if (!after_run_step(merge_step, &merge, failure, "The run succeeded; its state is complete in state_changes.",
                        "The next run merges them."))
        return into_entries;
    SPI_commit();
    after_run_step(prune_step, &merge, psprintf("could not read the merged state of sync \"%s\"", sync_name),
                   "The merge and the run succeeded.", "The next run reads the merged state.");
    return into_entries + merge.merged;
}

// Runs a saved sync for CALL run_sync and CALL run_sync_into; returns the
// run report as a row of report_desc.
Datum run_saved_sync(FunctionCallInfo fcinfo, TupleDesc report_desc) {
    const char *name = text_arg(fcinfo, 0, "name");
    // A run commits as it goes, so that what Amplitude confirmed is never
    // rolled back behind its back: it cannot run inside a transaction block.
    CallContext *call = fcinfo->context && IsA(fcinfo->context, CallContext)
                            ? reinterpret_cast<CallContext *>(fcinfo->context)
                            : nullptr;
    if (!call || call->atomic)
        ereport(ERROR, (errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
                        errmsg("run_sync cannot run inside a transaction block"),
                        errdetail("A run commits what Amplitude confirmed as it goes; a rollback would make the "
                                  "sync forget records Amplitude holds."),
                        errhint("Run CALL amplitude_sync.run_sync('%s') on its own, outside BEGIN ... COMMIT "
                                "and outside functions (psql: with AUTOCOMMIT on).",
                                name)));
    if (SPI_connect_ext(SPI_OPT_NONATOMIC) != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    SavedSync sync;
    load_saved_sync(name, &sync);
    notice_unsent_columns(&sync);
    const char *api = sync.api;
    CallOptions options;
    {
        CallArguments arguments = sync_arguments(&sync);
        arguments.api = api;
        AMP_CXX(options = check_call_arguments(arguments));
    }

    // Two runs of one sync never overlap: a second one is recorded as
    // skipped. The guard's lock is the session's (a run spans transactions).
    RunLog log;
    int64 key = claim_sync_run(sync.sync_id);
    if (key == 0) {
        run_log_start(&log, "run_sync", sync.server, options.endpoint->path, sync.sync_id, sync.name, "skipped",
                      "the sync was already running in another session");
        SPI_commit();
        ereport(NOTICE, (errmsg("sync \"%s\" is already running in another session; this run is skipped",
                                sync.name)));
        Datum report = SPI_datumTransfer(skipped_report(report_desc, log.run_id), false, -1);
        SPI_finish();
        return report;
    }
    run_log_start(&log, "run_sync", sync.server, options.endpoint->path, sync.sync_id, sync.name, "running",
                  nullptr);
    run_log_close_stale(sync.sync_id, log.run_id);
    SPI_commit();

    RunCounts counts{};
    StateTables state_tables{};
    volatile bool counted = false;  // set in PG_TRY, read in PG_CATCH
    Segments segments{};
    segments.hooks.commit = commit_segment;
    segments.context = CurrentMemoryContext;
    begin_segment(&segments);
    volatile Datum result = 0;
    PG_TRY();
    {
        AmpConnection conn;
        load_owner_connection(&sync, &conn);
        SendSpec spec;
        sync_spec(&sync, api, true, &spec);
        spec.log = &log;
        spec.segments = &segments.hooks;
        spec.counts = &counts;
        spec.state_tables = &state_tables;
        spec.report_desc = report_desc;
        counted = true;
        result = execute_send_run(fcinfo, &conn, &spec);
        end_segment(&segments);
    }
    PG_CATCH();
    {
        // Record the failure (in a transaction of its own), then raise it.
        MemoryContextSwitchTo(segments.context);
        ErrorData *error = CopyErrorData();
        FlushErrorState();
        if (segments.hooks.materialized) {
            tuplestore_end(segments.hooks.materialized);
            segments.hooks.materialized = nullptr;
        }
        if (segments.in_subtransaction) {
            segments.in_subtransaction = false;
            RollbackAndReleaseCurrentSubTransaction();
            MemoryContextSwitchTo(segments.context);
            CurrentResourceOwner = segments.owner;
        }
        int64 known[4] = {counts.rows_read, counts.sent, counts.rejected, counts.unchanged};
        run_log_fail(&log, error->message, counted ? known : nullptr);
        SPI_commit();
        release_sync_run(key);
        ReThrowError(error);
    }
    PG_END_TRY();
    // The run's outcomes are committed before its state changes are merged
    // and its state analyzed: a merge or an ANALYZE that fails (a cancel)
    // cannot take them back. The merge is part of the run: no other run of
    // the sync starts before it ends (nor before the last commit).
    // (Whatever fails here, a commit included, the guard is released.)
    volatile int64 into_entries = 0;
    PG_TRY();
    {
        SPI_commit();
        into_entries = settle_state(sync.sync_id, sync.name, &state_tables);
        SPI_commit();
    }
    PG_CATCH();
    {
        release_sync_run(key);
        PG_RE_THROW();
    }
    PG_END_TRY();
    release_sync_run(key);
    run_log_refresh_state_statistics(into_entries);
    Datum report = SPI_datumTransfer(result, false, -1);
    SPI_finish();
    return report;
}

PG_FUNCTION_INFO_V1(amplitude_sync_run_sync);

// CALL run_sync(name text, INOUT ... the run report, one column each)
Datum amplitude_sync_run_sync(PG_FUNCTION_ARGS) {
    TupleDesc desc;
    if (get_call_result_type(fcinfo, nullptr, &desc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "amplitude_sync: return type must be a row type");
    PG_RETURN_DATUM(run_saved_sync(fcinfo, BlessTupleDesc(desc)));
}

PG_FUNCTION_INFO_V1(amplitude_sync_run_sync_into);

// CALL run_sync_into(name text, INOUT report run_report): the same run, its
// report in one variable (PL/pgSQL needs a variable per INOUT argument).
Datum amplitude_sync_run_sync_into(PG_FUNCTION_ARGS) {
    TupleDesc outer;
    if (get_call_result_type(fcinfo, nullptr, &outer) != TYPEFUNC_COMPOSITE || outer->natts != 1)
        elog(ERROR, "amplitude_sync: run_sync_into must have one INOUT argument");
    outer = BlessTupleDesc(outer);
    TupleDesc report_desc = lookup_rowtype_tupdesc_copy(TupleDescAttr(outer, 0)->atttypid, -1);
    Datum values[1] = {run_saved_sync(fcinfo, BlessTupleDesc(report_desc))};
    bool nulls[1] = {false};
    PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(outer, values, nulls)));
}

PG_FUNCTION_INFO_V1(amplitude_sync_preview_sync);

// preview_sync(name text, include_unchanged bool) RETURNS TABLE (...)
Datum amplitude_sync_preview_sync(PG_FUNCTION_ARGS) {
    const char *name = text_arg(fcinfo, 0, "name");
    ReturnSetInfo *rsinfo = reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo);
    if (!rsinfo || !IsA(rsinfo, ReturnSetInfo) || !(rsinfo->allowedModes & SFRM_Materialize))
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("preview_sync must be called in the FROM clause")));
    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    SavedSync sync;
    load_saved_sync(name, &sync);
    notice_unsent_columns(&sync);
    AmpConnection conn;
    load_owner_connection(&sync, &conn);
    SendSpec spec;
    sync_spec(&sync, sync.api, true, &spec);
    spec.preview = true;
    spec.include_unchanged = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);
    spec.rsinfo = rsinfo;
    execute_send_run(fcinfo, &conn, &spec);
    SPI_finish();
    return (Datum)0;
}

PG_FUNCTION_INFO_V1(amplitude_sync_record_key_hash);

// record_key_hash(record_key text) RETURNS int8: sync_state's key.
Datum amplitude_sync_record_key_hash(PG_FUNCTION_ARGS) {
    PG_RETURN_INT64(record_key_hash(PG_GETARG_TEXT_PP(0)));
}

}  // extern "C"

extern "C" {

PG_FUNCTION_INFO_V1(amplitude_sync_upgrade_source_view);

// _upgrade_source_view(sync_id int, name text, source_query text, owner oid,
//                      server name)
// RETURNS regclass: 1.0 -> 1.1 makes each sync's view as 1.1 would (the
// query checked, the view made by its owner). Only the update script calls
// it; it is dropped there.
Datum amplitude_sync_upgrade_source_view(PG_FUNCTION_ARGS) {
    int sync_id = PG_GETARG_INT32(0);
    const char *name = text_to_cstring(PG_GETARG_TEXT_PP(1));
    const char *query = text_to_cstring(PG_GETARG_TEXT_PP(2));
    Oid owner = PG_GETARG_OID(3);
    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    Oid view = create_source_view(psprintf("sync_%d_source", sync_id), psprintf("sync \"%s\"", name), query, owner);
    depend_on_server(view, NameStr(*PG_GETARG_NAME(4)));
    SPI_finish();
    PG_RETURN_OID(view);
}

PG_FUNCTION_INFO_V1(amplitude_sync_check_source);

// 1.0's _check_source, referenced by the 1.0 install script that upgrades
// start from; 1.1 checks sources in create_sync and alter_sync.
Datum amplitude_sync_check_source(PG_FUNCTION_ARGS) {
    (void)fcinfo;
    ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                    errmsg("extension \"amplitude_sync\" must be updated"),
                    errdetail("The installed library is version 1.1; the database holds version 1.0."),
                    errhint("Run ALTER EXTENSION amplitude_sync UPDATE.")));
    PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(amplitude_sync_drop_extension_jobs);

// Event trigger at the start of DROP EXTENSION: when amplitude_sync is one
// of the extensions dropped, the pg_cron jobs schedule_sync made in this
// database go first (they would fail every minute), and the schema is
// dropped at commit once empty. At ddl_command_start the
// statement is known and nothing is dropped yet; a DROP that fails later
// rolls the unscheduling back with it.
Datum amplitude_sync_drop_extension_jobs(PG_FUNCTION_ARGS) {
    if (!CALLED_AS_EVENT_TRIGGER(fcinfo)) elog(ERROR, "amplitude_sync: not called as an event trigger");
    Node *tree = reinterpret_cast<EventTriggerData *>(fcinfo->context)->parsetree;
    if (!tree || !IsA(tree, DropStmt) || castNode(DropStmt, tree)->removeType != OBJECT_EXTENSION) PG_RETURN_VOID();
    bool ours = false;
    ListCell *cell;
    foreach (cell, castNode(DropStmt, tree)->objects)
        ours |= strcmp(strVal(lfirst(cell)), "amplitude_sync") == 0;
    if (!ours) PG_RETURN_VOID();
    // ddl_command_start comes before PostgreSQL's own checks: nothing is
    // done for a role that may not drop the extension (the DROP then fails).
    Oid extension = get_extension_oid("amplitude_sync", true);
#if PG_VERSION_NUM >= 160000
    bool may_drop = OidIsValid(extension) && object_ownercheck(ExtensionRelationId, extension, GetUserId());
#else
    bool may_drop = OidIsValid(extension) && pg_extension_ownercheck(extension, GetUserId());
#endif
    if (!may_drop) PG_RETURN_VOID();
    static bool callback_registered = false;
    if (!callback_registered) {
        RegisterXactCallback(drop_empty_schema, nullptr);
        callback_registered = true;
    }
    drop_schema_at_commit = schema_made_by_extension();
    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "amplitude_sync: SPI_connect failed");
    int64 jobs = change_cron_jobs("SELECT %s.unschedule(jobid) FROM %s.job "
                                  "WHERE jobname OPERATOR(pg_catalog.~~) $1 AND command OPERATOR(pg_catalog.~~) $2 "
                                  "AND database OPERATOR(pg_catalog.=) pg_catalog.current_database()",
                                  "amplitude\\_sync:%", "CALL amplitude\\_sync.run\\_sync(%", nullptr,
                                  "the extension's syncs");
    SPI_finish();
    if (jobs > 0)
        ereport(NOTICE, (errmsg("%lld pg_cron jobs of amplitude_sync's syncs were unscheduled", static_cast<long long>(jobs))));
    PG_RETURN_VOID();
}

}  // extern "C"
