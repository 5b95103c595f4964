// The arguments of the SQL-callable functions: NULL checks with
// PostgreSQL's error, and text arguments as C strings. Every entry point
// uses these rather than its own copy.
#pragma once

#include "pg_headers.hpp"

// Raises 22004 "argument \"name\" must not be null" when it is.
void require_arg(FunctionCallInfo fcinfo, int arg, const char *name);

// A text argument that must be given, as a C string.
const char *text_arg(FunctionCallInfo fcinfo, int arg, const char *name);

// A text argument, or nullptr when NULL.
const char *optional_text_arg(FunctionCallInfo fcinfo, int arg);

// A name argument that must be given (a server, say), as a C string.
const char *name_arg(FunctionCallInfo fcinfo, int arg, const char *name);
