// Unit tests for src/core/json_text: string escaping, UTF-8 validation,
// numbers, timestamps, depth scan and object member split.
#include "json_text.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

using namespace amplitude_sync;

namespace {

// append_json_string into a fresh buffer; "<invalid>" when it refuses.
std::string Quoted(std::string_view s) {
    std::string out;
    return append_json_string(out, s) ? out : "<invalid>";
}

std::string Double(double v) {
    std::string out;
    return append_json_double(out, v) ? out : "<refused>";
}

std::string Iso(int64_t pg_micros, bool utc = true) {
    std::string out;
    append_iso_timestamp(out, pg_micros, utc);
    return out;
}

std::string IsoDate(int32_t pg_days) {
    std::string out;
    append_iso_date(out, pg_days);
    return out;
}

constexpr int64_t kMicrosPerDay = 86400LL * 1000000LL;

std::string Nested(int depth) {
    return std::string(depth, '[') + std::string(depth, ']');
}

}  // namespace

// ---------------------------------------------------------------- escaping

TEST(JsonString, PlainTextIsQuotedUnchanged) {
    EXPECT_EQ(Quoted(""), "\"\"");
    EXPECT_EQ(Quoted("Signed Up"), "\"Signed Up\"");
    EXPECT_EQ(Quoted("a/b<c>&'"), "\"a/b<c>&'\"");  // '/' is not escaped (like PostgreSQL)
}

TEST(JsonString, EscapesQuoteAndBackslash) {
    EXPECT_EQ(Quoted("say \"hi\""), R"("say \"hi\"")");
    EXPECT_EQ(Quoted("C:\\dir\\"), R"("C:\\dir\\")");
    EXPECT_EQ(Quoted("\"\\\""), R"("\"\\\"")");
}

