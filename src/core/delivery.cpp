#include "delivery.hpp"

#include <algorithm>
#include <unordered_set>

#include "json_text.hpp"

namespace amplitude_sync {

namespace {

using Clock = std::chrono::steady_clock;

// Sealed batches waiting besides those in flight: enough to keep every
// connection busy, few enough that memory stays bounded.
constexpr size_t kMaxWaitingBatches = 2;

// Records added between two turns of the transport while rows are read.
constexpr size_t kRecordsBetweenProgress = 8;

// Sorted, distinct hashes of a batch's ordering keys. Two batches whose
// lists meet may hold records of one device; a hash collision only makes a
// batch wait without need.
void index_keys_of(const std::vector<Record> &records, std::vector<uint64_t> &keys) {
    keys.clear();
    keys.reserve(records.size());
    for (const Record &r : records) keys.push_back(std::hash<std::string>{}(r.ordering_key()));
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
}

bool share_a_key(const std::vector<uint64_t> &a, const std::vector<uint64_t> &b) {
    auto i = a.begin(), j = b.begin();
    while (i != a.end() && j != b.end()) {
        if (*i == *j) return true;
        if (*i < *j) ++i; else ++j;
    }
    return false;
}

long millis_until(Clock::time_point t) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now()).count();
    return ms > 0 ? static_cast<long>(ms) : 0;
}

}  // namespace

EventsFormat::EventsFormat(const std::string &api_key, int min_id_length) : api_key_(api_key) {
    prefix_ = "{\"api_key\":";
    append_json_string(prefix_, api_key);
    prefix_ += ",\"events\":[";
    suffix_ = "]";
    if (min_id_length != 5) {
        suffix_ += ",\"options\":{\"min_id_length\":" + std::to_string(min_id_length) + "}";
    }
    suffix_ += "}";
}

void EventsFormat::build(const std::vector<Record> &records, std::string &body) const {
    body.assign(prefix_);
    for (size_t i = 0; i < records.size(); ++i) {
        if (i) body.push_back(',');
        body.append(records[i].json);
    }
    body.append(suffix_);
}

ResponseVerdict EventsFormat::classify(const HttpResponse &response) const {
    return classify_events_response(response, api_key_);
}

IdentificationFormat::IdentificationFormat(const std::string &api_key) : api_key_(api_key) {
    prefix_ = "api_key=";
    append_url_encoded(prefix_, api_key);
    prefix_ += "&identification=%5B";
}

size_t IdentificationFormat::wire_size(const Record &record) const {
    return url_encoded_size(record.json);
}

void IdentificationFormat::build(const std::vector<Record> &records, std::string &body) const {
    body.assign(prefix_);
    for (size_t i = 0; i < records.size(); ++i) {
        if (i) body.append("%2C");
        append_url_encoded(body, records[i].json);
    }
    body.append("%5D");
}

ResponseVerdict IdentificationFormat::classify(const HttpResponse &response) const {
    return classify_form_response(response, api_key_);
}

Delivery::Delivery(const PayloadFormat &format, Transport &transport, std::string url,
                   DeliveryLimits limits, RetryPolicy policy, size_t concurrency,
                   std::function<bool()> should_stop)
    : format_(format),
      transport_(transport),
      url_(std::move(url)),
      limits_(limits),
      policy_(policy),
      should_stop_(std::move(should_stop)),
      concurrency_(concurrency ? concurrency : 1),
      max_records_(limits.max_records),
      jitter_(static_cast<unsigned>(Clock::now().time_since_epoch().count())) {
    slots_.assign(concurrency_, queue_.end());
}

bool Delivery::fits(const Batch &batch, const Record &record) const {
    size_t separators = batch.records.size() * format_.separator_bytes();
    return batch.records.size() < max_records_ &&
           format_.overhead_bytes() + batch.bytes + separators + record.wire_bytes <= limits_.max_bytes &&
           (limits_.max_properties == 0 || batch.properties + record.property_count <= limits_.max_properties);
}

