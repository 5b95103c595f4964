// Unit tests for src/core/event_encoder: column planning (roles, type checks,
// PlanError SQLSTATEs), Amplitude's ID rules, derived insert_ids, and the
// event text EventEncoder::encode_row writes for a row or the reason it
// refuses the row.
#include "event_encoder.hpp"
#include "field_mapping_support.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

using namespace amplitude_sync;
using namespace amplitude_sync::test;
using TC = TypeCategory;

namespace {

// The PlanError plan_event_columns throws (sqlstate "none" when it does not).
PlanFailure PlanFails(const std::vector<ColumnInput> &columns) {
    return FailureOf([&] { plan_event_columns(columns); });
}

// Builds column values; text values point into storage that lives as long as
// the fixture.
class EncoderTest : public testing::Test, protected ValueBuilder {
protected:
    struct Encoded {
        bool ok = false;
        Record record;
        Rejection rejection;
    };

    static Encoded EncodeWith(EventEncoder &encoder, const std::vector<Value> &values,
                              uint64_t row_number = 7) {
        Encoded e;
        e.ok = encoder.encode_row(row_number, values.data(), e.record, e.rejection);
        return e;
    }
    static Encoded Encode(const std::vector<ColumnInput> &columns, const std::vector<Value> &values,
                          int min_id_length = 5) {
        EventEncoder encoder(plan_event_columns(columns), EventOptions{min_id_length});
        return EncodeWith(encoder, values);
    }
    // The accepted event's JSON text ("<rejected: reason>" otherwise).
    static std::string EventJson(const std::vector<ColumnInput> &columns,
                                 const std::vector<Value> &values) {
        Encoded e = Encode(columns, values);
        return e.ok ? e.record.json : "<rejected: " + e.rejection.reason + ">";
    }
    // An event text as encode_row finishes it: derived insert_id appended.
    static std::string WithDerivedInsertId(const std::string &without_closing_brace) {
        return without_closing_brace + ",\"insert_id\":\"" +
               derive_insert_id(without_closing_brace) + "\"}";
    }
};

using EventColumns = std::vector<ColumnInput>;
const EventColumns kBasic = {Col("event_type", TC::kText), Col("user_id", TC::kText)};

}  // namespace

// =================================================================== plan

TEST(PlanColumns, MapsNamesToRolesAndAmplitudeKeys) {
    std::vector<ColumnPlan> plan = plan_event_columns({
        Col("event_type", TC::kText), Col("user_id", TC::kInteger), Col("device_id", TC::kOther),
        Col("insert_id", TC::kText), Col("time", TC::kTimestampTz), Col("session_id", TC::kInteger),
        Col("event_id", TC::kInteger), Col("price", TC::kNumeric), Col("user_properties", TC::kJsonb),
        Col("event_properties", TC::kJson), Col("platform", TC::kText),
        Col("product_id", TC::kText), Col("revenue_type", TC::kText),
        Col("skip_user_properties_sync", TC::kBool), Col("color", TC::kText),
        Col("say \"hi\"", TC::kInteger),
    });
    ASSERT_EQ(plan.size(), 16u);
    struct Expect {
        FieldRole role;
        const char *key;
    } expected[] = {
        {FieldRole::kEventType, "\"event_type\""},
        {FieldRole::kUserId, "\"user_id\""},
        {FieldRole::kDeviceId, "\"device_id\""},
        {FieldRole::kInsertId, "\"insert_id\""},
        {FieldRole::kEpochMillis, "\"time\""},
        {FieldRole::kEpochMillis, "\"session_id\""},
        {FieldRole::kInteger, "\"event_id\""},
        {FieldRole::kNumber, "\"price\""},
        {FieldRole::kObject, "\"user_properties\""},
        {FieldRole::kEventProperties, "\"event_properties\""},
        {FieldRole::kString, "\"platform\""},
        {FieldRole::kString, "\"productId\""},
        {FieldRole::kString, "\"revenueType\""},
        {FieldRole::kBool, "\"$skip_user_properties_sync\""},
        {FieldRole::kProperty, "\"color\""},
        {FieldRole::kProperty, R"("say \"hi\"")"},
    };
    for (size_t i = 0; i < plan.size(); ++i) {
        EXPECT_EQ(plan[i].role, expected[i].role) << plan[i].column_name;
        EXPECT_EQ(plan[i].json_key, expected[i].key) << plan[i].column_name;
    }
    EXPECT_EQ(plan[1].category, TC::kInteger);
    EXPECT_EQ(plan[15].column_name, "say \"hi\"");
}

TEST(PlanColumns, NamesAreCaseSensitive) {
    std::vector<ColumnPlan> plan = plan_event_columns(
        {Col("event_type", TC::kText), Col("user_id", TC::kText), Col("Time", TC::kText)});
    EXPECT_EQ(plan[2].role, FieldRole::kProperty);  // "Time" is not Amplitude's "time"
}

TEST(PlanColumns, MissingEventTypeIs42703) {
    PlanFailure f = PlanFails({Col("user_id", TC::kText), Col("Event_Type", TC::kText)});
    EXPECT_EQ(f.sqlstate, "42703");
    EXPECT_EQ(f.message, "query has no column named \"event_type\"");
    EXPECT_EQ(f.detail, "Every Amplitude event needs an event type.");
    EXPECT_NE(f.hint.find("AS event_type"), std::string::npos) << f.hint;
}

TEST(PlanColumns, MissingUserAndDeviceIdIs42703) {
    PlanFailure f = PlanFails({Col("event_type", TC::kText), Col("userid", TC::kText)});
    EXPECT_EQ(f.sqlstate, "42703");
    EXPECT_EQ(f.message, "query has no column named \"user_id\" or \"device_id\"");
    EXPECT_EQ(f.detail, "Every Amplitude event needs a user_id or a device_id.");
}

TEST(PlanColumns, EitherIdIsEnough) {
    EXPECT_EQ(PlanFails({Col("event_type", TC::kText), Col("device_id", TC::kText)}).sqlstate, "none");
    EXPECT_EQ(PlanFails({Col("event_type", TC::kText), Col("user_id", TC::kText)}).sqlstate, "none");
}

