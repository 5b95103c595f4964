// Unit tests for src/core/state_index: value fingerprints change with every
// value, type and setting that shapes a payload; the compact set answers
// like an exact set for what it holds, whichever way it was built.
#include "state_index.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <malloc.h>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

using namespace amplitude_sync;

namespace {

Fingerprint Row(std::string_view signature, std::initializer_list<const char *> columns) {
    RowFingerprint f(signature);
    f.begin();
    for (const char *c : columns) {
        if (c) f.add(c, std::char_traits<char>::length(c));
        else f.add_null();
    }
    return f.finish();
}

}  // namespace

TEST(RowFingerprint, SameValuesSameFingerprint) {
    EXPECT_EQ(Row("sig", {"user-1", "42"}), Row("sig", {"user-1", "42"}));
    // The builder is reused row after row.
    RowFingerprint f("sig");
    f.begin();
    f.add("a", 1);
    Fingerprint first = f.finish();
    f.begin();
    f.add("a", 1);
    EXPECT_EQ(first, f.finish());
}

TEST(RowFingerprint, SpansAreColumns) {
    ByteSpan spans[2] = {{"user-1", 6}, {nullptr, 0}};
    RowFingerprint f("sig");
    EXPECT_EQ(f.of(spans, 2), Row("sig", {"user-1", nullptr}));
}

TEST(RowFingerprint, ChangesWithEveryValueNullBoundaryAndSignature) {
    Fingerprint f = Row("sig", {"user-1", "42"});
    EXPECT_NE(f, Row("sig", {"user-1", "43"}));
    EXPECT_NE(f, Row("sig", {"user-2", "42"}));
    EXPECT_NE(f, Row("other settings", {"user-1", "42"}));
    EXPECT_NE(f, Row("sig", {"user-1"}));
    EXPECT_NE(Row("sig", {"user-1", nullptr}), Row("sig", {"user-1", ""}));
    EXPECT_NE(Row("sig", {"ab", "c"}), Row("sig", {"a", "bc"}));
}

TEST(StateEntry, DependsOnKeyAndFingerprint) {
    Fingerprint a{}, b{};
    b[15] = 1;
    EXPECT_NE(state_entry(1, a), state_entry(1, b));
    EXPECT_NE(state_entry(1, a), state_entry(2, a));
    EXPECT_NE(key_hash("user-1"), key_hash("user-2"));
}

TEST(StateEntry, ItsTopBitsAreTheKeysSoTheBucketIsKnownBeforeTheFingerprint) {
    uint64_t key = key_hash("user-1");
    Fingerprint a{}, b{};
    b[0] = 7;
    EXPECT_EQ(state_entry(key, a) & kKeyBits, key & kKeyBits);
    EXPECT_EQ(state_entry(key, b) & kKeyBits, key & kKeyBits);
    EXPECT_NE(state_entry(key, a) & ~kKeyBits, state_entry(key, b) & ~kKeyBits);
}

namespace {

// The set as a run loads it: two passes, counted with a bound.
void Load(CompactHashSet &s, const std::vector<uint64_t> &values) {
    s.begin(size_t(1) << 25);
    for (uint64_t v : values) s.count(v);
    s.begin_fill();
    for (uint64_t v : values) s.fill(v);
    s.end_fill();
}

}  // namespace

TEST(CompactHashSet, ARecordWhosePayloadChangedIsNotFound) {
    // Entries of one key share a bucket: the set tells them apart by the
    // bits that mix key and fingerprint.
    std::vector<uint64_t> entries;
    std::vector<uint64_t> changed;
    for (int i = 0; i < 100000; ++i) {
        uint64_t key = key_hash("user-" + std::to_string(i));
        Fingerprint old{}, now{};
        old[0] = 1;
        now[0] = 2;
        entries.push_back(state_entry(key, old));
        changed.push_back(state_entry(key, now));
    }
    CompactHashSet s;
    Load(s, entries);
    for (uint64_t e : entries) ASSERT_TRUE(s.contains(e));
    size_t false_hits = 0;
    for (uint64_t e : changed) false_hits += s.contains(e);
    EXPECT_EQ(false_hits, 0u);
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
    Load(s, {});
    EXPECT_FALSE(s.contains(123));
    EXPECT_EQ(s.size(), 0u);
}

