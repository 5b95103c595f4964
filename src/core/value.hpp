// A column value as the PostgreSQL glue hands it to the core: already
// extracted from its Datum, with text owned by PostgreSQL memory that stays
// valid for the row. Core file: no postgres.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace amplitude_sync {

// How a column's type is read, decided once per column.
enum class TypeCategory {
    kBool,         // b
    kInteger,      // int2/int4/int8: i
    kFloat,        // float4/float8: d
    kNumeric,      // numeric_out's text
    kText,         // text, varchar, bpchar: the characters
    kJson,         // json: the stored text
    kJsonb,        // jsonb: jsonb_out's text
    kTimestampTz,  // i = PostgreSQL microseconds, infinite
    kTimestamp,    // i = PostgreSQL microseconds, infinite
    kDate,         // i = PostgreSQL days, infinite
    kArray,        // elements, ndims, dims (row-major, like PostgreSQL)
    kOther,        // any other type: its output function's text
};

struct Value {
    TypeCategory category = TypeCategory::kOther;
    bool is_null = true;
    bool infinite = false;
    bool b = false;
    int64_t i = 0;
    double d = 0;
    const char *text = nullptr;
    size_t text_len = 0;
    // kArray only.
    const Value *elements = nullptr;
    int ndims = 0;
    int dims[6] = {0, 0, 0, 0, 0, 0};
};

// Appends a value as a JSON property value: numbers, strings, ISO 8601 dates
// and timestamps, nested JSON, arrays. Returns false with a reason when JSON
// cannot represent it (NaN, infinity, invalid UTF-8).
bool append_value_json(std::string &out, const Value &v, std::string &reason);

// The text of a json/jsonb value, or false with a reason when it is not valid
// UTF-8: a SQL_ASCII database stores any bytes in json, and one such value
// makes Amplitude refuse the whole request ("Invalid JSON request body").
bool json_value_text(const Value &v, std::string_view &text, std::string &reason);

}  // namespace amplitude_sync