void Delivery::add(Record &&record) {
    if (state_ != DeliveryState::kRunning) {
        Batch lone;
        lone.records.push_back(std::move(record));
        give_up(std::move(lone), Outcome::kNotSent, "", "not sent: " + error_);
        return;
    }
    record.wire_bytes = format_.wire_size(record);
    if (format_.overhead_bytes() + record.wire_bytes > limits_.max_bytes) {
        size_t size = record.wire_bytes;
        Batch lone;
        lone.records.push_back(std::move(record));
        give_up(std::move(lone), Outcome::kRejected, "",
                "record is " + std::to_string(size) + " bytes, more than one request may carry (" +
                    std::to_string(limits_.max_bytes) + " bytes)");
        return;
    }
    if (!building_.records.empty() && !fits(building_, record)) {
        auto started = Clock::now();
        seal();
        network_time_ += Clock::now() - started;
    }
    if (building_.records.empty()) building_.records.reserve(max_records_);
    building_.bytes += record.wire_bytes;
    building_.properties += record.property_count;
    building_.records.push_back(std::move(record));
    if (building_.records.size() >= max_records_) {
        auto started = Clock::now();
        seal();
        network_time_ += Clock::now() - started;
    } else if (++since_progress_ >= kRecordsBetweenProgress) {
        // Keep requests in flight moving while rows are read: curl only
        // transfers when it is called.
        since_progress_ = 0;
        if (in_flight()) {
            auto started = Clock::now();
            progress();
            network_time_ += Clock::now() - started;
        }
    }
}

void Delivery::progress() {
    if (should_stop_ && should_stop_()) {
        state_ = DeliveryState::kInterrupted;
        error_ = "the call was interrupted";
        return;
    }
    collect(-1);
}

// launch_ready() walks every queued record's key, so it runs only when an
// answer freed a slot or a key (or a paused batch may be due: see pump).

void Delivery::collect(int timeout_ms) {
    done_.clear();
    if (timeout_ms < 0) {
        transport_.advance(done_);
    } else {
        transport_.wait(timeout_ms, done_);
    }
    for (auto &[slot, response] : done_) {
        Queue::iterator batch = slots_[slot];
        slots_[slot] = queue_.end();
        handle(batch, response);
    }
    if (!done_.empty()) launch_ready();
}

void Delivery::index_keys(Batch &batch) { index_keys_of(batch.records, batch.keys); }

void Delivery::reject(Rejection &&rejection) {
    make_storable(rejection);
    (rejection.outcome == Outcome::kRejected ? stats_.rejected : stats_.not_sent)++;
    rejections_.push_back(std::move(rejection));
}

void Delivery::seal() {
    index_keys(building_);
    queue_.push_back(std::move(building_));
    building_ = Batch{};
    launch_ready();
    // Bounded memory: the batches in flight plus a few waiting.
    while (state_ == DeliveryState::kRunning && queue_.size() > concurrency_ + kMaxWaitingBatches)
        pump(50);
}

void Delivery::finish() {
    auto started = Clock::now();
    finish_sending();
    network_time_ += Clock::now() - started;
}

void Delivery::finish_sending() {
    if (!building_.records.empty() && state_ == DeliveryState::kRunning) {
        index_keys(building_);
        queue_.push_back(std::move(building_));
        building_ = Batch{};
    }
    while (state_ == DeliveryState::kRunning && !queue_.empty()) pump(50);
    // Stopped or failed: answers still on the way are collected, nothing is retried.
    while (state_ != DeliveryState::kInterrupted && in_flight()) pump(50);
    if (state_ == DeliveryState::kStopped || state_ == DeliveryState::kFailed) {
        for (Batch &b : queue_) {
            if (b.split) release_held(*b.split, Outcome::kNotSent, "not sent: " + error_);
            give_up(std::move(b), Outcome::kNotSent, "", "not sent: " + error_);
        }
        queue_.clear();
        give_up(std::move(building_), Outcome::kNotSent, "", "not sent: " + error_);
        building_ = Batch{};
    }
}

bool Delivery::in_flight() const {
    for (const auto &it : slots_)
        if (it != queue_.end()) return true;
    return false;
}

