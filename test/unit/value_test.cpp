// Unit tests for src/core/value: append_value_json for each TypeCategory,
// including one- and multi-dimensional arrays.
#include "value.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

using namespace amplitude_sync;

namespace {

Value Null() { return Value{}; }

Value Of(TypeCategory c) {
    Value v;
    v.category = c;
    v.is_null = false;
    return v;
}

Value Bool(bool b) {
    Value v = Of(TypeCategory::kBool);
    v.b = b;
    return v;
}

Value Int(int64_t i) {
    Value v = Of(TypeCategory::kInteger);
    v.i = i;
    return v;
}

Value Float(double d) {
    Value v = Of(TypeCategory::kFloat);
    v.d = d;
    return v;
}

// Text-like categories point at s, which must outlive the Value.
Value TextLike(TypeCategory c, const std::string &s) {
    Value v = Of(c);
    v.text = s.data();
    v.text_len = s.size();
    return v;
}

Value Micros(TypeCategory c, int64_t i, bool infinite = false) {
    Value v = Of(c);
    v.i = i;
    v.infinite = infinite;
    return v;
}

Value Array(const std::vector<Value> &elements, std::vector<int> dims) {
    Value v = Of(TypeCategory::kArray);
    v.elements = elements.data();
    v.ndims = static_cast<int>(dims.size());
    for (size_t k = 0; k < dims.size(); ++k) v.dims[k] = dims[k];
    return v;
}

// The JSON text, or "<refused: reason>".
std::string Json(const Value &v) {
    std::string out, reason;
    if (!append_value_json(out, v, reason)) return "<refused: " + reason + ">";
    return out;
}

}  // namespace

TEST(ValueJson, ScalarsAndNull) {
    EXPECT_EQ(Json(Null()), "null");
    EXPECT_EQ(Json(Bool(true)), "true");
    EXPECT_EQ(Json(Bool(false)), "false");
    EXPECT_EQ(Json(Int(-7)), "-7");
    EXPECT_EQ(Json(Float(2.5)), "2.5");
    EXPECT_EQ(Json(Float(0.1)), "0.1");
}

TEST(ValueJson, NullWinsOverCategory) {
    Value v = Int(5);
    v.is_null = true;
    EXPECT_EQ(Json(v), "null");
}

TEST(ValueJson, NumericTextPassesThrough) {
    std::string n = "-12.500";
    EXPECT_EQ(Json(TextLike(TypeCategory::kNumeric, n)), "-12.500");
}

TEST(ValueJson, RefusesNaNAndInfinity) {
    const std::string expected = "<refused: NaN and infinite numbers cannot be sent as JSON>";
    EXPECT_EQ(Json(Float(std::nan(""))), expected);
    EXPECT_EQ(Json(Float(std::numeric_limits<double>::infinity())), expected);
    for (std::string text : {"NaN", "Infinity", "-Infinity"})
        EXPECT_EQ(Json(TextLike(TypeCategory::kNumeric, text)), expected) << text;
}

TEST(ValueJson, TextIsEscapedAndOtherTypesUseTheirOutputText) {
    std::string text = "line1\nsaid \"x\"";
    std::string uuid = "5b3c3a0e-8d7a-4f0e-9a53-1c0f3f1f6f10";
    EXPECT_EQ(Json(TextLike(TypeCategory::kText, text)), R"("line1\nsaid \"x\"")");
    EXPECT_EQ(Json(TextLike(TypeCategory::kOther, uuid)),
              "\"5b3c3a0e-8d7a-4f0e-9a53-1c0f3f1f6f10\"");
}

TEST(ValueJson, RefusesInvalidUtf8Text) {
    std::string bad = "ab\xc3";
    EXPECT_EQ(Json(TextLike(TypeCategory::kText, bad)), "<refused: text is not valid UTF-8>");
    EXPECT_EQ(Json(TextLike(TypeCategory::kOther, bad)), "<refused: text is not valid UTF-8>");
}

TEST(ValueJson, JsonAndJsonbAreCopiedVerbatim) {
    std::string json = R"({ "a" : [1, 2] })";
    std::string jsonb = R"({"a": [1, 2], "b": null})";
    EXPECT_EQ(Json(TextLike(TypeCategory::kJson, json)), json);
    EXPECT_EQ(Json(TextLike(TypeCategory::kJsonb, jsonb)), jsonb);
}

