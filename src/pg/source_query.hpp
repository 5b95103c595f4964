// What a source may be: one read-only SELECT, VALUES or TABLE statement,
// checked the same way for one-shot calls and saved syncs, before anything
// runs; and the relation a saved sync's source names, if it is a name.
#pragma once

#include "pg_headers.hpp"

// The statement's text without a trailing semicolon; raises 42601 for a
// syntax error and 22023 for anything but a single read-only query (an
// INSERT ... RETURNING, a data-modifying WITH, SELECT INTO, several
// statements). The text is wrapped in other SQL between newlines, so a
// trailing -- comment is harmless.
char *checked_source_query(const char *query);

// Whether a source is a relation name ("customers", "analytics.orders")
// rather than a query.
bool source_names_relation(const char *source);

// The relation a source names, resolved with the current search_path;
// InvalidOid when the source is a query.
Oid source_relation(const char *source);