TEST(PlanColumns, TwoColumnsForOneFieldAre42701) {
    PlanFailure f = PlanFails({Col("event_type", TC::kText), Col("user_id", TC::kText),
                               Col("product_id", TC::kText), Col("productId", TC::kText)});
    EXPECT_EQ(f.sqlstate, "42701");
    EXPECT_EQ(f.message, "column \"productId\" maps to \"productId\" more than once");
    EXPECT_EQ(f.hint, "Give the columns distinct aliases in the query.");

    f = PlanFails({Col("event_type", TC::kText), Col("user_id", TC::kText),
                   Col("skip_user_properties_sync", TC::kBool),
                   Col("$skip_user_properties_sync", TC::kBool)});
    EXPECT_EQ(f.sqlstate, "42701");
    EXPECT_EQ(f.message,
              "column \"$skip_user_properties_sync\" maps to \"$skip_user_properties_sync\" more "
              "than once");

    f = PlanFails({Col("event_type", TC::kText), Col("user_id", TC::kText),
                   Col("user_id", TC::kInteger)});
    EXPECT_EQ(f.sqlstate, "42701");
    EXPECT_EQ(f.message, "column \"user_id\" maps to \"user_id\" more than once");
}

TEST(PlanColumns, TwoColumnsForOnePropertyAre42701) {
    PlanFailure f = PlanFails({Col("event_type", TC::kText), Col("user_id", TC::kText),
                               Col("color", TC::kText), Col("color", TC::kInteger)});
    EXPECT_EQ(f.sqlstate, "42701");
    EXPECT_EQ(f.message, "column \"color\" maps to \"color\" more than once");
}

TEST(PlanColumns, WrongTypesAre42804WithTheReason) {
    struct Case {
        ColumnInput column;
        const char *message;
    } cases[] = {
        {Col("time", TC::kText),
         "column \"time\" must be a timestamptz, timestamp, date or integer epoch milliseconds"},
        {Col("time", TC::kFloat),
         "column \"time\" must be a timestamptz, timestamp, date or integer epoch milliseconds"},
        {Col("session_id", TC::kNumeric),
         "column \"session_id\" must be a timestamptz, timestamp, date or integer epoch "
         "milliseconds"},
        {Col("event_id", TC::kNumeric), "column \"event_id\" must be an integer"},
        {Col("event_id", TC::kText), "column \"event_id\" must be an integer"},
        {Col("quantity", TC::kFloat), "column \"quantity\" must be an integer"},
        {Col("price", TC::kText), "column \"price\" must be numeric"},
        {Col("revenue", TC::kBool), "column \"revenue\" must be numeric"},
        {Col("location_lat", TC::kJsonb), "column \"location_lat\" must be numeric"},
        {Col("user_properties", TC::kText), "column \"user_properties\" must be json or jsonb"},
        {Col("groups", TC::kArray), "column \"groups\" must be json or jsonb"},
        {Col("group_properties", TC::kOther), "column \"group_properties\" must be json or jsonb"},
        {Col("event_properties", TC::kText), "column \"event_properties\" must be json or jsonb"},
        {Col("platform", TC::kJsonb), "column \"platform\" must be a scalar (text, number, uuid, ...)"},
        {Col("insert_id", TC::kArray), "column \"insert_id\" must be a scalar (text, number, uuid, ...)"},
        {Col("skip_user_properties_sync", TC::kText), "column \"skip_user_properties_sync\" must be boolean"},
    };
    for (const Case &c : cases) {
        PlanFailure f = PlanFails({Col("event_type", TC::kText), Col("user_id", TC::kText), c.column});
        EXPECT_EQ(f.sqlstate, "42804") << c.column.name;
        EXPECT_EQ(f.message, c.message);
    }
}

TEST(PlanColumns, WrongTypeOnIdOrEventTypeIs42804) {
    PlanFailure f = PlanFails({Col("event_type", TC::kText), Col("user_id", TC::kJson)});
    EXPECT_EQ(f.sqlstate, "42804");
    EXPECT_EQ(f.message, "column \"user_id\" must be a scalar (text, number, uuid, ...)");
    f = PlanFails({Col("event_type", TC::kArray), Col("device_id", TC::kText)});
    EXPECT_EQ(f.sqlstate, "42804");
    EXPECT_EQ(f.message, "column \"event_type\" must be a scalar (text, number, uuid, ...)");
}

TEST(PlanColumns, WrongTypeDetailNamesAmplitudesField) {
    PlanFailure f = PlanFails(
        {Col("event_type", TC::kText), Col("user_id", TC::kText), Col("product_id", TC::kJsonb)});
    EXPECT_EQ(f.sqlstate, "42804");
    EXPECT_EQ(f.detail, "Column \"product_id\" maps to Amplitude's \"productId\" field.");
    EXPECT_EQ(f.hint,
              "Cast the column in the query, or alias it to another name to send it as a property.");
}

TEST(PlanColumns, PlanAndIngestionMetadataAsTextBecomeProperties) {
    std::vector<ColumnPlan> plan = plan_event_columns(
        {Col("event_type", TC::kText), Col("user_id", TC::kText), Col("plan", TC::kText),
         Col("ingestion_metadata", TC::kInteger)});
    EXPECT_EQ(plan[2].role, FieldRole::kProperty);
    EXPECT_EQ(plan[2].json_key, "\"plan\"");
    EXPECT_EQ(plan[3].role, FieldRole::kProperty);

    plan = plan_event_columns(
        {Col("event_type", TC::kText), Col("user_id", TC::kText), Col("plan", TC::kJsonb)});
    EXPECT_EQ(plan[2].role, FieldRole::kObject);
}

TEST(PlanColumns, OtherObjectFieldsAsTextAreNotProperties) {
    PlanFailure f = PlanFails({Col("event_type", TC::kText), Col("user_id", TC::kText),
                               Col("groups", TC::kText)});
    EXPECT_EQ(f.sqlstate, "42804");
}

TEST(PlanColumns, ColumnNameThatIsNotUtf8Is22021) {
    PlanFailure f = PlanFails({Col("event_type", TC::kText), Col("user_id", TC::kText),
                               Col("bad\xff", TC::kText)});
    EXPECT_EQ(f.sqlstate, "22021");
    EXPECT_EQ(f.message, "column name is not valid UTF-8");
}

// ============================================================ ID checks

TEST(AmplitudeId, AcceptsOrdinaryIds) {
    EXPECT_EQ(check_amplitude_id("user-1", 5), std::nullopt);
    EXPECT_EQ(check_amplitude_id("abcde", 5), std::nullopt);
    EXPECT_EQ(check_amplitude_id("ab", 2), std::nullopt);
    EXPECT_EQ(check_amplitude_id("00000000-0000-0000-0000-000000000001", 5), std::nullopt);
}

