// JSON text primitives used to build Amplitude payloads without a DOM.
//
// Core file: never includes postgres.h. Every function appends to a caller's
// buffer so one buffer can be reused for every row of a run.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace amplitude_sync {

// Appends s as a quoted JSON string. Escapes exactly as PostgreSQL's
// escape_json() does, so keys we write compare equal to keys in jsonb output.
// Returns false (leaving out partly written) when s is not valid UTF-8.
bool append_json_string(std::string &out, std::string_view s);

// True when s is well-formed UTF-8 (no overlongs, no surrogates).
bool is_valid_utf8(std::string_view s);

// s as text PostgreSQL can store in a text column whatever the source: each
// byte that is not part of valid UTF-8, and NUL, becomes the four characters
// \xNN. For messages that quote rows' values or Amplitude's answers.
std::string storable_text(std::string_view s);

// Characters (code points) in UTF-8 text: the bytes that start a character.
size_t utf8_char_count(std::string_view s);

// True when a string in the JSON text (key or value) holds more than
// max_chars characters once unescaped (an escape counts as one). Cheap for
// texts too short to hold one.
bool json_has_string_longer_than(std::string_view json, size_t max_chars);

void append_json_int(std::string &out, int64_t v);

// Shortest text that reads back as the same double. Returns false for NaN and
// infinities, which JSON cannot represent.
bool append_json_double(std::string &out, double v);

// PostgreSQL's numeric output ("-12.500") is already a valid JSON number,
// except for NaN and +/-Infinity: returns false for those.
bool append_json_numeric_text(std::string &out, std::string_view numeric_text);

// PostgreSQL timestamps count microseconds from 2000-01-01 00:00:00 UTC.
constexpr int64_t kPgEpochToUnixMicros = 946684800LL * 1000000LL;

// Epoch milliseconds for a PostgreSQL timestamp (floor division).
int64_t pg_timestamp_to_unix_millis(int64_t pg_micros);

// ISO 8601 text of a PostgreSQL timestamp: "2024-05-01T12:30:00.250Z" when
// utc_suffix (timestamptz), without the Z for timestamp without time zone.
// Fraction digits only as many as needed (ms, then us).
void append_iso_timestamp(std::string &out, int64_t pg_micros, bool utc_suffix);

// ISO 8601 date for a PostgreSQL date (days from 2000-01-01).
void append_iso_date(std::string &out, int32_t pg_days);

// Deepest container nesting in a JSON text ("{}" is 1, "[{}]" is 2, a
// scalar is 0). The text must be valid JSON (PostgreSQL json/jsonb output).
int json_max_depth(std::string_view json);

// A top-level member of a JSON object: key as written (quoted, escaped) and
// the raw value text.
struct JsonMember {
    std::string_view quoted_key;
    std::string_view value;
};

// Splits a JSON object text into its members. Returns false when the text is
// not an object. The text must be valid JSON.
bool json_object_members(std::string_view json, std::vector<JsonMember> &members);

// True when the first non-blank character starts an object.
bool json_is_object(std::string_view json);

// application/x-www-form-urlencoded: unreserved characters as they are,
// every other byte as %XX.
void append_url_encoded(std::string &out, std::string_view s);
size_t url_encoded_size(std::string_view s);

}  // namespace amplitude_sync