void Delivery::launch_ready() {
    if (state_ != DeliveryState::kRunning) return;
    if (std::find(slots_.begin(), slots_.end(), queue_.end()) == slots_.end()) return;  // all busy
    auto now = Clock::now();
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
        if (it->slot >= 0 || now < it->not_before) continue;
        // A batch waits while an earlier unfinished one holds one of its keys.
        bool blocked = false;
        for (auto earlier = queue_.begin(); earlier != it && !blocked; ++earlier)
            blocked = share_a_key(earlier->keys, it->keys);
        if (blocked) continue;
        auto free_slot = std::find(slots_.begin(), slots_.end(), queue_.end());
        if (free_slot == slots_.end()) return;  // every slot busy
        it->slot = static_cast<int>(free_slot - slots_.begin());
        *free_slot = it;
        format_.build(it->records, it->body);
        transport_.start(static_cast<size_t>(it->slot), url_, format_.content_type(), it->body);
        stats_.requests++;
        stats_.bytes_sent += it->body.size();
        if (it->tried) stats_.retries++;
        it->tried = true;
    }
}

void Delivery::pump(int timeout_ms) {
    if (should_stop_ && should_stop_()) {
        state_ = DeliveryState::kInterrupted;
        error_ = "the call was interrupted";
        return;
    }
    launch_ready();
    // Sleep no longer than until the next paused batch may go. Batches that
    // only wait for a slot or an earlier batch are woken by the answers.
    auto now = Clock::now();
    for (const Batch &b : queue_) {
        if (b.slot < 0 && b.not_before > now)
            timeout_ms = static_cast<int>(std::min<long>(timeout_ms, std::max(1L, millis_until(b.not_before))));
    }
    collect(timeout_ms);
}

void Delivery::requeue(Queue::iterator at, Batch &&batch) {
    index_keys(batch);
    batch.slot = -1;
    batch.tried = true;
    batch.body.clear();
    batch.body.shrink_to_fit();
    queue_.insert(at, std::move(batch));
}