TEST(AmplitudeId, RefusesEveryPlaceholderCaseInsensitively) {
    for (const char *id : {"anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown",
                           "", "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
                           "NULL", "Anonymous", "N/A", "UnKnown", "LMY47D", "None"}) {
        auto problem = check_amplitude_id(id, 1);
        ASSERT_TRUE(problem.has_value()) << id;
        EXPECT_EQ(*problem, "\"" + std::string(id) + "\" is a placeholder value that Amplitude refuses");
    }
}

TEST(AmplitudeId, RefusesIdsShorterThanMinimumCountingCharacters) {
    EXPECT_EQ(check_amplitude_id("abcd", 5).value_or("ok"), "\"abcd\" is shorter than 5 characters");
    EXPECT_EQ(check_amplitude_id("ab", 3).value_or("ok"), "\"ab\" is shorter than 3 characters");
    // é is two bytes: four of them are eight bytes but only four characters.
    EXPECT_EQ(check_amplitude_id("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 5).value_or("ok"),
              "\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\" is shorter than 5 characters");
    EXPECT_EQ(check_amplitude_id("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 5), std::nullopt);
}

TEST(AmplitudeId, LongIdsAreCutInMessagesOnACharacterBoundary) {
    std::string id = "a";
    for (int k = 0; k < 50; ++k) id += "\xc3\xa9";  // 101 bytes, 51 characters
    std::string expected = "\"a";
    for (int k = 0; k < 31; ++k) expected += "\xc3\xa9";  // 63 bytes: byte 64 is mid-character
    expected += "...\" is shorter than 100 characters";
    EXPECT_EQ(check_amplitude_id(id, 100).value_or("ok"), expected);
}

// ========================================================= derived insert_id

TEST(DerivedInsertId, IsAsDashAnd32HexDigitsOfXxh3_128) {
    // XXH3-128 of empty input is 99aa06d3014798d8 6001c324468d497f (high, low).
    EXPECT_EQ(derive_insert_id(""), "as-99aa06d3014798d86001c324468d497f");
    // Pinned: a changed derivation would resend old rows as new events.
    EXPECT_EQ(derive_insert_id("{\"event_type\":\"Signed Up\",\"user_id\":\"user-1\""),
              "as-e8435158cf76fc1d0d1ab5cfe28c3e44");
}

TEST(DerivedInsertId, DependsOnEveryByte) {
    EXPECT_EQ(derive_insert_id("{\"a\":1"), derive_insert_id("{\"a\":1"));
    EXPECT_NE(derive_insert_id("{\"a\":1"), derive_insert_id("{\"a\":2"));
    EXPECT_NE(derive_insert_id("{\"a\":1"), derive_insert_id("{\"a\":1 "));
}

// ============================================================ encoded events

TEST_F(EncoderTest, RepresentativeRow) {
    EventColumns columns = {
        Col("event_type", TC::kText),
        Col("user_id", TC::kInteger),
        Col("device_id", TC::kOther),
        Col("time", TC::kTimestampTz),
        Col("session_id", TC::kInteger),
        Col("event_id", TC::kInteger),
        Col("price", TC::kNumeric),
        Col("revenue", TC::kFloat),
        Col("product_id", TC::kText),
        Col("platform", TC::kText),
        Col("skip_user_properties_sync", TC::kBool),
        Col("user_properties", TC::kJsonb),
        Col("groups", TC::kJson),
        Col("plan", TC::kText),
        Col("color", TC::kText),
        Col("signed_up_at", TC::kTimestampTz),
        Col("birthday", TC::kDate),
        Col("tags", TC::kArray),
        Col("score", TC::kFloat),
        Col("coupon", TC::kText),
        Col("event_properties", TC::kJsonb),
    };
    std::vector<Value> values = {
        Text("Purchase"),
        Int(12345),
        TextLike(TC::kOther, "5b3c3a0e-8d7a-4f0e-9a53-1c0f3f1f6f10"),
        Micros(TC::kTimestampTz, 767881800250000),  // 2024-05-01 12:30:00.25+00
        Int(1714566000000),
        Int(3),
        Numeric("9.990"),
        Float(19.98),
        Text("sku-1"),
        Text("Web"),
        Bool(true),
        Jsonb(R"({"plan": "pro"})"),
        TextLike(TC::kJson, R"({ "org" : "acme" })"),
        Text("gold"),
        Text("red"),
        Micros(TC::kTimestampTz, 767881800250500),
        Micros(TC::kDate, 8825),
        TextArray({"a", "b\"c"}),
        Float(0.1),
        Null(),
        Jsonb(R"({"color": "blue", "source": "ads", "nested": {"x": [1, 2]}})"),
    };
    Encoded e = Encode(columns, values);
    ASSERT_TRUE(e.ok) << e.rejection.reason;

    std::string body =
        R"({"event_type":"Purchase","user_id":"12345",)"
        R"("device_id":"5b3c3a0e-8d7a-4f0e-9a53-1c0f3f1f6f10","time":1714566600250,)"
        R"("session_id":1714566000000,"event_id":3,"price":9.990,"revenue":19.98,)"
        R"("productId":"sku-1","platform":"Web","$skip_user_properties_sync":true,)"
        R"("user_properties":{"plan": "pro"},"groups":{ "org" : "acme" },)"
        R"("event_properties":{"source":"ads","nested":{"x": [1, 2]},)"
        R"("plan":"gold","color":"red","signed_up_at":"2024-05-01T12:30:00.250500Z",)"
        R"("birthday":"2024-02-29","tags":["a","b\"c"],"score":0.1})";
    EXPECT_EQ(e.record.json, WithDerivedInsertId(body));
    EXPECT_EQ(e.record.row_number, 7u);
    EXPECT_EQ(e.record.event_type, "Purchase");
    EXPECT_EQ(e.record.user_id, "12345");
    EXPECT_EQ(e.record.device_id, "5b3c3a0e-8d7a-4f0e-9a53-1c0f3f1f6f10");
    EXPECT_EQ(e.record.insert_id, derive_insert_id(body));
    EXPECT_EQ(e.record.ordering_key(), "5b3c3a0e-8d7a-4f0e-9a53-1c0f3f1f6f10");

    nlohmann::json parsed = nlohmann::json::parse(e.record.json);
    EXPECT_EQ(parsed["event_properties"]["color"], "red");  // the column, not event_properties
    EXPECT_EQ(parsed["event_properties"].size(), 8u);
    EXPECT_EQ(parsed["insert_id"], e.record.insert_id);
}