// A SQL_ASCII database stores any bytes inside json: they must not reach
// Amplitude, which would refuse the whole request.
TEST(ValueJson, RefusesJsonThatIsNotValidUtf8) {
    std::string bad_value = "{\"a\": \"caf\xc3\"}";
    std::string bad_key = "{\"k\xff\": 1}";
    EXPECT_EQ(Json(TextLike(TypeCategory::kJson, bad_value)), "<refused: json is not valid UTF-8>");
    EXPECT_EQ(Json(TextLike(TypeCategory::kJsonb, bad_key)), "<refused: json is not valid UTF-8>");
    std::vector<Value> e = {TextLike(TypeCategory::kJsonb, bad_key)};
    EXPECT_EQ(Json(Array(e, {1})), "<refused: json is not valid UTF-8>");
}

TEST(ValueJson, TimestampsAndDatesBecomeIsoStrings) {
    EXPECT_EQ(Json(Micros(TypeCategory::kTimestampTz, 767881800250000)),
              "\"2024-05-01T12:30:00.250Z\"");
    EXPECT_EQ(Json(Micros(TypeCategory::kTimestamp, 767881800250000)),
              "\"2024-05-01T12:30:00.250\"");
    EXPECT_EQ(Json(Micros(TypeCategory::kDate, 8825)), "\"2024-02-29\"");
    EXPECT_EQ(Json(Micros(TypeCategory::kDate, -10958)), "\"1969-12-31\"");
}

TEST(ValueJson, RefusesInfiniteTimestampsAndDates) {
    EXPECT_EQ(Json(Micros(TypeCategory::kTimestampTz, 0, true)),
              "<refused: infinite timestamps cannot be sent>");
    EXPECT_EQ(Json(Micros(TypeCategory::kTimestamp, 0, true)),
              "<refused: infinite timestamps cannot be sent>");
    EXPECT_EQ(Json(Micros(TypeCategory::kDate, 0, true)),
              "<refused: infinite dates cannot be sent>");
}

TEST(ValueJson, EmptyArray) {
    std::vector<Value> none;
    EXPECT_EQ(Json(Array(none, {})), "[]");
}

TEST(ValueJson, OneDimensionalArrayWithNullsAndMixedElements) {
    std::string s = "a\"b";
    std::vector<Value> e = {Int(1), Null(), TextLike(TypeCategory::kText, s)};
    EXPECT_EQ(Json(Array(e, {3})), R"([1,null,"a\"b"])");
}

TEST(ValueJson, MultiDimensionalArraysAreRowMajor) {
    std::vector<Value> e = {Int(1), Int(2), Int(3), Int(4), Int(5), Int(6)};
    EXPECT_EQ(Json(Array(e, {2, 3})), "[[1,2,3],[4,5,6]]");
    EXPECT_EQ(Json(Array(e, {3, 2})), "[[1,2],[3,4],[5,6]]");
    std::vector<Value> cube;
    for (int k = 1; k <= 8; ++k) cube.push_back(Int(k));
    EXPECT_EQ(Json(Array(cube, {2, 2, 2})), "[[[1,2],[3,4]],[[5,6],[7,8]]]");
}

TEST(ValueJson, ArrayOfTimestampsAndJson) {
    std::string obj = R"({"k":1})";
    std::vector<Value> e = {Micros(TypeCategory::kTimestampTz, 0),
                            TextLike(TypeCategory::kJsonb, obj)};
    EXPECT_EQ(Json(Array(e, {2})), R"(["2000-01-01T00:00:00Z",{"k":1}])");
}

TEST(ValueJson, ArrayIsRefusedWhenAnElementIsNot) {
    std::vector<Value> e = {Float(1.0), Float(std::nan(""))};
    EXPECT_EQ(Json(Array(e, {2})), "<refused: NaN and infinite numbers cannot be sent as JSON>");
    std::vector<Value> dates = {Micros(TypeCategory::kDate, 0), Micros(TypeCategory::kDate, 0, true)};
    EXPECT_EQ(Json(Array(dates, {1, 2})), "<refused: infinite dates cannot be sent>");
}