TEST(CompactHashSet, LoadFindsEveryValueAndFewOthers) {
    // (1,000,000: tables of 2 MB and more get their own mapping.)
    for (size_t n : {1u, 7u, 100u, 100000u, 1000000u}) {
        std::vector<uint64_t> values = RandomValues(n, n);
        CompactHashSet s;
        Load(s, values);
        for (uint64_t v : values) ASSERT_TRUE(s.contains(v)) << n;
        size_t false_hits = 0;
        for (uint64_t v : RandomValues(100000, n + 1)) false_hits += s.contains(v);
        EXPECT_EQ(false_hits, 0u) << n;
        EXPECT_LE(s.memory_bytes(), n * 6 + 64) << n;
    }
}

TEST(CompactHashSet, TwoPassWithTheExactCountFindsEveryValue) {
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

// A run counts its state with the buckets of a bound (1 << 25 values), not
// of a count it would need a query for: the set narrows to what was counted
// and ends up as one sized for the exact number, whether the count stayed in
// its buffer (65,536 values) or outgrew it.
TEST(CompactHashSet, TwoPassWithABoundNarrowsToTheCount) {
    for (size_t n : {size_t(0), size_t(1), size_t(9), size_t(5000), size_t(65535), size_t(65536), size_t(65537),
                     size_t(300000)}) {
        std::vector<uint64_t> values = RandomValues(n, n + 40);
        CompactHashSet exact, bounded;
        exact.begin(n);
        bounded.begin(size_t(1) << 25);
        for (uint64_t v : values) {
            exact.count(v);
            bounded.count(v);
        }
        exact.begin_fill();
        bounded.begin_fill();
        for (uint64_t v : values) {
            exact.fill(v);
            bounded.fill(v);
        }
        exact.end_fill();
        bounded.end_fill();
        EXPECT_EQ(bounded.size(), n);
        EXPECT_EQ(bounded.memory_bytes(), exact.memory_bytes()) << n;
        for (uint64_t v : values) ASSERT_TRUE(bounded.contains(v)) << n;
        for (uint64_t v : RandomValues(20000, n + 41)) ASSERT_FALSE(bounded.contains(v)) << n;
    }
}

// More values than the bound: the buckets stay those of the bound (longer).
// (Review: 5,000 stay in the count's buffer, 100,000 outgrow it.)
TEST(CompactHashSet, TwoPassBeyondItsBoundKeepsEveryValue) {
    for (size_t n : {size_t(5000), size_t(100000)}) {
        std::vector<uint64_t> values = RandomValues(n, 77);
        CompactHashSet s;
        s.begin(1000);
        for (uint64_t v : values) s.count(v);
        s.begin_fill();
        for (uint64_t v : values) s.fill(v);
        s.end_fill();
        EXPECT_EQ(s.size(), values.size());
        for (uint64_t v : values) ASSERT_TRUE(s.contains(v)) << n;
    }
}

// Review: a run counts every state, most of them small, with the buckets of
// the bound (16 MB of counts): a small count must not touch that table (a
// fresh mapping's pages, 2 MB each where the kernel gives them, each zeroed
// on first touch, then the whole table read to narrow it): that cost every
// run of a small sync ~10 ms, and ~60 ms in a fresh backend.
size_t RssAnonKb() {
    std::FILE *f = std::fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0;
    while (std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "RssAnon: %zu kB", &kb) == 1) break;
    std::fclose(f);
    return kb;
}