TEST_F(EncoderTest, PropertyColumnWinsOverSameKeyInEventProperties) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("a", TC::kText), Col("say \"hi\"", TC::kInteger),
                            Col("event_properties", TC::kJsonb)};
    std::string json = EventJson(columns, {Text("e"), Text("user-1"), Text("column"), Int(2),
                                           Jsonb(R"({"a": 1, "b": 2, "say \"hi\"": 1})")});
    EXPECT_EQ(json, WithDerivedInsertId(
                        R"({"event_type":"e","user_id":"user-1","event_properties":{"b":2,"a":"column","say \"hi\"":2})"));
}

TEST_F(EncoderTest, NullPropertyColumnKeepsTheSameKeyFromEventProperties) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("color", TC::kText), Col("event_properties", TC::kJsonb)};
    EventEncoder encoder(plan_event_columns(columns), EventOptions{});
    const std::string props = R"({"color": "blue", "size": 2})";

    // NULL column: event_properties' own "color" stays.
    Encoded null_color = EncodeWith(encoder, {Text("e"), Text("user-1"), Null(), Jsonb(props)});
    ASSERT_TRUE(null_color.ok) << null_color.rejection.reason;
    EXPECT_EQ(null_color.record.json,
              WithDerivedInsertId(R"({"event_type":"e","user_id":"user-1","event_properties":{"color":"blue","size":2})"));
    nlohmann::json parsed = nlohmann::json::parse(null_color.record.json);
    EXPECT_EQ(parsed["event_properties"], nlohmann::json::parse(R"({"color":"blue","size":2})"));

    // Non-NULL column (same encoder, next row): the column wins, once.
    Encoded red = EncodeWith(encoder, {Text("e"), Text("user-1"), Text("red"), Jsonb(props)});
    ASSERT_TRUE(red.ok) << red.rejection.reason;
    size_t color_keys = 0;
    for (size_t pos = red.record.json.find("\"color\""); pos != std::string::npos;
         pos = red.record.json.find("\"color\"", pos + 1))
        ++color_keys;
    EXPECT_EQ(color_keys, 1u) << red.record.json;
    parsed = nlohmann::json::parse(red.record.json);
    EXPECT_EQ(parsed["event_properties"], nlohmann::json::parse(R"({"color":"red","size":2})"));
}

TEST_F(EncoderTest, EventPropertiesAloneAndEmpty) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("event_properties", TC::kJsonb)};
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Jsonb("{}")}),
              WithDerivedInsertId(R"({"event_type":"e","user_id":"user-1","event_properties":{})"));
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Jsonb(R"({"k": [true, null]})")}),
              WithDerivedInsertId(R"({"event_type":"e","user_id":"user-1","event_properties":{"k":[true, null]})"));
}

TEST_F(EncoderTest, NullColumnsAreLeftOut) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("device_id", TC::kText), Col("time", TC::kTimestampTz),
                            Col("color", TC::kText), Col("user_properties", TC::kJsonb)};
    EXPECT_EQ(EventJson(columns, {Text("e"), Null(), Text("device-1"), Null(), Null(), Null()}),
              WithDerivedInsertId(R"({"event_type":"e","device_id":"device-1")"));
}

TEST_F(EncoderTest, NonTextIdsAndStringFieldsBecomeStrings) {
    EventColumns columns = {Col("event_type", TC::kInteger), Col("user_id", TC::kFloat),
                            Col("device_id", TC::kTimestampTz), Col("platform", TC::kBool),
                            Col("app_version", TC::kNumeric), Col("country", TC::kDate)};
    EXPECT_EQ(EventJson(columns, {Int(42), Float(12345.5), Micros(TC::kTimestampTz, 0), Bool(false),
                                  Numeric("1.20"), Micros(TC::kDate, 0)}),
              WithDerivedInsertId(
                  R"({"event_type":"42","user_id":"12345.5","device_id":"2000-01-01T00:00:00Z",)"
                  R"("platform":"false","app_version":"1.20","country":"2000-01-01")"));
}

TEST_F(EncoderTest, TimeFromEachAcceptedType) {
    EventColumns tz = {Col("event_type", TC::kText), Col("user_id", TC::kText), Col("time", TC::kTimestampTz)};
    EventColumns plain = {Col("event_type", TC::kText), Col("user_id", TC::kText), Col("time", TC::kTimestamp)};
    EventColumns date = {Col("event_type", TC::kText), Col("user_id", TC::kText), Col("time", TC::kDate)};
    EventColumns millis = {Col("event_type", TC::kText), Col("user_id", TC::kText), Col("time", TC::kInteger)};
    const std::string head = R"({"event_type":"e","user_id":"user-1","time":)";
    EXPECT_EQ(EventJson(tz, {Text("e"), Text("user-1"), Micros(TC::kTimestampTz, 767881800250999)}),
              WithDerivedInsertId(head + "1714566600250"));
    EXPECT_EQ(EventJson(plain, {Text("e"), Text("user-1"), Micros(TC::kTimestamp, 767881800250000)}),
              WithDerivedInsertId(head + "1714566600250"));
    EXPECT_EQ(EventJson(date, {Text("e"), Text("user-1"), Micros(TC::kDate, 8825)}),
              WithDerivedInsertId(head + "1709164800000"));  // 2024-02-29
    EXPECT_EQ(EventJson(millis, {Text("e"), Text("user-1"), Int(1714566600250)}),
              WithDerivedInsertId(head + "1714566600250"));
}

TEST_F(EncoderTest, TimeAtTheUnixEpochAndSessionIdMinusOneAreSent) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("time", TC::kTimestampTz), Col("session_id", TC::kInteger)};
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Micros(TC::kTimestampTz, -kPgEpochToUnixMicros),
                                  Int(-1)}),
              WithDerivedInsertId(R"({"event_type":"e","user_id":"user-1","time":0,"session_id":-1)"));
}

TEST_F(EncoderTest, RejectsTimesBefore1970) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("time", TC::kTimestampTz), Col("session_id", TC::kDate)};
    // 1969-07-20 20:17:40 UTC
    Encoded e = Encode(columns, {Text("e"), Text("user-1"), Micros(TC::kTimestampTz, -960867740000000), Null()});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "time");
    EXPECT_EQ(e.rejection.reason, "column \"time\": Amplitude refuses times before 1970-01-01");

    // One microsecond before the epoch is -1 ms after flooring: refused too.
    e = Encode(columns, {Text("e"), Text("user-1"), Micros(TC::kTimestampTz, -kPgEpochToUnixMicros - 1), Null()});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "time");

    e = Encode(columns, {Text("e"), Text("user-1"), Null(), Micros(TC::kDate, -10958)});  // 1969-12-31
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "session_id");
    EXPECT_EQ(e.rejection.reason, "column \"session_id\": Amplitude refuses times before 1970-01-01");
}

