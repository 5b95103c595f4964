#include "state_index.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace amplitude_sync {

namespace {

// Bumped whenever the binary form changes: every fingerprint changes with it.
constexpr unsigned char kFingerprintVersion = 2;

void append_u64(std::string &out, uint64_t v) {
    char bytes[8];
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(v >> (8 * i));
    out.append(bytes, sizeof bytes);
}

}  // namespace

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
    begin();
    for (size_t i = 0; i < count; ++i) {
        if (columns[i].data) add(columns[i].data, columns[i].len);
        else add_null();
    }
    return finish();
}

Fingerprint RowFingerprint::finish() const {
    XXH128_canonical_t canonical;
    XXH128_canonicalFromHash(&canonical, XXH3_128bits(row_.data(), row_.size()));
    Fingerprint out;
    std::memcpy(out.data(), canonical.digest, out.size());
    return out;
}

uint64_t state_entry(uint64_t key, const Fingerprint &fingerprint) {
    unsigned char bytes[24];
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(key >> (8 * i));
    std::memcpy(bytes + 8, fingerprint.data(), fingerprint.size());
    return XXH3_64bits(bytes, sizeof bytes);
}

CompactHashSet::~CompactHashSet() { release(); }

void CompactHashSet::release() {
    std::free(entries_);
    std::free(offsets_);
    std::free(fill_at_);
    entries_ = nullptr;
    offsets_ = nullptr;
    fill_at_ = nullptr;
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

void CompactHashSet::build(std::vector<uint64_t> &&values) {
    release();
    std::sort(values.begin(), values.end());
    values.erase(std::unique(values.begin(), values.end()), values.end());
    size_t n = values.size();
    choose_bits(n);
    size_t buckets = static_cast<size_t>(1) << bits_;
    offsets_ = static_cast<uint32_t *>(std::calloc(buckets + 1, sizeof(uint32_t)));
    entries_ = static_cast<unsigned char *>(std::malloc(n * kEntryBytes + 1));
    if (!offsets_ || !entries_) {
        release();
        throw std::bad_alloc();
    }
    for (size_t i = 0; i < n; ++i) {
        offsets_[bucket(values[i]) + 1]++;
        set_entry(i, remainder(values[i]));
    }
    for (size_t b = 0; b < buckets; ++b) offsets_[b + 1] += offsets_[b];
    size_ = n;
    std::vector<uint64_t>().swap(values);
}

void CompactHashSet::begin(size_t expected) {
    release();
    choose_bits(expected);
    size_t buckets = static_cast<size_t>(1) << bits_;
    offsets_ = static_cast<uint32_t *>(std::calloc(buckets + 1, sizeof(uint32_t)));
    if (!offsets_) throw std::bad_alloc();
}

void CompactHashSet::count(uint64_t value) { offsets_[bucket(value) + 1]++; }

void CompactHashSet::begin_fill() {
    size_t buckets = static_cast<size_t>(1) << bits_;
    for (size_t b = 0; b < buckets; ++b) offsets_[b + 1] += offsets_[b];
    size_ = offsets_[buckets];
    entries_ = static_cast<unsigned char *>(std::malloc(size_ * kEntryBytes + 1));
    fill_at_ = static_cast<uint32_t *>(std::malloc(buckets * sizeof(uint32_t)));
    if (!entries_ || !fill_at_) {
        release();
        throw std::bad_alloc();
    }
    std::memcpy(fill_at_, offsets_, buckets * sizeof(uint32_t));
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
    std::free(fill_at_);
    fill_at_ = nullptr;
}

bool CompactHashSet::contains(uint64_t value) const {
    if (!offsets_ || size_ == 0) return false;
    size_t b = bucket(value);
    uint64_t r = remainder(value);
    size_t lo = offsets_[b], hi = offsets_[b + 1];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint64_t e = entry_at(mid);
        if (e == r) return true;
        if (e < r) lo = mid + 1;
        else hi = mid;
    }
    return false;
}

size_t CompactHashSet::memory_bytes() const {
    return size_ * kEntryBytes + ((static_cast<size_t>(1) << bits_) + 1) * sizeof(uint32_t);
}

}  // namespace amplitude_sync
