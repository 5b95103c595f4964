// Helpers shared by the field-mapper tests (events and identify): column
// inputs, the PlanError a call throws, nested JSON, and a builder of column
// Values whose text lives as long as the test fixture.
#pragma once

#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "field_mapping.hpp"

namespace amplitude_sync::test {

inline ColumnInput Col(const std::string &name, TypeCategory category) { return {name, category}; }

// The PlanError a call throws (sqlstate "none" when it does not throw).
struct PlanFailure {
    std::string sqlstate = "none", message, detail, hint;
};

template <class F>
PlanFailure FailureOf(F &&f) {
    PlanFailure out;
    try {
        f();
    } catch (const PlanError &e) {
        out.sqlstate = e.sqlstate;
        out.message = e.what();
        out.detail = e.detail;
        out.hint = e.hint;
    }
    return out;
}

// {"a":{"a":...{}}} with the given container depth.
inline std::string NestedObject(int depth) {
    std::string s = "{}";
    for (int k = 1; k < depth; ++k) s = "{\"a\":" + s + "}";
    return s;
}

// Column values as the PostgreSQL glue would hand them over.
class ValueBuilder {
public:
    static Value Null() { return Value{}; }
    static Value Of(TypeCategory c) {
        Value v;
        v.category = c;
        v.is_null = false;
        return v;
    }
    static Value Int(int64_t i) {
        Value v = Of(TypeCategory::kInteger);
        v.i = i;
        return v;
    }
    static Value Float(double d) {
        Value v = Of(TypeCategory::kFloat);
        v.d = d;
        return v;
    }
    static Value Bool(bool b) {
        Value v = Of(TypeCategory::kBool);
        v.b = b;
        return v;
    }
    static Value Micros(TypeCategory c, int64_t i, bool infinite = false) {
        Value v = Of(c);
        v.i = i;
        v.infinite = infinite;
        return v;
    }
    static Value TimestampTz(int64_t micros) { return Micros(TypeCategory::kTimestampTz, micros); }
    Value TextLike(TypeCategory c, std::string s) {
        const std::string &kept = storage_.emplace_back(std::move(s));
        Value v = Of(c);
        v.text = kept.data();
        v.text_len = kept.size();
        return v;
    }
    Value Text(std::string s) { return TextLike(TypeCategory::kText, std::move(s)); }
    Value Jsonb(std::string s) { return TextLike(TypeCategory::kJsonb, std::move(s)); }
    Value Json(std::string s) { return TextLike(TypeCategory::kJson, std::move(s)); }
    Value Numeric(std::string s) { return TextLike(TypeCategory::kNumeric, std::move(s)); }
    Value TextArray(const std::vector<std::string> &items) {
        auto &elements = arrays_.emplace_back();
        for (const std::string &s : items) elements.push_back(Text(s));
        Value v = Of(TypeCategory::kArray);
        v.elements = elements.data();
        v.ndims = 1;
        v.dims[0] = static_cast<int>(elements.size());
        return v;
    }

private:
    std::deque<std::string> storage_;
    std::deque<std::vector<Value>> arrays_;
};

}  // namespace amplitude_sync::test