TEST_F(EncoderTest, RejectsIntegerTimesBelowTheirFloor) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("time", TC::kInteger), Col("session_id", TC::kInteger)};
    Encoded e = Encode(columns, {Text("e"), Text("user-1"), Int(-1), Null()});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "time");
    e = Encode(columns, {Text("e"), Text("user-1"), Null(), Int(-2)});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "session_id");
}

// Integer times carry no unit: only epoch milliseconds from 1973-03-03T09:46:40Z
// (1e11) up to 2100-01-01 (4102444800000, excluded) are sent.
TEST_F(EncoderTest, IntegerTimesAtThePlausibleBoundsOfEpochMilliseconds) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("time", TC::kInteger), Col("session_id", TC::kInteger)};
    const std::string head = R"({"event_type":"e","user_id":"user-1",)";
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Int(100000000000), Int(4102444799999)}),
              WithDerivedInsertId(head + R"("time":100000000000,"session_id":4102444799999)"));
    const std::string range = " is not plausible epoch milliseconds (expected 1973-03-03T09:46:40Z to "
                              "2100-01-01T00:00:00Z)";
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Int(99999999999), Null()}),
              "<rejected: column \"time\": 99999999999" + range + ">");
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Int(4102444800000), Null()}),
              "<rejected: column \"time\": 4102444800000" + range + ">");
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Int(0), Null()}),
              "<rejected: column \"time\": 0" + range + ">");
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Int(INT64_MAX), Null()}),
              "<rejected: column \"time\": 9223372036854775807" + range + ">");
}

TEST_F(EncoderTest, IntegerTimeInSecondsIsRejectedAndSaysSo) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText), Col("time", TC::kInteger)};
    Encoded e = Encode(columns, {Text("e"), Text("user-1"), Int(1714566600)});  // extract(epoch ...)::bigint
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "time");
    EXPECT_EQ(e.rejection.reason,
              "column \"time\": 1714566600 looks like seconds, not epoch milliseconds "
              "(as seconds: 2024-05-01T12:30:00Z); multiply by 1000 or send a timestamptz");
    // The seconds window is the milliseconds window divided by 1000.
    auto reason = [&](int64_t v) { return EventJson(columns, {Text("e"), Text("user-1"), Int(v)}); };
    EXPECT_NE(reason(100000000).find("100000000 looks like seconds"), std::string::npos);
    EXPECT_NE(reason(4102444799).find("4102444799 looks like seconds"), std::string::npos);
    EXPECT_NE(reason(99999999).find("99999999 is not plausible epoch milliseconds"), std::string::npos);
    EXPECT_NE(reason(4102444800).find("4102444800 is not plausible epoch milliseconds"), std::string::npos);
}

TEST_F(EncoderTest, IntegerTimeInMicrosecondsOrNanosecondsIsRejectedAndSaysSo) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText), Col("time", TC::kInteger)};
    auto reason = [&](int64_t v) { return EventJson(columns, {Text("e"), Text("user-1"), Int(v)}); };
    EXPECT_EQ(reason(1714566600250000),
              "<rejected: column \"time\": 1714566600250000 looks like microseconds, not epoch "
              "milliseconds (as microseconds: 2024-05-01T12:30:00.250Z); divide by 1000 or send a "
              "timestamptz>");
    EXPECT_NE(reason(100000000000000).find("looks like microseconds"), std::string::npos);
    EXPECT_NE(reason(4102444799999999).find("looks like microseconds"), std::string::npos);
    EXPECT_NE(reason(99999999999999).find("is not plausible epoch milliseconds"), std::string::npos);
    EXPECT_NE(reason(4102444800000000).find("is not plausible epoch milliseconds"), std::string::npos);
    EXPECT_EQ(reason(1714566600250000000),
              "<rejected: column \"time\": 1714566600250000000 looks like nanoseconds, not epoch "
              "milliseconds (as nanoseconds: 2024-05-01T12:30:00.250Z); divide by 1000000 or send a "
              "timestamptz>");
    EXPECT_NE(reason(4102444800000000000).find("is not plausible epoch milliseconds"), std::string::npos);
}

// session_id is epoch milliseconds too, and -1 means "no session".
TEST_F(EncoderTest, IntegerSessionIdFollowsTheSameRuleExceptMinusOne) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("session_id", TC::kInteger)};
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Int(-1)}),
              WithDerivedInsertId(R"({"event_type":"e","user_id":"user-1","session_id":-1)"));
    Encoded e = Encode(columns, {Text("e"), Text("user-1"), Int(1714566000)});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "session_id");
    EXPECT_EQ(e.rejection.reason,
              "column \"session_id\": 1714566000 looks like seconds, not epoch milliseconds "
              "(as seconds: 2024-05-01T12:20:00Z); multiply by 1000 or send a timestamptz");
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Int(3)}),
              "<rejected: column \"session_id\": 3 is not plausible epoch milliseconds (expected "
              "1973-03-03T09:46:40Z to 2100-01-01T00:00:00Z; -1 means no session)>");
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Int(-2)}),
              "<rejected: column \"session_id\": Amplitude refuses times before 1970-01-01>");
}

// A timestamp's unit is known: 1970 to 1973 stays sendable from one.
TEST_F(EncoderTest, TimestampsKeepOnlyThe1970Floor) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("time", TC::kTimestampTz), Col("session_id", TC::kTimestamp)};
    int64_t epoch_plus_1s = -kPgEpochToUnixMicros + 1000000;
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Micros(TC::kTimestampTz, epoch_plus_1s),
                                  Micros(TC::kTimestamp, epoch_plus_1s)}),
              WithDerivedInsertId(R"({"event_type":"e","user_id":"user-1","time":1000,"session_id":1000)"));
    // -1 ms from a timestamp is a time before 1970, not "no session".
    Encoded e = Encode(columns, {Text("e"), Text("user-1"), Null(),
                                 Micros(TC::kTimestamp, -kPgEpochToUnixMicros - 1000)});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.reason, "column \"session_id\": Amplitude refuses times before 1970-01-01");
}

