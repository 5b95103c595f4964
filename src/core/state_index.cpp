#include "state_index.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include <sys/mman.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace amplitude_sync {

namespace {

// Bumped whenever the binary form changes: every fingerprint changes with it.
constexpr unsigned char kFingerprintVersion = 2;

// 64-bit values in the binary form: 8 bytes, little-endian.
char *put_u64(char *out, uint64_t v) {
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (8 * i));
    return out + 8;
}

void append_u64(std::string &out, uint64_t v) {
    char bytes[8];
    put_u64(bytes, v);
    out.append(bytes, sizeof bytes);
}

Fingerprint hash_of(const char *bytes, size_t len) {
    XXH128_canonical_t canonical;
    XXH128_canonicalFromHash(&canonical, XXH3_128bits(bytes, len));
    Fingerprint out;
    std::memcpy(out.data(), canonical.digest, out.size());
    return out;
}

}  // namespace

// The set's tables: a lookup lands at a random place in them, so a large
// table is mapped on its own and asked for in 2 MB pages where the kernel
// offers them (with 4 kB pages most lookups would also miss the TLB). Its
// own mapping, so that no other allocation ever shares those pages.
// Anything over 64 kB is mapped here rather than by malloc: freeing a block
// glibc had mapped raises glibc's mmap threshold to its size (mallopt(3)),
// and the batches and request bodies allocated after it would then stay
// in the heap (a 1% run at 10M users: 13.8 MB of heap, 10 MB without).
void *TableMemory::allocate(size_t bytes) {
    release();
    constexpr size_t kOwnMapping = 64u << 10;
    constexpr size_t kHugePage = 2u << 20;
    if (bytes < kOwnMapping) {
        base_ = std::calloc(1, bytes ? bytes : 1);
        return base_;
    }
    // A table of 2 MB or more gets room to align its start to a 2 MB boundary.
    bool huge = bytes >= kHugePage;
    size_t length = huge ? (bytes + kHugePage - 1) / kHugePage * kHugePage + kHugePage : bytes;
    void *base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    base_ = base;
    length_ = length;
    if (!huge) return base;  // zeroed, as every new mapping
    uintptr_t start = (reinterpret_cast<uintptr_t>(base) + kHugePage - 1) & ~(static_cast<uintptr_t>(kHugePage) - 1);
#ifdef MADV_HUGEPAGE
    madvise(reinterpret_cast<void *>(start), length - (start - reinterpret_cast<uintptr_t>(base)), MADV_HUGEPAGE);
#endif
    return reinterpret_cast<void *>(start);
}

void TableMemory::release() {
    if (length_) munmap(base_, length_);
    else std::free(base_);
    base_ = nullptr;
    length_ = 0;
}

uint64_t key_hash(std::string_view key) { return XXH3_64bits(key.data(), key.size()); }

RowFingerprint::RowFingerprint(std::string_view signature)
    : signature_hash_(XXH3_64bits(signature.data(), signature.size())) {
    row_.reserve(256);
}

void RowFingerprint::begin() {
    row_.clear();
    row_.push_back(static_cast<char>(kFingerprintVersion));
    append_u64(row_, signature_hash_);
}

void RowFingerprint::add_null() { row_.push_back('\0'); }

void RowFingerprint::add(const void *data, size_t len) {
    row_.push_back('\1');
    append_u64(row_, len);
    row_.append(static_cast<const char *>(data), len);
}

Fingerprint RowFingerprint::of(const ByteSpan *columns, size_t count) {
    // The bytes begin(), add() and add_null() would append, written in
    // one pass into a buffer sized once (this runs for every row of a
    // saved sync's source).
    size_t total = 1 + 8;
    for (size_t i = 0; i < count; ++i) total += columns[i].data ? 1 + 8 + columns[i].len : 1;
    if (row_.size() < total) row_.resize(total);
    char *p = &row_[0];
    *p++ = static_cast<char>(kFingerprintVersion);
    p = put_u64(p, signature_hash_);
    for (size_t i = 0; i < count; ++i) {
        if (!columns[i].data) {
            *p++ = '\0';
            continue;
        }
        *p++ = '\1';
        p = put_u64(p, columns[i].len);
        std::memcpy(p, columns[i].data, columns[i].len);
        p += columns[i].len;
    }
    return hash_of(row_.data(), static_cast<size_t>(p - row_.data()));
}

Fingerprint RowFingerprint::finish() const { return hash_of(row_.data(), row_.size()); }

uint64_t state_entry(uint64_t key, const Fingerprint &fingerprint) {
    unsigned char bytes[24];
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(key >> (8 * i));
    std::memcpy(bytes + 8, fingerprint.data(), fingerprint.size());
    return (key & kKeyBits) | (XXH3_64bits(bytes, sizeof bytes) & ~kKeyBits);
}

CompactHashSet::~CompactHashSet() { release(); }

void CompactHashSet::release() {
    entries_memory_.release();
    offsets_memory_.release();
    fill_at_memory_.release();
    pending_memory_.release();
    entries_ = nullptr;
    offsets_ = nullptr;
    fill_at_ = nullptr;
    pending_ = nullptr;
    pending_count_ = 0;
    counted_ = 0;
    size_ = 0;
}

void CompactHashSet::choose_bits(size_t n) {
    bits_ = 0;
    while (bits_ < 24 && (static_cast<size_t>(1) << (bits_ + 1)) * 8 <= n) ++bits_;
}

