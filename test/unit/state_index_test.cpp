// Unit tests for src/core/state_index: value fingerprints change with every
// value, type and setting that shapes a payload; the compact set answers
// like an exact set for what it holds, whichever way it was built.
#include "state_index.hpp"

#include <gtest/gtest.h>

#include <random>
#include <set>
#include <string>
#include <vector>

using namespace amplitude_sync;

namespace {

Value Int(int64_t i) {
    Value v;
    v.category = TypeCategory::kInteger;
    v.is_null = false;
    v.i = i;
    return v;
}

Value Text(const char *s) {
    Value v;
    v.category = TypeCategory::kText;
    v.is_null = false;
    v.text = s;
    v.text_len = std::char_traits<char>::length(s);
    return v;
}

Value Null(TypeCategory c) {
    Value v;
    v.category = c;
    return v;
}

}  // namespace

TEST(ValuesFingerprint, SameValuesSameFingerprint) {
    Value a[2] = {Text("user-1"), Int(42)};
    Value b[2] = {Text("user-1"), Int(42)};
    EXPECT_EQ(values_fingerprint(a, 2, "sig"), values_fingerprint(b, 2, "sig"));
}

TEST(ValuesFingerprint, ChangesWithEveryValueTypeNullAndSignature) {
    Value base[2] = {Text("user-1"), Int(42)};
    Fingerprint f = values_fingerprint(base, 2, "sig");
    Value changed_int[2] = {Text("user-1"), Int(43)};
    Value changed_text[2] = {Text("user-2"), Int(42)};
    Value as_text[2] = {Text("user-1"), Text("42")};
    Value null_int[2] = {Text("user-1"), Null(TypeCategory::kInteger)};
    Value zero_int[2] = {Text("user-1"), Int(0)};
    EXPECT_NE(f, values_fingerprint(changed_int, 2, "sig"));
    EXPECT_NE(f, values_fingerprint(changed_text, 2, "sig"));
    EXPECT_NE(f, values_fingerprint(as_text, 2, "sig"));
    EXPECT_NE(values_fingerprint(null_int, 2, "sig"), values_fingerprint(zero_int, 2, "sig"));
    EXPECT_NE(f, values_fingerprint(base, 2, "other settings"));
    EXPECT_NE(f, values_fingerprint(base, 1, "sig"));
}

TEST(ValuesFingerprint, TextBoundariesMatter) {
    Value ab_c[2] = {Text("ab"), Text("c")};
    Value a_bc[2] = {Text("a"), Text("bc")};
    EXPECT_NE(values_fingerprint(ab_c, 2, ""), values_fingerprint(a_bc, 2, ""));
}

TEST(ValuesFingerprint, ArraysHashTheirShapeAndElements) {
    Value elems[2] = {Int(1), Int(2)};
    Value other[2] = {Int(1), Int(3)};
    Value arr;
    arr.category = TypeCategory::kArray;
    arr.is_null = false;
    arr.elements = elems;
    arr.ndims = 1;
    arr.dims[0] = 2;
    Value arr2 = arr;
    arr2.elements = other;
    Value arr3 = arr;
    arr3.ndims = 2;
    arr3.dims[0] = 1;
    arr3.dims[1] = 2;
    Fingerprint f = values_fingerprint(&arr, 1, "");
    EXPECT_NE(f, values_fingerprint(&arr2, 1, ""));
    EXPECT_NE(f, values_fingerprint(&arr3, 1, ""));
}

TEST(StateEntry, DependsOnKeyAndFingerprint) {
    Fingerprint a{}, b{};
    b[15] = 1;
    EXPECT_NE(state_entry(1, a), state_entry(1, b));
    EXPECT_NE(state_entry(1, a), state_entry(2, a));
    EXPECT_NE(key_hash("user-1"), key_hash("user-2"));
}

namespace {

std::vector<uint64_t> RandomValues(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<uint64_t> v(n);
    for (auto &x : v) x = rng();
    return v;
}

}  // namespace

TEST(CompactHashSet, EmptySetHoldsNothing) {
    CompactHashSet s;
    EXPECT_FALSE(s.contains(0));
    s.build({});
    EXPECT_FALSE(s.contains(123));
    EXPECT_EQ(s.size(), 0u);
}

TEST(CompactHashSet, BuildFindsEveryValueAndFewOthers) {
    for (size_t n : {1u, 7u, 100u, 100000u}) {
        std::vector<uint64_t> values = RandomValues(n, n);
        CompactHashSet s;
        s.build(std::vector<uint64_t>(values));
        for (uint64_t v : values) ASSERT_TRUE(s.contains(v)) << n;
        size_t false_hits = 0;
        for (uint64_t v : RandomValues(100000, n + 1)) false_hits += s.contains(v);
        EXPECT_EQ(false_hits, 0u) << n;
        EXPECT_LE(s.memory_bytes(), n * 6 + 64) << n;
    }
}

TEST(CompactHashSet, TwoPassBuildEqualsOnePass) {
    std::vector<uint64_t> values = RandomValues(50000, 7);
    CompactHashSet s;
    s.begin(values.size());
    for (uint64_t v : values) s.count(v);
    s.begin_fill();
    for (uint64_t v : values) s.fill(v);
    s.end_fill();
    EXPECT_EQ(s.size(), values.size());
    for (uint64_t v : values) ASSERT_TRUE(s.contains(v));
    for (uint64_t v : RandomValues(50000, 8)) ASSERT_FALSE(s.contains(v));
}

TEST(CompactHashSet, TwoPassToleratesValuesThatChangedBetweenPasses) {
    // Counted 1000 values; the fill sees 900 of them and 100 new ones.
    std::vector<uint64_t> counted = RandomValues(1000, 11);
    std::vector<uint64_t> fresh = RandomValues(100, 12);
    CompactHashSet s;
    s.begin(counted.size());
    for (uint64_t v : counted) s.count(v);
    s.begin_fill();
    for (size_t i = 0; i < 900; ++i) s.fill(counted[i]);
    for (uint64_t v : fresh) s.fill(v);
    s.end_fill();
    for (size_t i = 0; i < 900; ++i) ASSERT_TRUE(s.contains(counted[i]));
    // Never a value that was not filled: neither the 100 unseen ones (their
    // slots are closed) nor garbage.
    for (size_t i = 900; i < 1000; ++i) EXPECT_FALSE(s.contains(counted[i]));
    EXPECT_LE(s.size(), 1000u);
    EXPECT_FALSE(s.contains(0));
}