TEST_F(EncoderTest, DerivedInsertIdIsStableAndFollowsContent) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText), Col("n", TC::kInteger)};
    EventEncoder encoder(plan_event_columns(columns), EventOptions{});
    Encoded first = EncodeWith(encoder, {Text("e"), Text("user-1"), Int(1)}, 1);
    Encoded again = EncodeWith(encoder, {Text("e"), Text("user-1"), Int(1)}, 99);
    EventEncoder other_encoder(plan_event_columns(columns), EventOptions{});
    Encoded elsewhere = EncodeWith(other_encoder, {Text("e"), Text("user-1"), Int(1)}, 1);
    Encoded changed = EncodeWith(encoder, {Text("e"), Text("user-1"), Int(2)}, 1);
    ASSERT_TRUE(first.ok && again.ok && elsewhere.ok && changed.ok);
    EXPECT_EQ(first.record.insert_id, again.record.insert_id);  // row number is not part of it
    EXPECT_EQ(first.record.insert_id, elsewhere.record.insert_id);
    EXPECT_NE(first.record.insert_id, changed.record.insert_id);
    EXPECT_EQ(first.record.json, again.record.json);
    EXPECT_EQ(again.record.row_number, 99u);
}

TEST_F(EncoderTest, InsertIdColumnIsKeptAndNothingDerived) {
    EventColumns columns = {Col("event_type", TC::kText), Col("insert_id", TC::kText),
                            Col("user_id", TC::kText), Col("color", TC::kText)};
    Encoded e = Encode(columns, {Text("e"), Text("order-17"), Text("user-1"), Text("red")});
    ASSERT_TRUE(e.ok);
    EXPECT_EQ(e.record.json,
              R"({"event_type":"e","insert_id":"order-17","user_id":"user-1","event_properties":{"color":"red"}})");
    EXPECT_EQ(e.record.insert_id, "order-17");
}

TEST_F(EncoderTest, EmptyInsertIdIsDerivedLikeNull) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("insert_id", TC::kText)};
    Encoded empty = Encode(columns, {Text("Signed Up"), Text("user-1"), Text("")});
    ASSERT_TRUE(empty.ok) << empty.rejection.reason;
    const std::string &json = empty.record.json;
    size_t insert_id_keys = 0;
    for (size_t pos = json.find("\"insert_id\""); pos != std::string::npos;
         pos = json.find("\"insert_id\"", pos + 1))
        ++insert_id_keys;
    EXPECT_EQ(insert_id_keys, 1u) << json;
    EXPECT_EQ(empty.record.insert_id.rfind("as-", 0), 0u) << empty.record.insert_id;
    EXPECT_EQ(nlohmann::json::parse(json)["insert_id"], empty.record.insert_id);

    Encoded null_id = Encode(columns, {Text("Signed Up"), Text("user-1"), Null()});
    ASSERT_TRUE(null_id.ok) << null_id.rejection.reason;
    EXPECT_EQ(empty.record.insert_id, null_id.record.insert_id);
    EXPECT_EQ(json, null_id.record.json);
    EXPECT_EQ(json, WithDerivedInsertId(R"({"event_type":"Signed Up","user_id":"user-1")"));
}

TEST_F(EncoderTest, MinIdLengthComesFromTheEncoder) {
    Encoded e = Encode(kBasic, {Text("e"), Text("abc")}, /*min_id_length=*/3);
    EXPECT_TRUE(e.ok) << e.rejection.reason;
}

TEST_F(EncoderTest, EncoderReuseLeavesNothingFromThePreviousRow) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("color", TC::kText), Col("price", TC::kFloat),
                            Col("event_properties", TC::kJsonb)};
    EventEncoder encoder(plan_event_columns(columns), EventOptions{});
    Encoded bad = EncodeWith(encoder, {Text("e"), Text("user-1"), Text("red"), Float(std::nan("")),
                                       Jsonb(R"({"x": 1})")});
    ASSERT_FALSE(bad.ok);
    Encoded full = EncodeWith(encoder, {Text("e"), Text("user-1"), Text("red"), Float(1.5),
                                        Jsonb(R"({"x": 1})")});
    Encoded bare = EncodeWith(encoder, {Text("f"), Text("user-2"), Null(), Null(), Null()});
    ASSERT_TRUE(full.ok && bare.ok);
    EXPECT_EQ(full.record.json, WithDerivedInsertId(
        R"({"event_type":"e","user_id":"user-1","price":1.5,"event_properties":{"x":1,"color":"red"})"));
    EXPECT_EQ(bare.record.json, WithDerivedInsertId(R"({"event_type":"f","user_id":"user-2")"));
    EXPECT_EQ(bare.record.insert_id, derive_insert_id(R"({"event_type":"f","user_id":"user-2")"));
}

// ============================================================ rejected rows

TEST_F(EncoderTest, RejectsMissingEventType) {
    Encoded e = Encode(kBasic, {Null(), Text("user-1")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.outcome, Outcome::kRejected);
    EXPECT_EQ(e.rejection.field, "event_type");
    EXPECT_EQ(e.rejection.reason, "event_type is missing");
    EXPECT_EQ(e.rejection.record.row_number, 7u);
    EXPECT_EQ(e.rejection.record.user_id, "user-1");
    EXPECT_TRUE(nlohmann::json::accept(e.rejection.record.json)) << e.rejection.record.json;
}

TEST_F(EncoderTest, RowOfOnlyNullsIsRejectedWithValidJson) {
    Encoded e = Encode(kBasic, {Null(), Null()});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "event_type");
    EXPECT_EQ(e.rejection.reason, "event_type is missing");
    const std::string &json = e.rejection.record.json;
    EXPECT_EQ(json.rfind("{\"insert_id\":", 0), 0u) << json;
    nlohmann::json parsed;
    ASSERT_NO_THROW(parsed = nlohmann::json::parse(json)) << json;
    EXPECT_EQ(parsed, nlohmann::json({{"insert_id", e.rejection.record.insert_id}}));
    EXPECT_EQ(e.rejection.record.insert_id, derive_insert_id("{"));
}

TEST_F(EncoderTest, RejectsEmptyEventType) {
    Encoded e = Encode(kBasic, {Text(""), Text("user-1")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "event_type");
    EXPECT_EQ(e.rejection.reason, "event_type is empty");
}

TEST_F(EncoderTest, RejectsRowWithoutAnyId) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("device_id", TC::kText)};
    Encoded e = Encode(columns, {Text("e"), Null(), Null()});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "user_id");
    EXPECT_EQ(e.rejection.reason, "neither user_id nor device_id is set");
    EXPECT_EQ(e.rejection.record.event_type, "e");
}

TEST_F(EncoderTest, RejectsShortId) {
    Encoded e = Encode(kBasic, {Text("e"), Text("abcd")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "user_id");
    EXPECT_EQ(e.rejection.reason, "user_id \"abcd\" is shorter than 5 characters");
}

TEST_F(EncoderTest, RejectsShortIntegerUserId) {
    Encoded e = Encode({Col("event_type", TC::kText), Col("user_id", TC::kInteger)}, {Text("e"), Int(42)});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.reason, "user_id \"42\" is shorter than 5 characters");
}