void Delivery::handle(Queue::iterator it, const HttpResponse &response) {
    Batch batch = std::move(*it);
    auto at = queue_.erase(it);  // replacements go where the batch was
    batch.slot = -1;
    ResponseVerdict v = format_.classify(response);
    // A half leaves its split with its first answer (a retry starts afresh).
    std::shared_ptr<Split> family = std::move(batch.split);

    if (v.kind == ResponseKind::kAccepted) {
        accepted_any_ = true;
        stats_.sent += batch.records.size();
        for (Record &r : batch.records)
            if (!r.state_key.empty()) confirmed_.push_back({std::move(r.state_key), r.fingerprint, r.has_position, r.position});
        if (family) release_held(*family, Outcome::kRejected, family->held_reason);
        return;
    }
    if (state_ != DeliveryState::kRunning) {
        // The run is over: answers still arriving are not retried.
        give_up(std::move(batch), Outcome::kNotSent, "", "not sent: " + error_);
        if (family) release_held(*family, Outcome::kNotSent, "not sent: " + error_);
        return;
    }
    if (family) {
        // Safety net: both halves refused like their parent, and nothing of
        // this run accepted yet (which would prove key and request shape
        // good): the refusal is not about records, so bisecting on would
        // only send about two requests per record.
        bool alike = v.kind == ResponseKind::kRefusedWhole && v.error == family->refusal;
        if (alike && ++family->refused_alike == 2 && !accepted_any_) {
            std::string why = v.error + " (every part of a batch refused alike)";
            stop(DeliveryState::kStopped, why, StopReason::kRefused);
            give_up(std::move(batch), Outcome::kNotSent, "", "not sent: " + why);
            release_held(*family, Outcome::kNotSent, "not sent: " + why);
            return;
        }
        if (alike && family->refused_alike == 1 && !accepted_any_ && batch.records.size() == 1) {
            // Rejected only if the sibling proves the refusal was about this record.
            family->held_reason = "refused by Amplitude: " + v.error;
            family->held = std::make_unique<Batch>(std::move(batch));
            return;
        }
        if (v.kind == ResponseKind::kFatal)
            release_held(*family, Outcome::kNotSent, "not sent: " + v.error);
        else
            release_held(*family, Outcome::kRejected, family->held_reason);
    }
    switch (v.kind) {
        case ResponseKind::kAccepted:
            break;
        case ResponseKind::kRefusedSome: {
            std::vector<bool> refused(batch.records.size(), false);
            bool any = false;
            for (const RefusedIndex &r : v.refused) {
                if (r.index >= batch.records.size() || refused[r.index]) continue;
                refused[r.index] = any = true;
                Batch lone;
                lone.records.push_back(batch.records[r.index]);
                give_up(std::move(lone), Outcome::kRejected, r.field,
                        "refused by Amplitude: " + r.reason);
            }
            if (!any) {
                split(at, std::move(batch), v.error);  // the indices made no sense: bisect
                return;
            }
            Batch rest;
            for (size_t i = 0; i < batch.records.size(); ++i) {
                if (refused[i]) continue;
                rest.bytes += batch.records[i].wire_bytes;
                rest.records.push_back(std::move(batch.records[i]));
            }
            if (!rest.records.empty()) requeue(at, std::move(rest));
            return;
        }
        case ResponseKind::kRefusedWhole:
            if (batch.records.size() == 1) {
                give_up(std::move(batch), Outcome::kRejected, "", "refused by Amplitude: " + v.error);
            } else {
                split(at, std::move(batch), v.error);
            }
            return;
        case ResponseKind::kTooLarge:
            if (batch.records.size() == 1) {
                give_up(std::move(batch), Outcome::kRejected, "",
                        "refused by Amplitude: payload too large (HTTP 413) even alone");
            } else {
                // Later batches of the run stay at most this size.
                max_records_ = std::max<size_t>(1, std::min(max_records_, batch.records.size() / 2));
                split(at, std::move(batch));
            }
            return;
        case ResponseKind::kThrottled: {
            auto now = Clock::now();
            if (batch.first_failure == Clock::time_point{}) batch.first_failure = now;
            if (now - batch.first_failure >= std::chrono::milliseconds(policy_.max_retry_ms)) {
                give_up(std::move(batch), Outcome::kNotSent, "", "not sent: still throttled: " + v.error);
                stop(DeliveryState::kFailed, "gave up on throttled records: " + v.error);
                return;
            }
            if (v.project_throttled()) {
                batch.not_before = now + std::chrono::milliseconds(policy_.project_throttle_pause_ms);
                requeue(at, std::move(batch));
                return;
            }
            std::unordered_set<std::string> quota_users(v.quota_users.begin(), v.quota_users.end());
            std::unordered_set<std::string> quota_devices(v.quota_devices.begin(), v.quota_devices.end());
            std::unordered_set<std::string> paused_users(v.throttled_users.begin(), v.throttled_users.end());
            std::unordered_set<std::string> paused_devices(v.throttled_devices.begin(), v.throttled_devices.end());
            std::unordered_set<size_t> paused_indices(v.throttled_events.begin(), v.throttled_events.end());
            // Records of throttled IDs wait; the others go again at once. Only
            // later batches sharing a paused ID wait behind them. A record
            // that shares its ordering key with a paused one waits too, so a
            // device's records keep their order.
            auto over_quota = [&](const Record &r) {
                return (!r.user_id.empty() && quota_users.count(r.user_id)) ||
                       (!r.device_id.empty() && quota_devices.count(r.device_id));
            };
            std::unordered_set<std::string> paused_keys;
            for (size_t i = 0; i < batch.records.size(); ++i) {
                const Record &r = batch.records[i];
                if (over_quota(r)) continue;
                if (v.whole_batch_throttled || paused_indices.count(i) ||
                    (!r.user_id.empty() && paused_users.count(r.user_id)) ||
                    (!r.device_id.empty() && paused_devices.count(r.device_id)))
                    paused_keys.insert(r.ordering_key());
            }
            Batch now_batch, later;
            later.first_failure = batch.first_failure;
            later.not_before = now + std::chrono::milliseconds(policy_.throttle_pause_ms);
            for (size_t i = 0; i < batch.records.size(); ++i) {
                Record &r = batch.records[i];
                if (over_quota(r)) {
                    Batch lone;
                    lone.records.push_back(std::move(r));
                    // Not the record's fault, and over tomorrow: a later run sends it.
                    give_up(std::move(lone), Outcome::kNotSent, "",
                            "daily quota exceeded: Amplitude refuses more events for this ID today");
                    continue;
                }
                Batch &target = paused_keys.count(r.ordering_key()) ? later : now_batch;
                target.bytes += r.wire_bytes;
                target.records.push_back(std::move(r));
            }
            if (!now_batch.records.empty()) requeue(at, std::move(now_batch));
            if (!later.records.empty()) requeue(at, std::move(later));
            return;
        }
        case ResponseKind::kRetry:
            retry_later(at, std::move(batch), v.error);
            return;
        case ResponseKind::kFatal:
            give_up(std::move(batch), Outcome::kNotSent, "", "not sent: " + v.error);
            stop(DeliveryState::kStopped, v.error,
                 v.stop == StopReason::kNone ? StopReason::kRefused : v.stop);
            return;
    }
}