TEST(JsonString, EscapesControlCharactersLikePostgresEscapeJson) {
    EXPECT_EQ(Quoted("\b\f\n\r\t"), R"("\b\f\n\r\t")");
    EXPECT_EQ(Quoted(std::string("a\0b", 3)), R"("a\u0000b")");
    EXPECT_EQ(Quoted("\x01"), R"("\u0001")");
    EXPECT_EQ(Quoted("\x1b[0m"), R"("\u001b[0m")");
    EXPECT_EQ(Quoted("\x1f"), R"("\u001f")");
    EXPECT_EQ(Quoted("\x0b"), R"("\u000b")");  // vertical tab has no short form
    EXPECT_EQ(Quoted("\x7f"), "\"\x7f\"");      // DEL is not a control char for JSON
}

TEST(JsonString, MultibyteUtf8PassesThroughUnescaped) {
    EXPECT_EQ(Quoted("caf\xc3\xa9"), "\"caf\xc3\xa9\"");                   // é
    EXPECT_EQ(Quoted("\xe2\x82\xac 5"), "\"\xe2\x82\xac 5\"");             // €
    EXPECT_EQ(Quoted("\xf0\x9f\x98\x80\n"), "\"\xf0\x9f\x98\x80\\n\"");   // 😀 then newline
}

TEST(JsonString, AppendsToWhatIsAlreadyInTheBuffer) {
    std::string out = "{\"k\":";
    ASSERT_TRUE(append_json_string(out, "v\""));
    EXPECT_EQ(out, R"({"k":"v\"")");
}

TEST(JsonString, RefusesInvalidUtf8) {
    for (const char *bad : {"\xc3", "abc\xc3", "\x80", "\xff", "\xc0\xaf", "\xc1\xbf",
                            "\xe0\x80\xaf", "\xed\xa0\x80", "\xf0\x80\x80\xaf",
                            "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xe2\x82", "\xe2(\xa1"}) {
        std::string out;
        EXPECT_FALSE(append_json_string(out, bad)) << "input bytes: " << testing::PrintToString(bad);
    }
}

TEST(Utf8, AcceptsWellFormedBoundaries) {
    EXPECT_TRUE(is_valid_utf8(""));
    EXPECT_TRUE(is_valid_utf8("plain ascii"));
    EXPECT_TRUE(is_valid_utf8("\xc2\x80"));          // U+0080
    EXPECT_TRUE(is_valid_utf8("\xdf\xbf"));          // U+07FF
    EXPECT_TRUE(is_valid_utf8("\xe0\xa0\x80"));      // U+0800
    EXPECT_TRUE(is_valid_utf8("\xed\x9f\xbf"));      // U+D7FF, last before surrogates
    EXPECT_TRUE(is_valid_utf8("\xee\x80\x80"));      // U+E000, first after surrogates
    EXPECT_TRUE(is_valid_utf8("\xef\xbf\xbf"));      // U+FFFF
    EXPECT_TRUE(is_valid_utf8("\xf0\x90\x80\x80"));  // U+10000
    EXPECT_TRUE(is_valid_utf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF
}

TEST(Utf8, RejectsOverlongsSurrogatesTruncationAndOutOfRange) {
    EXPECT_FALSE(is_valid_utf8("\xc0\x80"));          // overlong NUL
    EXPECT_FALSE(is_valid_utf8("\xe0\x9f\xbf"));      // overlong 3-byte
    EXPECT_FALSE(is_valid_utf8("\xf0\x8f\xbf\xbf"));  // overlong 4-byte
    EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // U+D800
    EXPECT_FALSE(is_valid_utf8("\xed\xbf\xbf"));      // U+DFFF
    EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // U+110000
    EXPECT_FALSE(is_valid_utf8("ok\xf0\x9f\x98"));    // cut 4-byte sequence
    EXPECT_FALSE(is_valid_utf8("\xbf"));              // lone continuation
    EXPECT_FALSE(is_valid_utf8("\xc3\x28"));          // bad continuation
}

// ----------------------------------------------------------------- numbers

TEST(StorableText, ValidTextIsUnchanged) {
    EXPECT_EQ(storable_text(""), "");
    EXPECT_EQ(storable_text("plain \\x41 \"quoted\""), "plain \\x41 \"quoted\"");
    EXPECT_EQ(storable_text("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
}

TEST(StorableText, InvalidBytesAndNulBecomeHexEscapes) {
    EXPECT_EQ(storable_text("caf\xc3"), "caf\\xc3");                   // cut sequence at the end
    EXPECT_EQ(storable_text("a\xff\xfe" "b"), "a\\xff\\xfeb");
    EXPECT_EQ(storable_text(std::string("a\0b", 3)), "a\\x00b");       // PostgreSQL text cannot hold NUL
    EXPECT_EQ(storable_text("\xed\xa0\x80"), "\\xed\\xa0\\x80");       // a surrogate, byte by byte
    EXPECT_EQ(storable_text("\xc0\xaf" "\xc3\xa9"), "\\xc0\\xaf\xc3\xa9");  // overlong, then a valid é
    EXPECT_EQ(storable_text("\xe2\x82" "x"), "\\xe2\\x82x");            // sequence cut short mid-text
}

TEST(StorableText, ResultIsAlwaysValidUtf8WithoutNul) {
    std::string every_byte;
    for (int c = 0; c < 256; ++c) every_byte.push_back(static_cast<char>(c));
    std::string out = storable_text(every_byte + every_byte);
    EXPECT_TRUE(is_valid_utf8(out));
    EXPECT_EQ(out.find('\0'), std::string::npos);
}

TEST(JsonInt, WritesFullInt64Range) {
    std::string out;
    append_json_int(out, 0);
    out += ' ';
    append_json_int(out, -42);
    out += ' ';
    append_json_int(out, std::numeric_limits<int64_t>::max());
    out += ' ';
    append_json_int(out, std::numeric_limits<int64_t>::min());
    EXPECT_EQ(out, "0 -42 9223372036854775807 -9223372036854775808");
}

TEST(JsonDouble, WritesShortestRoundTripText) {
    EXPECT_EQ(Double(0.1), "0.1");
    EXPECT_EQ(Double(0.1 + 0.2), "0.30000000000000004");
    EXPECT_EQ(Double(1.5), "1.5");
    EXPECT_EQ(Double(100.0), "100");
    EXPECT_EQ(Double(-2.25), "-2.25");
    EXPECT_EQ(Double(1e21), "1e+21");
    EXPECT_EQ(Double(1e-7), "1e-07");
    EXPECT_EQ(Double(-0.0), "-0");
    EXPECT_EQ(Double(5e-324), "5e-324");
    EXPECT_EQ(Double(std::numeric_limits<double>::max()), "1.7976931348623157e+308");
}

TEST(JsonDouble, RefusesNaNAndInfinitiesWithoutWriting) {
    std::string out = "x";
    EXPECT_FALSE(append_json_double(out, std::nan("")));
    EXPECT_FALSE(append_json_double(out, std::numeric_limits<double>::infinity()));
    EXPECT_FALSE(append_json_double(out, -std::numeric_limits<double>::infinity()));
    EXPECT_EQ(out, "x");
}

TEST(JsonNumericText, PassesPostgresNumericOutputThrough) {
    std::string out;
    EXPECT_TRUE(append_json_numeric_text(out, "-12.500"));
    out += ',';
    EXPECT_TRUE(append_json_numeric_text(out, "0"));
    out += ',';
    EXPECT_TRUE(append_json_numeric_text(out, "123456789012345678901234567890.000000001"));
    EXPECT_EQ(out, "-12.500,0,123456789012345678901234567890.000000001");
}

TEST(JsonNumericText, RefusesNaNAndInfinity) {
    std::string out;
    EXPECT_FALSE(append_json_numeric_text(out, "NaN"));
    EXPECT_FALSE(append_json_numeric_text(out, "Infinity"));
    EXPECT_FALSE(append_json_numeric_text(out, "-Infinity"));
    EXPECT_EQ(out, "");
}

// -------------------------------------------------------------- timestamps

TEST(Timestamp, EpochMillisFromPostgresMicros) {
    EXPECT_EQ(pg_timestamp_to_unix_millis(0), 946684800000);
    EXPECT_EQ(pg_timestamp_to_unix_millis(767881800250000), 1714566600250);  // 2024-05-01 12:30:00.25
    EXPECT_EQ(pg_timestamp_to_unix_millis(767881800250999), 1714566600250);  // truncates sub-ms
    EXPECT_EQ(pg_timestamp_to_unix_millis(-kPgEpochToUnixMicros), 0);        // 1970-01-01
}

TEST(Timestamp, EpochMillisFloorsNegativeValues) {
    EXPECT_EQ(pg_timestamp_to_unix_millis(-1), 946684799999);
    EXPECT_EQ(pg_timestamp_to_unix_millis(-kPgEpochToUnixMicros - 1), -1);     // 1969-12-31 23:59:59.999999
    EXPECT_EQ(pg_timestamp_to_unix_millis(-kPgEpochToUnixMicros - 1000), -1);  // exactly -1 ms
    EXPECT_EQ(pg_timestamp_to_unix_millis(-kPgEpochToUnixMicros - 1001), -2);
    EXPECT_EQ(pg_timestamp_to_unix_millis(-960867740000000), -14182940000);     // 1969-07-20 20:17:40
}

TEST(Timestamp, IsoTextWithAndWithoutZone) {
    EXPECT_EQ(Iso(0, true), "\"2000-01-01T00:00:00Z\"");
    EXPECT_EQ(Iso(0, false), "\"2000-01-01T00:00:00\"");
}

TEST(Timestamp, IsoFractionUsesMillisecondsWhenEnough) {
    EXPECT_EQ(Iso(767881800250000), "\"2024-05-01T12:30:00.250Z\"");
    EXPECT_EQ(Iso(1000), "\"2000-01-01T00:00:00.001Z\"");
    EXPECT_EQ(Iso(999000), "\"2000-01-01T00:00:00.999Z\"");
}

TEST(Timestamp, IsoFractionUsesMicrosecondsWhenNeeded) {
    EXPECT_EQ(Iso(767881800250500), "\"2024-05-01T12:30:00.250500Z\"");
    EXPECT_EQ(Iso(1), "\"2000-01-01T00:00:00.000001Z\"");
    EXPECT_EQ(Iso(999999, false), "\"2000-01-01T00:00:00.999999\"");
}

TEST(Timestamp, IsoBeforeThePostgresEpoch) {
    EXPECT_EQ(Iso(-1), "\"1999-12-31T23:59:59.999999Z\"");
    EXPECT_EQ(Iso(-kMicrosPerDay), "\"1999-12-31T00:00:00Z\"");
    EXPECT_EQ(Iso(-946684800001000), "\"1969-12-31T23:59:59.999Z\"");
    EXPECT_EQ(Iso(-960867740000000), "\"1969-07-20T20:17:40Z\"");
    EXPECT_EQ(Iso(-3150662399999999, false), "\"1900-02-28T00:00:00.000001\"");
}

TEST(Timestamp, IsoExtremeYearsKeepFourDigitsAndSign) {
    // PostgreSQL's lowest timestamp, 4714-11-24 BC = astronomical year -4713.
    EXPECT_EQ(Iso(-2451545LL * kMicrosPerDay), "\"-4713-11-24T00:00:00Z\"");
    EXPECT_EQ(Iso(2921939LL * kMicrosPerDay + 86399999999LL), "\"9999-12-31T23:59:59.999999Z\"");
    EXPECT_EQ(Iso(2921940LL * kMicrosPerDay), "\"+10000-01-01T00:00:00Z\"");
}

TEST(Date, IsoDates) {
    EXPECT_EQ(IsoDate(0), "\"2000-01-01\"");
    EXPECT_EQ(IsoDate(-1), "\"1999-12-31\"");
    EXPECT_EQ(IsoDate(8825), "\"2024-02-29\"");     // leap day
    EXPECT_EQ(IsoDate(-10957), "\"1970-01-01\"");
    EXPECT_EQ(IsoDate(-10958), "\"1969-12-31\"");
    EXPECT_EQ(IsoDate(-146037), "\"1600-03-01\"");  // 1600 is a leap year
    EXPECT_EQ(IsoDate(-730119), "\"0001-01-01\"");
    EXPECT_EQ(IsoDate(-730120), "\"0000-12-31\"");
    EXPECT_EQ(IsoDate(-730486), "\"-0001-12-31\"");
}

// ------------------------------------------------------------------- depth

TEST(JsonDepth, CountsContainerNesting) {
    EXPECT_EQ(json_max_depth(""), 0);
    EXPECT_EQ(json_max_depth("42"), 0);
    EXPECT_EQ(json_max_depth("\"text\""), 0);
    EXPECT_EQ(json_max_depth("{}"), 1);
    EXPECT_EQ(json_max_depth("[{}]"), 2);
    EXPECT_EQ(json_max_depth(R"({"a":[1,{"b":[]}],"c":{}})"), 4);
    EXPECT_EQ(json_max_depth("[[],[],[[]]]"), 3);  // siblings do not add up
    EXPECT_EQ(json_max_depth(Nested(40)), 40);
    EXPECT_EQ(json_max_depth(Nested(41)), 41);
}

TEST(JsonDepth, IgnoresBracketsInsideStringsIncludingEscapedQuotes) {
    EXPECT_EQ(json_max_depth(R"({"a":"[[[{{{"})"), 1);
    EXPECT_EQ(json_max_depth(R"({"a\"[[":"x\"{{\\"})"), 1);
    EXPECT_EQ(json_max_depth(R"(["\\",[["]]]"]])"), 3);
}

// ---------------------------------------------------------- object members

TEST(JsonMembers, SplitsTopLevelMembersKeepingRawText) {
    std::vector<JsonMember> m;
    ASSERT_TRUE(json_object_members(R"({"a":1,"b":"x,y","c":{"d":[1,2]},"e":[{"f":"}"}],"g":null})", m));
    ASSERT_EQ(m.size(), 5u);
    EXPECT_EQ(m[0].quoted_key, "\"a\"");
    EXPECT_EQ(m[0].value, "1");
    EXPECT_EQ(m[1].quoted_key, "\"b\"");
    EXPECT_EQ(m[1].value, "\"x,y\"");
    EXPECT_EQ(m[2].quoted_key, "\"c\"");
    EXPECT_EQ(m[2].value, R"({"d":[1,2]})");
    EXPECT_EQ(m[3].quoted_key, "\"e\"");
    EXPECT_EQ(m[3].value, R"([{"f":"}"}])");
    EXPECT_EQ(m[4].quoted_key, "\"g\"");
    EXPECT_EQ(m[4].value, "null");
}

TEST(JsonMembers, HandlesEscapedQuotesInKeysAndValues) {
    std::vector<JsonMember> m;
    ASSERT_TRUE(json_object_members(R"({"a\"b": "c\"}d", "e\\": true, "\"": -1.5e3})", m));
    ASSERT_EQ(m.size(), 3u);
    EXPECT_EQ(m[0].quoted_key, R"("a\"b")");
    EXPECT_EQ(m[0].value, R"("c\"}d")");
    EXPECT_EQ(m[1].quoted_key, R"("e\\")");
    EXPECT_EQ(m[1].value, "true");
    EXPECT_EQ(m[2].quoted_key, R"("\"")");
    EXPECT_EQ(m[2].value, "-1.5e3");
}

TEST(JsonMembers, ToleratesJsonTypeWhitespace) {
    std::vector<JsonMember> m;
    ASSERT_TRUE(json_object_members(" {\n  \"a\" : 1 ,\t\"b\" : [ 1, 2 ] ,\r\n \"c\":{ } }  ", m));
    ASSERT_EQ(m.size(), 3u);
    EXPECT_EQ(m[0].quoted_key, "\"a\"");
    EXPECT_EQ(m[0].value, "1");
    EXPECT_EQ(m[1].quoted_key, "\"b\"");
    EXPECT_EQ(m[1].value, "[ 1, 2 ]");
    EXPECT_EQ(m[2].quoted_key, "\"c\"");
    EXPECT_EQ(m[2].value, "{ }");
}

TEST(JsonMembers, EmptyObjectHasNoMembersAndClearsOldOnes) {
    std::vector<JsonMember> m = {{"\"stale\"", "1"}};
    ASSERT_TRUE(json_object_members("{}", m));
    EXPECT_TRUE(m.empty());
    ASSERT_TRUE(json_object_members("{ }", m));
    EXPECT_TRUE(m.empty());
}

TEST(JsonMembers, RefusesNonObjects) {
    std::vector<JsonMember> m;
    EXPECT_FALSE(json_object_members("[1,2]", m));
    EXPECT_FALSE(json_object_members("\"{}\"", m));
    EXPECT_FALSE(json_object_members("null", m));
    EXPECT_FALSE(json_object_members("", m));
    EXPECT_FALSE(json_object_members("   ", m));
}

TEST(JsonIsObject, LooksAtFirstNonBlankCharacter) {
    EXPECT_TRUE(json_is_object("{}"));
    EXPECT_TRUE(json_is_object(" \n\t{\"a\":1}"));
    EXPECT_FALSE(json_is_object("[{}]"));
    EXPECT_FALSE(json_is_object("\"{\""));
    EXPECT_FALSE(json_is_object("null"));
    EXPECT_FALSE(json_is_object(""));
    EXPECT_FALSE(json_is_object("  "));
}

// ------------------------------------------------------------ URL encoding

namespace {

std::string UrlEncoded(std::string_view s) {
    std::string out;
    append_url_encoded(out, s);
    return out;
}

}  // namespace

TEST(UrlEncoding, UnreservedCharactersAreKept) {
    const std::string unreserved =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    EXPECT_EQ(UrlEncoded(unreserved), unreserved);
    EXPECT_EQ(url_encoded_size(unreserved), unreserved.size());
    EXPECT_EQ(UrlEncoded(""), "");
    EXPECT_EQ(url_encoded_size(""), 0u);
}

TEST(UrlEncoding, EverythingElseIsPercentUppercaseHex) {
    EXPECT_EQ(UrlEncoded(" "), "%20");  // not '+'
    EXPECT_EQ(UrlEncoded("+"), "%2B");
    EXPECT_EQ(UrlEncoded("a b&c=d"), "a%20b%26c%3Dd");
    EXPECT_EQ(UrlEncoded(R"({"user_id":"u-1","n":[1,2]})"),
              "%7B%22user_id%22%3A%22u-1%22%2C%22n%22%3A%5B1%2C2%5D%7D");
    EXPECT_EQ(UrlEncoded("!#$%'()*/:;<>?@\\^`|"),
              "%21%23%24%25%27%28%29%2A%2F%3A%3B%3C%3E%3F%40%5C%5E%60%7C");
    EXPECT_EQ(UrlEncoded(std::string_view("\0\n\r\t\x1f\x7f", 6)), "%00%0A%0D%09%1F%7F");
}

TEST(UrlEncoding, MultibyteUtf8IsEncodedByteByByte) {
    EXPECT_EQ(UrlEncoded("\xC3\xA9"), "%C3%A9");                   // é
    EXPECT_EQ(UrlEncoded("\xE2\x82\xAC" "5"), "%E2%82%AC5");       // €5
    EXPECT_EQ(UrlEncoded("\xF0\x9F\x98\x80"), "%F0%9F%98%80");     // 😀
    EXPECT_EQ(UrlEncoded("Z\xC3\xBCrich"), "Z%C3%BCrich");
    EXPECT_EQ(UrlEncoded("\xFF\x80"), "%FF%80");  // any byte, valid UTF-8 or not
}

TEST(UrlEncoding, AppendsToWhatIsAlreadyInTheBuffer) {
    std::string out = "api_key=";
    append_url_encoded(out, "k/1");
    append_url_encoded(out, "");
    EXPECT_EQ(out, "api_key=k%2F1");
}

TEST(UrlEncoding, SizeMatchesTheEncodedText) {
    for (int c = 0; c < 256; ++c) {
        std::string one(1, static_cast<char>(c));
        EXPECT_EQ(url_encoded_size(one), UrlEncoded(one).size()) << c;
    }
    for (std::string_view s : {std::string_view("a b&c=d"), std::string_view("\xF0\x9F\x98\x80 x"),
                               std::string_view(R"({"user_properties":{"$set":{"plan":"pro"}}})")})
        EXPECT_EQ(url_encoded_size(s), UrlEncoded(s).size()) << s;
    EXPECT_EQ(url_encoded_size("a b"), 5u);
    EXPECT_EQ(url_encoded_size("\xC3\xA9"), 6u);
    EXPECT_EQ(url_encoded_size(R"({"a":1})"), 17u);  // %7B%22a%22%3A1%7D
}

// ===================================================== string lengths

TEST(Utf8CharCount, CountsCharactersNotBytes) {
    EXPECT_EQ(utf8_char_count(""), 0u);
    EXPECT_EQ(utf8_char_count("abc"), 3u);
    EXPECT_EQ(utf8_char_count("Z\xC3\xBCrich \xF0\x9F\x98\x80"), 8u);
}

TEST(JsonLongString, FindsAStringOverTheLimitAnywhere) {
    std::string s1024(1024, 'a'), s1025(1025, 'a');
    EXPECT_FALSE(json_has_string_longer_than("\"" + s1024 + "\"", 1024));
    EXPECT_TRUE(json_has_string_longer_than("\"" + s1025 + "\"", 1024));
    EXPECT_TRUE(json_has_string_longer_than("{\"a\":[1,{\"b\":\"" + s1025 + "\"}]}", 1024));
    EXPECT_TRUE(json_has_string_longer_than("{\"" + s1025 + "\":1}", 1024));  // keys too
    // Many short strings are not one long one.
    std::string many = "[";
    for (int i = 0; i < 300; ++i) many += (i ? ",\"" : "\"") + std::string(10, 'b') + "\"";
    EXPECT_FALSE(json_has_string_longer_than(many + "]", 1024));
    // An escape is one character; multibyte characters count once.
    std::string escaped;
    for (int i = 0; i < 1024; ++i) escaped += "\\u00e9";
    EXPECT_FALSE(json_has_string_longer_than("\"" + escaped + "\"", 1024));
    EXPECT_TRUE(json_has_string_longer_than("\"" + escaped + "\\n\"", 1024));
    std::string umlauts;
    for (int i = 0; i < 1024; ++i) umlauts += "\xC3\xBC";
    EXPECT_FALSE(json_has_string_longer_than("\"" + umlauts + "\"", 1024));
}