TEST_F(EncoderTest, RejectsPlaceholderIdsCaseInsensitively) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("device_id", TC::kText)};
    Encoded e = Encode(columns, {Text("e"), Text("user-1"), Text("Undefined")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "device_id");
    EXPECT_EQ(e.rejection.reason, "device_id \"Undefined\" is a placeholder value that Amplitude refuses");
    EXPECT_EQ(e.rejection.record.device_id, "Undefined");

    e = Encode(columns, {Text("e"), Text("NULL"), Null()});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "user_id");
    EXPECT_EQ(e.rejection.reason, "user_id \"NULL\" is a placeholder value that Amplitude refuses");

    e = Encode({Col("event_type", TC::kText), Col("user_id", TC::kInteger)}, {Text("e"), Int(-1)});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.reason, "user_id \"-1\" is a placeholder value that Amplitude refuses");
}

TEST_F(EncoderTest, RejectsNaNNumbers) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("price", TC::kFloat), Col("ratio", TC::kNumeric)};
    Encoded e = Encode(columns, {Text("e"), Text("user-1"), Float(std::nan("")), Numeric("1")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "price");
    EXPECT_EQ(e.rejection.reason, "column \"price\": NaN and infinite numbers cannot be sent as JSON");
    EXPECT_EQ(e.rejection.record.json, "");  // could not be encoded
    EXPECT_EQ(e.rejection.record.user_id, "user-1");

    e = Encode(columns, {Text("e"), Text("user-1"), Float(1), Numeric("-Infinity")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "ratio");
    EXPECT_EQ(e.rejection.reason, "column \"ratio\": NaN and infinite numbers cannot be sent as JSON");
}

TEST_F(EncoderTest, RejectsInvalidUtf8) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("note", TC::kText)};
    Encoded e = Encode(columns, {Text("e"), Text("user-1"), Text("caf\xc3")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "note");
    EXPECT_EQ(e.rejection.reason, "column \"note\": text is not valid UTF-8");

    e = Encode(columns, {Text("e\xff"), Text("user-1"), Null()});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "event_type");
    EXPECT_EQ(e.rejection.reason, "column \"event_type\": text is not valid UTF-8");
}

// A SQL_ASCII database stores any bytes inside json; one such value would
// make Amplitude refuse the whole request.
TEST_F(EncoderTest, RejectsJsonThatIsNotValidUtf8InAKeyOrAValue) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("event_properties", TC::kJsonb), Col("user_properties", TC::kJson),
                            Col("meta", TC::kJson)};
    struct Case {
        std::vector<Value> values;
        const char *field;
    } cases[] = {
        {{Text("e"), Text("user-1"), Jsonb("{\"k\xff\": 1}"), Null(), Null()}, "event_properties"},
        {{Text("e"), Text("user-1"), Jsonb("{\"k\": \"caf\xc3\"}"), Null(), Null()}, "event_properties"},
        {{Text("e"), Text("user-1"), Null(), Json("{\"plan\": \"\xe9t\xe9\"}"), Null()}, "user_properties"},
        {{Text("e"), Text("user-1"), Null(), Null(), Json("{\"a\xc0\xaf\": [1]}")}, "meta"},
        {{Text("e"), Text("user-1"), Null(), Null(), Json("\"caf\xc3\"")}, "meta"},
    };
    for (const Case &c : cases) {
        Encoded e = Encode(columns, c.values);
        ASSERT_FALSE(e.ok) << c.field;
        EXPECT_EQ(e.rejection.field, c.field);
        EXPECT_EQ(e.rejection.reason, std::string("column \"") + c.field + "\": json is not valid UTF-8");
        EXPECT_EQ(e.rejection.record.user_id, "user-1");
        EXPECT_TRUE(e.rejection.record.json.empty());
    }
    EXPECT_EQ(EventJson(columns, {Text("e"), Text("user-1"), Jsonb("{\"caf\xc3\xa9\": 1}"), Null(), Null()}),
              WithDerivedInsertId("{\"event_type\":\"e\",\"user_id\":\"user-1\",\"event_properties\":"
                                  "{\"caf\xc3\xa9\":1}"));
}

TEST_F(EncoderTest, RejectsInfiniteTime) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("time", TC::kTimestampTz)};
    Encoded e = Encode(columns, {Text("e"), Text("user-1"), Micros(TC::kTimestampTz, 0, true)});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "time");
    EXPECT_EQ(e.rejection.reason, "column \"time\": infinite timestamps cannot be sent");
}

TEST_F(EncoderTest, ReportsTheFirstBadColumnOnly) {
    EventColumns columns = {Col("event_type", TC::kText), Col("a", TC::kFloat),
                            Col("b", TC::kText), Col("user_id", TC::kText)};
    Encoded e = Encode(columns, {Text("e"), Float(std::nan("")), Text("\xff"), Text("user-1")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "a");
    EXPECT_EQ(e.rejection.record.event_type, "e");
    EXPECT_EQ(e.rejection.record.user_id, "");  // encoding stopped before user_id
}

TEST_F(EncoderTest, EventPropertiesDepth40IsAcceptedAnd41Rejected) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("event_properties", TC::kJsonb)};
    Encoded ok = Encode(columns, {Text("e"), Text("user-1"), Jsonb(NestedObject(40))});
    EXPECT_TRUE(ok.ok) << ok.rejection.reason;
    Encoded deep = Encode(columns, {Text("e"), Text("user-1"), Jsonb(NestedObject(41))});
    ASSERT_FALSE(deep.ok);
    EXPECT_EQ(deep.rejection.field, "event_properties");
    EXPECT_EQ(deep.rejection.reason,
              "column \"event_properties\": nesting deeper than Amplitude's limit of 40 levels");
}

TEST_F(EncoderTest, PropertyColumnDepthCountsTheEventPropertiesLevel) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("doc", TC::kJsonb)};
    // Inside event_properties a depth-39 value ends at level 40.
    Encoded ok = Encode(columns, {Text("e"), Text("user-1"), Jsonb(NestedObject(39))});
    ASSERT_TRUE(ok.ok) << ok.rejection.reason;
    EXPECT_EQ(json_max_depth(nlohmann::json::parse(ok.record.json)["event_properties"].dump()), 40);
    Encoded deep = Encode(columns, {Text("e"), Text("user-1"), Jsonb(NestedObject(40))});
    ASSERT_FALSE(deep.ok);
    EXPECT_EQ(deep.rejection.field, "doc");
    EXPECT_EQ(deep.rejection.reason, "column \"doc\": nesting deeper than Amplitude's limit of 40 levels");
}

