// Reading column values out of PostgreSQL Datums into core Values, with the
// per-column type work (output functions, array layout) done once.
#pragma once

#include <string>

#include "pg_headers.hpp"
#include "value.hpp"

struct ColumnReader {
    amplitude_sync::TypeCategory category;
    Oid type_oid;  // after looking through domains
    FmgrInfo output;  // numeric, jsonb, other; for arrays: the element's
    // Arrays only.
    Oid elem_type;
    int16 elem_len;
    bool elem_byval;
    char elem_align;
    amplitude_sync::TypeCategory elem_category;
};

// Sets up a reader for a column of type type_oid.
void init_column_reader(ColumnReader *reader, Oid type_oid);

// Fills value from a Datum. Text lives in CurrentMemoryContext (reset per row)
// and is converted to UTF-8 when the database encoding is another one.
void read_column_value(const ColumnReader *reader, Datum datum, bool is_null,
                       amplitude_sync::Value *value);

// And back: UTF-8 text from the core as a text Datum in the database encoding.
Datum utf8_text_datum(const std::string &s);