void Delivery::retry_later(Queue::iterator at, Batch &&batch, const std::string &error) {
    auto now = Clock::now();
    if (batch.attempts == 0) batch.first_failure = now;
    batch.attempts++;
    bool out_of_time = now - batch.first_failure >= std::chrono::milliseconds(policy_.max_retry_ms);
    if (batch.attempts >= policy_.max_attempts || out_of_time) {
        std::string why = "gave up after " + std::to_string(batch.attempts) + " attempts: " + error;
        give_up(std::move(batch), Outcome::kNotSent, "", "not sent: " + why);
        stop(DeliveryState::kFailed, why);
        return;
    }
    long backoff = policy_.backoff_base_ms;
    for (int i = 1; i < batch.attempts && backoff < policy_.backoff_cap_ms; ++i) backoff *= 2;
    backoff = std::min(backoff, policy_.backoff_cap_ms);
    // Equal jitter: half fixed, half random, so retries of many runs spread out.
    long delay = backoff / 2 + static_cast<long>(jitter_() % static_cast<unsigned long>(backoff / 2 + 1));
    batch.not_before = now + std::chrono::milliseconds(delay);
    requeue(at, std::move(batch));
}

void Delivery::split(Queue::iterator at, Batch &&batch, const std::string &refusal) {
    size_t half = batch.records.size() / 2;
    Batch first, second;
    if (!refusal.empty()) {
        first.split = std::make_shared<Split>();
        first.split->refusal = refusal;
        second.split = first.split;
    }
    for (size_t i = 0; i < batch.records.size(); ++i) {
        Batch &target = i < half ? first : second;
        target.bytes += batch.records[i].wire_bytes;
        target.records.push_back(std::move(batch.records[i]));
    }
    requeue(at, std::move(first));
    requeue(at, std::move(second));
}

void Delivery::give_up(Batch &&batch, Outcome outcome, const std::string &field,
                       const std::string &reason) {
    for (Record &r : batch.records) {
        Rejection rej;
        rej.record = std::move(r);
        rej.outcome = outcome;
        rej.field = field;
        rej.reason = reason;
        reject(std::move(rej));
    }
    batch.records.clear();
}

void Delivery::release_held(Split &split, Outcome outcome, const std::string &reason) {
    if (!split.held) return;
    std::unique_ptr<Batch> held = std::move(split.held);
    give_up(std::move(*held), outcome, "", reason);
}

void Delivery::stop(DeliveryState state, const std::string &error, StopReason reason) {
    if (state_ != DeliveryState::kRunning) return;
    state_ = state;
    error_ = error;
    if (state == DeliveryState::kStopped) stop_reason_ = reason;
}

}  // namespace amplitude_sync
