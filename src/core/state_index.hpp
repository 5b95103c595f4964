// A saved sync's state as a run consults it: fingerprints of column values
// (no JSON is built for a row that did not change) and a compact in-memory
// set of what Amplitude confirmed, loaded once per run. Core file: no
// postgres.h.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>


namespace amplitude_sync {

using Fingerprint = std::array<unsigned char, 16>;

// 64-bit hash of a record key (user_id, device_id, group, insert_id).
uint64_t key_hash(std::string_view key);

// A row's fingerprint: 128-bit xxHash3 of its column values in a stable
// binary form — per column a NULL flag, the length and the bytes of the
// value as the database stores it (the glue passes PostgreSQL's Datum
// bytes, detoasted: no output function runs, no JSON is built) — after the
// hash of the signature (column names and types, the settings that shape
// the payload, the settings that shape output). Equal values give equal
// bytes; a value whose payload would change has different bytes.
struct ByteSpan {
    const void *data;  // nullptr: NULL
    size_t len;
};

class RowFingerprint {
public:
    explicit RowFingerprint(std::string_view signature);
    // The fingerprint of a row given as one span per column.
    Fingerprint of(const ByteSpan *columns, size_t count);
    void begin();
    void add_null();
    void add(const void *data, size_t len);
    Fingerprint finish() const;

private:
    uint64_t signature_hash_;
    std::string row_;
};

// The 64-bit entry of a confirmed identification: its key with its
// payload's fingerprint. Its top 24 bits are the key hash's, so the set's
// bucket for a record is known from its key alone (a run fetches it into
// cache while it fingerprints the row); the other 40 mix key and
// fingerprint.
constexpr uint64_t kKeyBits = 0xFFFFFF0000000000ull;
uint64_t state_entry(uint64_t key_hash, const Fingerprint &fingerprint);

// Memory for one of the set's tables (zeroed; over 64 kB a mapping of its
// own, over 2 MB in 2 MB pages).
class TableMemory {
public:
    TableMemory() = default;
    ~TableMemory() { release(); }
    TableMemory(const TableMemory &) = delete;
    TableMemory &operator=(const TableMemory &) = delete;
    void *allocate(size_t bytes);  // nullptr when out of memory
    void release();
    void swap(TableMemory &other) noexcept {
        std::swap(base_, other.base_);
        std::swap(length_, other.length_);
    }

private:
    void *base_ = nullptr;
    size_t length_ = 0;  // of the mapping; 0 when from calloc
};

// A set of 64-bit hashes in about 5.3 bytes per entry: bucketed by their
// top bits (b = log2(n / 8), at most 24), each entry stored as its low 40
// bits, sorted within its bucket. A lookup of a hash that is not in the set answers true
// with probability about n / 2^(b + 40), about 8 / 2^40 = 7e-12 whatever
// the size: a changed record would be taken for unchanged that rarely.
// Built in two passes over the same values (count, then fill), so building
// never holds more than the final set.
class CompactHashSet {
public:
    CompactHashSet() = default;
    ~CompactHashSet();
    CompactHashSet(const CompactHashSet &) = delete;
    CompactHashSet &operator=(const CompactHashSet &) = delete;

    // Two passes: begin(n) with the number of values expected, or any larger
    // bound, count() each value (any value with the same top bits counts the
    // same), begin_fill() (which narrows the buckets to the number counted:
    // meanwhile the count holds the buckets of its first 65,536 values, and
    // beyond that 4 bytes per bucket of the bound), fill() the
    // values, end_fill(). Values that differ between the passes are
    // tolerated: a bucket whose count was too low leaves out the values
    // that do not fit (whether seen in the count or not), never a false
    // "present" for them; for a saved sync that means a record sent again.
    void begin(size_t expected);
    void count(uint64_t value);
    void begin_fill();
    void fill(uint64_t value);
    void end_fill();

    bool contains(uint64_t value) const;
    // Lookups go faster when each is announced first: the bucket's offset
    // (prefetch; any value with the same top 24 bits will do, such as the
    // key hash of a state_entry), then, once that is in cache, its entries
    // (prefetch_entries).
    void prefetch(uint64_t value) const {
        if (offsets_) __builtin_prefetch(&offsets_[bucket(value)]);
    }
    void prefetch_entries(uint64_t value) const {
        if (offsets_ && entries_) __builtin_prefetch(entries_ + static_cast<size_t>(offsets_[bucket(value)]) * kEntryBytes);
    }
    size_t size() const { return size_; }
    size_t memory_bytes() const;

private:
    static constexpr int kEntryBytes = 5;
    static constexpr int kRemainderBits = 40;
    static constexpr uint64_t kRemainderMask = (static_cast<uint64_t>(1) << kRemainderBits) - 1;
    static uint64_t remainder(uint64_t value) { return value & kRemainderMask; }
    size_t bucket(uint64_t value) const { return bits_ ? static_cast<size_t>(value >> (64 - bits_)) : 0; }
    uint64_t entry_at(size_t i) const;
    void set_entry(size_t i, uint64_t remainder);
    void choose_bits(size_t n);
    void narrow_to_count();
    void release();

    int bits_ = 0;
    size_t size_ = 0;
    unsigned char *entries_ = nullptr;    // size_ * kEntryBytes
    uint32_t *offsets_ = nullptr;         // (1 << bits_) + 1
    TableMemory entries_memory_;
    TableMemory offsets_memory_;
    uint32_t *fill_at_ = nullptr;         // two-pass build only
    TableMemory fill_at_memory_;
    // Counting: the values counted, and the buckets of the first
    // kPendingCounts of them (in the table once there are more).
    static constexpr size_t kPendingCounts = static_cast<size_t>(1) << 16;
    size_t counted_ = 0;
    uint32_t *pending_ = nullptr;
    TableMemory pending_memory_;
    size_t pending_count_ = 0;            // kPendingCounts + 1: in the table
};

}  // namespace amplitude_sync
