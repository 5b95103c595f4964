// Unit tests for src/core/records: make_storable() leaves every text of a
// Rejection storable by the run log (valid UTF-8, no NUL, a json payload).
#include "records.hpp"

#include "field_mapping.hpp"
#include "json_text.hpp"

#include <gtest/gtest.h>

#include <string>

using namespace amplitude_sync;

namespace {

Rejection Rejected(const std::string &reason) {
    Rejection r;
    r.record.row_number = 3;
    r.record.json = R"({"user_id":"caf\u00e9","n":1})";
    r.record.user_id = "user-1";
    r.field = "user_id";
    r.reason = reason;
    return r;
}

}  // namespace

TEST(MakeStorable, ValidTextsAreUnchanged) {
    Rejection r = Rejected("user_id \"caf\xc3\xa9\" is shorter than 5 characters");
    r.record.json = "{\"user_id\":\"caf\xc3\xa9\"}";
    make_storable(r);
    EXPECT_EQ(r.reason, "user_id \"caf\xc3\xa9\" is shorter than 5 characters");
    EXPECT_EQ(r.record.json, "{\"user_id\":\"caf\xc3\xa9\"}");
    EXPECT_EQ(r.field, "user_id");
    EXPECT_EQ(r.record.user_id, "user-1");
}

// The reason quotes the offending value: its bad bytes are escaped.
TEST(MakeStorable, AReasonQuotingInvalidBytesIsEscaped) {
    std::string id = "ab\xff";
    Rejection r = Rejected("user_id " + *check_amplitude_id(id, 5));
    r.record.user_id = id;
    make_storable(r);
    EXPECT_EQ(r.reason, "user_id \"ab\\xff\" is shorter than 5 characters");
    EXPECT_EQ(r.record.user_id, "ab\\xff");
    EXPECT_EQ(r.record.json, R"({"user_id":"caf\u00e9","n":1})");
}

TEST(MakeStorable, EveryTextIsEscapedIncludingNul) {
    Rejection r = Rejected("refused");
    std::string nul("a\0b", 3);
    r.field = "ti" + nul;
    r.record.device_id = "d\xc3";
    r.record.insert_id = "i\xe2\x82";
    r.record.event_type = nul;
    r.record.group_type = "g\xed\xa0\x80";
    r.record.group_value = "v\xf5";
    make_storable(r);
    EXPECT_EQ(r.field, "tia\\x00b");
    EXPECT_EQ(r.record.device_id, "d\\xc3");
    EXPECT_EQ(r.record.insert_id, "i\\xe2\\x82");
    EXPECT_EQ(r.record.event_type, "a\\x00b");
    EXPECT_EQ(r.record.group_type, "g\\xed\\xa0\\x80");
    EXPECT_EQ(r.record.group_value, "v\\xf5");
    EXPECT_EQ(r.reason, "refused");
}

// Escaping a payload would make it invalid JSON: it is dropped, and the
// reason says why it is missing.
TEST(MakeStorable, PayloadThatIsNotValidUtf8IsDropped) {
    Rejection r = Rejected("column \"meta\": json is not valid UTF-8");
    r.record.json = "{\"meta\":{\"k\xff\":1}}";
    make_storable(r);
    EXPECT_EQ(r.record.json, "");
    EXPECT_EQ(r.reason, "column \"meta\": json is not valid UTF-8 (payload not kept: not valid UTF-8)");
    r.record.json = std::string("{\"a\":\"\0\"}", 9);
    make_storable(r);
    EXPECT_EQ(r.record.json, "");
}