uint64_t CompactHashSet::entry_at(size_t i) const {
    const unsigned char *p = entries_ + i * kEntryBytes;
    uint64_t r = 0;
    for (int k = 0; k < kEntryBytes; ++k) r |= static_cast<uint64_t>(p[k]) << (8 * k);
    return r;
}

void CompactHashSet::set_entry(size_t i, uint64_t r) {
    unsigned char *p = entries_ + i * kEntryBytes;
    for (int k = 0; k < kEntryBytes; ++k) p[k] = static_cast<unsigned char>(r >> (8 * k));
}

// The first kPendingCounts values counted are kept as their buckets, so
// that a small count (most states) never touches the bound's table: its
// pages stay unmapped, and begin_fill sizes the buckets from those alone.
void CompactHashSet::begin(size_t expected) {
    release();
    choose_bits(expected);
    size_t buckets = static_cast<size_t>(1) << bits_;
    offsets_ = static_cast<uint32_t *>(offsets_memory_.allocate((buckets + 1) * sizeof(uint32_t)));
    pending_ = static_cast<uint32_t *>(pending_memory_.allocate(kPendingCounts * sizeof(uint32_t)));
    if (!offsets_ || !pending_) {
        release();
        throw std::bad_alloc();
    }
}

void CompactHashSet::count(uint64_t value) {
    size_t b = bucket(value);
    ++counted_;
    if (pending_count_ < kPendingCounts) {
        pending_[pending_count_++] = static_cast<uint32_t>(b);
        return;
    }
    if (pending_count_ == kPendingCounts) {  // the buffer is full: into the table
        for (size_t i = 0; i < kPendingCounts; ++i) offsets_[pending_[i] + 1]++;
        ++pending_count_;
    }
    offsets_[b + 1]++;
}

void CompactHashSet::begin_fill() {
    narrow_to_count();
    size_t buckets = static_cast<size_t>(1) << bits_;
    for (size_t b = 0; b < buckets; ++b) offsets_[b + 1] += offsets_[b];
    size_ = offsets_[buckets];
    entries_ = static_cast<unsigned char *>(entries_memory_.allocate(size_ * kEntryBytes + 1));
    fill_at_ = static_cast<uint32_t *>(fill_at_memory_.allocate(buckets * sizeof(uint32_t)));
    if (!entries_ || !fill_at_) {
        release();
        throw std::bad_alloc();
    }
    std::memcpy(fill_at_, offsets_, buckets * sizeof(uint32_t));
}

// The count was made with the buckets of begin's bound: when fewer values
// were counted, adjacent buckets are merged into the number the count calls
// for (a bucket's values share its top bits), in a table of that size.
void CompactHashSet::narrow_to_count() {
    size_t counted_buckets = static_cast<size_t>(1) << bits_;
    size_t total = counted_;
    int counted_bits = bits_;
    bool in_table = pending_count_ > kPendingCounts;
    choose_bits(total);
    if (bits_ >= counted_bits) {
        bits_ = counted_bits;
        if (in_table) {
            pending_memory_.release();
            pending_ = nullptr;
            return;
        }
    }
    int shift = counted_bits - bits_;
    TableMemory narrow_memory;
    auto *narrow = static_cast<uint32_t *>(
        narrow_memory.allocate(((static_cast<size_t>(1) << bits_) + 1) * sizeof(uint32_t)));
    if (!narrow) {
        release();
        throw std::bad_alloc();
    }
    if (in_table) {
        for (size_t b = 0; b < counted_buckets; ++b) narrow[(b >> shift) + 1] += offsets_[b + 1];
    } else {
        for (size_t i = 0; i < pending_count_; ++i) narrow[(pending_[i] >> shift) + 1]++;
    }
    pending_memory_.release();
    pending_ = nullptr;
    offsets_memory_.swap(narrow_memory);  // the counted table goes with narrow_memory
    offsets_ = narrow;
}

void CompactHashSet::fill(uint64_t value) {
    size_t b = bucket(value);
    if (fill_at_[b] >= offsets_[b + 1]) return;  // not counted: left out
    set_entry(fill_at_[b]++, remainder(value));
}

void CompactHashSet::end_fill() {
    // Sorts each bucket and closes the gaps the fill left (values counted
    // but not seen again).
    size_t buckets = static_cast<size_t>(1) << bits_;
    size_t out = 0;
    std::vector<uint64_t> bucket_values;
    for (size_t b = 0; b < buckets; ++b) {
        size_t from = offsets_[b], to = fill_at_[b];
        bucket_values.clear();
        for (size_t i = from; i < to; ++i) bucket_values.push_back(entry_at(i));
        std::sort(bucket_values.begin(), bucket_values.end());
        offsets_[b] = static_cast<uint32_t>(out);
        for (uint64_t r : bucket_values) set_entry(out++, r);
    }
    offsets_[buckets] = static_cast<uint32_t>(out);
    size_ = out;
    fill_at_memory_.release();
    fill_at_ = nullptr;
}

bool CompactHashSet::contains(uint64_t value) const {
    if (!offsets_ || size_ == 0) return false;
    size_t b = bucket(value);
    uint64_t r = remainder(value);
    // A bucket holds about 8 entries in one or two cache lines: a forward
    // scan (sorted, so it stops at the first larger one) beats a binary
    // search's unpredictable branches.
    for (size_t i = offsets_[b], end = offsets_[b + 1]; i < end; ++i) {
        uint64_t e = entry_at(i);
        if (e >= r) return e == r;
    }
    return false;
}

size_t CompactHashSet::memory_bytes() const {
    return size_ * kEntryBytes + ((static_cast<size_t>(1) << bits_) + 1) * sizeof(uint32_t);
}

}  // namespace amplitude_sync
