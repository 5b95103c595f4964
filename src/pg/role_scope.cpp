#include "role_scope.hpp"

void enter_role_scope(RoleScope *scope, Oid role, const char *search_path, bool read_only) {
    GetUserIdAndSecContext(&scope->saved_user, &scope->saved_context);
    SetUserIdAndSecContext(OidIsValid(role) ? role : scope->saved_user,
                           scope->saved_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
    // The settings below are undone by AtEOXact_GUC at this nest level, as
    // fmgr does for a function's SET clause.
    scope->guc_nest_level = NewGUCNestLevel();
    (void)set_config_option("search_path", search_path, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
                            false);
    // The transaction's read-only flag itself (PostgreSQL 17 refuses
    // transaction_read_only as a function-local setting). An error inside
    // needs no clean-up: a subtransaction's abort restores the flag, and the
    // next transaction starts from the default.
    scope->saved_read_only = XactReadOnly;
    if (read_only) XactReadOnly = true;
}

void leave_role_scope(const RoleScope *scope) {
    // false: even a plain SET made inside (a source calling set_config) is
    // undone, as for VACUUM's and REFRESH MATERIALIZED VIEW's restricted
    // operations; the caller's session keeps its own settings.
    AtEOXact_GUC(false, scope->guc_nest_level);
    XactReadOnly = scope->saved_read_only;
    SetUserIdAndSecContext(scope->saved_user, scope->saved_context);
}

Oid extension_owner() {
    // From the catalog, without SQL: nothing the caller controls is involved.
    Relation rel = table_open(ExtensionRelationId, AccessShareLock);
    ScanKeyData key;
    ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
                CStringGetDatum("amplitude_sync"));
    SysScanDesc scan = systable_beginscan(rel, ExtensionNameIndexId, true, nullptr, 1, &key);
    HeapTuple tuple = systable_getnext(scan);
    if (!HeapTupleIsValid(tuple))
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT), errmsg("extension \"amplitude_sync\" is not installed")));
    Oid owner = reinterpret_cast<Form_pg_extension>(GETSTRUCT(tuple))->extowner;
    systable_endscan(scan);
    table_close(rel, AccessShareLock);
    return owner;
}

void enter_extension_scope(RoleScope *scope) {
    enter_role_scope(scope, extension_owner(), AMP_PINNED_SEARCH_PATH, false);
}
