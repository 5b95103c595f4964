// Pieces of saved syncs (saved_syncs.cpp) that table captures (capture.cpp)
// share: a view owned by a role holds the SQL that runs as that role.
#pragma once

#include "pg_headers.hpp"

// Runs a statement as the extension's owner (role_scope.hpp). SPI connected.
void execute_as_extension(const char *sql);

// How many objects of this database the role owns.
int64 owned_objects(Oid role);

// Makes the view amplitude_sync.<view_name> holding source (a relation name
// or a checked read-only query, resolved with the current search_path),
// made by and owned by owner; what names it in messages and its comment
// (e.g. sync "name"). SPI connected. Returns its oid.
Oid create_source_view(const char *view_name, const char *what, const char *source, Oid owner);