TEST_F(EncoderTest, UserPropertiesDepth40IsAcceptedAnd41Rejected) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("user_properties", TC::kJsonb)};
    EXPECT_TRUE(Encode(columns, {Text("e"), Text("user-1"), Jsonb(NestedObject(40))}).ok);
    Encoded deep = Encode(columns, {Text("e"), Text("user-1"), Jsonb(NestedObject(41))});
    ASSERT_FALSE(deep.ok);
    EXPECT_EQ(deep.rejection.reason,
              "column \"user_properties\": nesting deeper than Amplitude's limit of 40 levels");
}

TEST_F(EncoderTest, RejectsObjectFieldsThatAreNotObjects) {
    EventColumns columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                            Col("user_properties", TC::kJsonb), Col("event_properties", TC::kJson)};
    for (const char *not_object : {"[1, 2]", "\"text\"", "null", "3"}) {
        Encoded e = Encode(columns, {Text("e"), Text("user-1"), Jsonb(not_object), Null()});
        ASSERT_FALSE(e.ok) << not_object;
        EXPECT_EQ(e.rejection.field, "user_properties");
        EXPECT_EQ(e.rejection.reason, "column \"user_properties\": value must be a JSON object");
    }
    Encoded e = Encode(columns, {Text("e"), Text("user-1"), Null(), TextLike(TC::kJson, " [ ] ")});
    ASSERT_FALSE(e.ok);
    EXPECT_EQ(e.rejection.field, "event_properties");
    EXPECT_EQ(e.rejection.reason, "column \"event_properties\": value must be a JSON object");
}

// ==================================================== issue 11: what Amplitude holds

TEST_F(EncoderTest, RejectsAmplitudesReservedEventTypes) {
    for (const char *type : {"[Amplitude] Start Session", "[Amplitude] End Session", "[Amplitude] Revenue",
                             "[Amplitude] Revenue (Verified)", "[Amplitude] Revenue (Unverified)",
                             "[Amplitude] Merged User"}) {
        Encoded e = Encode(kBasic, {Text(type), Text("user-00001")});
        ASSERT_FALSE(e.ok) << type;
        EXPECT_EQ(e.rejection.field, "event_type");
        EXPECT_EQ(e.rejection.reason, "event_type \"" + std::string(type) + "\" is reserved for Amplitude, which refuses it");
        EXPECT_EQ(e.rejection.record.user_id, "user-00001");
        EXPECT_TRUE(is_reserved_event_type(type));
    }
    // Exact names only: an event of one's own that resembles them is fine.
    for (const char *type : {"Revenue", "[Amplitude] revenue", "Amplitude Revenue", "$identify"}) {
        EXPECT_TRUE(Encode(kBasic, {Text(type), Text("user-00001")}).ok) << type;
        EXPECT_FALSE(is_reserved_event_type(type));
    }
}

TEST(PlanColumns, BatchWithoutASkipUserPropertiesSyncDecisionGetsANotice) {
    std::vector<ColumnPlan> undecided = plan_event_columns(kBasic);
    EXPECT_TRUE(event_plan_warnings(undecided, false).empty());  // /2/httpapi: live events
    std::vector<PlanWarning> notes = event_plan_warnings(undecided, true);
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_TRUE(notes[0].notice);
    EXPECT_EQ(notes[0].message, "events sent with api \"batch\" update each user's current properties");
    EXPECT_NE(notes[0].hint.find("true AS skip_user_properties_sync"), std::string::npos);
    for (const char *name : {"skip_user_properties_sync", "$skip_user_properties_sync"}) {
        std::vector<ColumnPlan> decided =
            plan_event_columns({Col("event_type", TC::kText), Col("user_id", TC::kText), Col(name, TC::kBool)});
        EXPECT_TRUE(event_plan_warnings(decided, true).empty()) << name;
    }
}

TEST_F(EncoderTest, SkipUserPropertiesSyncColumnMarksTheEvent) {
    std::vector<ColumnInput> columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                                        Col("skip_user_properties_sync", TC::kBool)};
    EventEncoder encoder(plan_event_columns(columns), EventOptions{});
    Encoded e = EncodeWith(encoder, {Text("Signed Up"), Text("user-00001"), Bool(true)});
    ASSERT_TRUE(e.ok);
    EXPECT_NE(e.record.json.find("\"$skip_user_properties_sync\":true"), std::string::npos) << e.record.json;
}

TEST_F(EncoderTest, SilentChangesAreCountedPerAcceptedEvent) {
    std::vector<ColumnInput> columns = {Col("event_type", TC::kText), Col("user_id", TC::kText),
                                        Col("note", TC::kText), Col("event_properties", TC::kJsonb),
                                        Col("groups", TC::kJsonb), Col("country", TC::kText)};
    EventEncoder encoder(plan_event_columns(columns), EventOptions{});
    std::string long_text(1025, 'x');
    std::string many_types = R"({"a":"1","b":"1","c":"1","d":"1","e":"1","f":"1"})";
    EXPECT_TRUE(EncodeWith(encoder, {Text("Viewed"), Text("user-00001"), Text(std::string(1024, 'x')),
                                     Null(), Jsonb(R"({"team":["1","2","3","4","5","6","7","8","9","10"]})"),
                                     Text("FR")}).ok);
    EXPECT_TRUE(encoder.silent_changes().warnings().empty());
    EXPECT_TRUE(EncodeWith(encoder, {Text("Viewed"), Text("user-00001"), Null(),
                                     Jsonb("{\"k\":\"" + long_text + "\"}"), Jsonb(many_types), Null()}).ok);
    EXPECT_TRUE(EncodeWith(encoder, {Text("Viewed"), Text("user-00001"), Text(long_text), Null(), Null(),
                                     Text(long_text)}).ok);
    EXPECT_FALSE(EncodeWith(encoder, {Text("[Amplitude] Revenue"), Text("user-00001"), Text(long_text), Null(),
                                      Jsonb(many_types), Null()}).ok);
    const SilentChanges &s = encoder.silent_changes();
    EXPECT_EQ(s.records(SilentChange::kTruncatedString), 2u);
    EXPECT_EQ(s.example_column(SilentChange::kTruncatedString), "event_properties");
    EXPECT_EQ(s.records(SilentChange::kDroppedGroupTypes), 1u);
    EXPECT_EQ(s.records(SilentChange::kDroppedGroupValues), 0u);
    EXPECT_EQ(s.records(SilentChange::kResetGroupedField), 0u);  // an event's own location
}