TEST(CompactHashSet, ASmallCountLeavesTheBoundsTableUntouched) {
    std::vector<uint64_t> values = RandomValues(2000, 91);
    CompactHashSet s;
    s.begin(size_t(1) << 25);
    size_t before = RssAnonKb();
    ASSERT_GT(before, 0u);
    for (uint64_t v : values) s.count(v);
    size_t counting = RssAnonKb();
    s.begin_fill();
    for (uint64_t v : values) s.fill(v);
    s.end_fill();
    // 2,000 random buckets of 4,194,304 touch ~1,800 of the table's 4 kB
    // pages (7 MB), or all of its 2 MB ones (16 MB).
    EXPECT_LT(counting, before + 1024) << "kB of anonymous memory while counting";
    EXPECT_EQ(s.size(), values.size());
    for (uint64_t v : values) ASSERT_TRUE(s.contains(v));
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

// Review: offsets of 2 MB and more come from a fresh mapping (zeroed, 2 MB
// aligned); a two-pass load counts key hashes and fills state entries, with
// some counted values (rejected records) never filled.
TEST(CompactHashSet, TwoPassLargeTablesCountByKey) {
    for (size_t expected : {size_t(1) << 23, size_t(1) << 27}) {  // bits 19 (offsets 2 MB + 4), 24 (64 MB)
        std::mt19937_64 rng(expected);
        std::vector<uint64_t> keys(200000), entries;
        for (uint64_t &k : keys) k = rng();
        CompactHashSet s;
        s.begin(expected);
        for (uint64_t k : keys) s.count(k);
        s.begin_fill();
        for (size_t i = 0; i < keys.size(); ++i) {
            if (i % 3 == 0) continue;  // counted but not filled
            Fingerprint f{};
            f[0] = static_cast<unsigned char>(i);
            entries.push_back(state_entry(keys[i], f));
            s.fill(entries.back());
        }
        s.end_fill();
        EXPECT_EQ(s.size(), entries.size());
        for (uint64_t e : entries) ASSERT_TRUE(s.contains(e));
        size_t false_hits = 0;
        for (int i = 0; i < 100000; ++i) false_hits += s.contains(rng());
        EXPECT_LT(false_hits, 10u);
    }
}

TEST(TableMemory, LargeIsAlignedZeroedAndReusable) {
    TableMemory m;
    for (size_t bytes : {size_t(2) << 20, (size_t(2) << 20) + 4, size_t(5000001), size_t(100), size_t(300) << 10,
                         size_t(64) << 20}) {
        unsigned char *p = static_cast<unsigned char *>(m.allocate(bytes));
        ASSERT_NE(p, nullptr);
        if (bytes >= (size_t(2) << 20)) {
            EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % (size_t(2) << 20), 0u);
        }
        for (size_t i = 0; i < bytes; i += 4096) ASSERT_EQ(p[i], 0);
        ASSERT_EQ(p[bytes - 1], 0);
        std::memset(p, 0xab, bytes);  // the whole length is writable
    }
    m.release();
    m.release();  // twice is harmless
}

// glibc raises its mmap threshold to the size of any block it had mapped
// once that block is freed (mallopt(3)); afterwards every allocation below
// it comes from the heap, which keeps what it freed (a 1% run at 10M users
// held 13.8 MB of heap after its load freed a 4 MB table, 10 MB without). A set
// is built and released in a fresh process (a death test re-runs the
// binary), then a 200 kB block must still be mapped.
namespace {

void BuildAndReleaseASetThenExitWithWhetherMallocStillMaps() {
    // (The values are generated twice, not stored: a growing vector would
    // raise the threshold itself.)
    constexpr size_t kValues = 1000000;  // tables of 256 kB (2^16 buckets)
    {
        CompactHashSet s;
        s.begin(kValues);
        std::mt19937_64 counting(5);
        std::mt19937_64 filling(5);
        for (size_t i = 0; i < kValues; ++i) s.count(counting());
        s.begin_fill();
        for (size_t i = 0; i < kValues; ++i) s.fill(filling());
        s.end_fill();
    }
    size_t mapped_before = mallinfo2().hblkhd;
    void *volatile block = std::malloc(size_t(200) << 10);  // (volatile: not elided)
    bool mapped = mallinfo2().hblkhd >= mapped_before + (size_t(200) << 10);
    std::free(block);
    std::exit(mapped ? 0 : 1);
}

}  // namespace

TEST(TableMemory, ReleasingASetLeavesMallocsMmapThresholdAlone) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(BuildAndReleaseASetThenExitWithWhetherMallocStillMaps(), ::testing::ExitedWithCode(0), "");
}
