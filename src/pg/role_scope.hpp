// SQL that runs as someone else: the one way this extension switches
// identity. A scope becomes a role as a security-restricted operation and
// pins search_path for the statements run inside it, so nothing the caller
// put on their search_path (shadow operators, functions, tables) can run
// with the other role's rights. The SQL run in a scope still qualifies its
// operators and functions (OPERATOR(pg_catalog.=)): either defence holds alone.
//
// Scopes are transaction-local: leave a scope before any commit. An ERROR
// inside a scope needs no clean-up here: transaction (or subtransaction)
// abort restores the user and the settings.
#pragma once

#include "pg_headers.hpp"

// The path every statement of the extension's own runs under.
#define AMP_PINNED_SEARCH_PATH "pg_catalog, pg_temp"

struct RoleScope {
    Oid saved_user;
    int saved_context;
    int guc_nest_level;
    bool saved_read_only;
};

// Becomes role (InvalidOid: stays the current user, still restricted) with
// search_path set to the given path. read_only: the statements may not
// write (a source query and every function it calls), like a read-only
// transaction.
void enter_role_scope(RoleScope *scope, Oid role, const char *search_path, bool read_only);
void leave_role_scope(const RoleScope *scope);

// The extension's owner (it installed the extension, so a superuser): the
// role that writes the run history and the syncs' state.
Oid extension_owner();

// Shorthand: the extension owner, pinned search_path, read-write.
void enter_extension_scope(RoleScope *scope);
