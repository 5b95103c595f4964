#include "delivery.hpp"

#include <algorithm>
#include <unordered_set>

#include "json_text.hpp"

namespace amplitude_sync {

using Clock = std::chrono::steady_clock;

namespace {

// Sealed batches a lane may hold besides the one in flight: enough to keep
// the connection busy, few enough that memory stays bounded.
constexpr size_t kMaxReadyPerLane = 2;

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

Delivery::Delivery(const PayloadFormat &format, Transport &transport, std::string url,
                   DeliveryLimits limits, RetryPolicy policy, size_t lanes,
                   std::function<bool()> should_stop)
    : format_(format),
      transport_(transport),
      url_(std::move(url)),
      limits_(limits),
      policy_(policy),
      should_stop_(std::move(should_stop)),
      lanes_(lanes ? lanes : 1),
      max_records_(limits.max_records),
      jitter_(static_cast<unsigned>(Clock::now().time_since_epoch().count())) {}

bool Delivery::fits(const Batch &batch, size_t record_bytes) const {
    size_t commas = batch.records.size();
    return batch.records.size() < max_records_ &&
           format_.overhead_bytes() + batch.bytes + commas + record_bytes <= limits_.max_bytes;
}

void Delivery::add(Record &&record) {
    if (state_ != DeliveryState::kRunning) {
        Batch lone;
        lone.records.push_back(std::move(record));
        give_up(std::move(lone), Outcome::kNotSent, "", "not sent: " + error_);
        return;
    }
    if (format_.overhead_bytes() + record.json.size() > limits_.max_bytes) {
        size_t size = record.json.size();
        Batch lone;
        lone.records.push_back(std::move(record));
        give_up(std::move(lone), Outcome::kRejected, "",
                "record is " + std::to_string(size) + " bytes, more than one request may carry (" +
                    std::to_string(limits_.max_bytes) + " bytes)");
        return;
    }
    Lane &lane = lanes_[std::hash<std::string>{}(record.ordering_key()) % lanes_.size()];
    if (!lane.building.records.empty() && !fits(lane.building, record.json.size())) seal(lane);
    lane.building.bytes += record.json.size();
    lane.building.records.push_back(std::move(record));
    if (lane.building.records.size() >= max_records_) seal(lane);
}

void Delivery::reject(Rejection &&rejection) {
    (rejection.outcome == Outcome::kRejected ? stats_.rejected : stats_.not_sent)++;
    rejections_.push_back(std::move(rejection));
}

void Delivery::seal(Lane &lane) {
    lane.ready.push_back(std::move(lane.building));
    lane.building = Batch{};
    launch_ready();
    while (state_ == DeliveryState::kRunning && lane.ready.size() > kMaxReadyPerLane) pump(50);
}

void Delivery::finish() {
    for (Lane &lane : lanes_) {
        if (!lane.building.records.empty()) {
            lane.ready.push_back(std::move(lane.building));
            lane.building = Batch{};
        }
    }
    while (state_ != DeliveryState::kInterrupted && !idle()) pump(50);
    if (state_ == DeliveryState::kStopped || state_ == DeliveryState::kFailed) drain_unsent();
}

bool Delivery::idle() const {
    for (const Lane &lane : lanes_) {
        if (lane.in_flight) return false;
        if (state_ == DeliveryState::kRunning && !lane.ready.empty()) return false;
    }
    return true;
}

void Delivery::launch_ready() {
    if (state_ != DeliveryState::kRunning) return;
    for (size_t i = 0; i < lanes_.size(); ++i) {
        Lane &lane = lanes_[i];
        if (lane.in_flight || lane.ready.empty()) continue;
        if (Clock::now() < lane.ready.front().not_before) continue;
        lane.sending = std::move(lane.ready.front());
        lane.ready.pop_front();
        format_.build(lane.sending.records, lane.body);
        transport_.start(i, url_, format_.content_type(), lane.body);
        lane.in_flight = true;
        stats_.requests++;
        stats_.bytes_sent += lane.body.size();
        if (lane.sending.tried) stats_.retries++;
        lane.sending.tried = true;
    }
}

void Delivery::pump(int timeout_ms) {
    if (should_stop_ && should_stop_()) {
        state_ = DeliveryState::kInterrupted;
        return;
    }
    launch_ready();
    // Sleep no longer than until the next paused batch may go.
    for (const Lane &lane : lanes_) {
        if (!lane.in_flight && !lane.ready.empty())
            timeout_ms = static_cast<int>(std::min<long>(timeout_ms, millis_until(lane.ready.front().not_before)));
    }
    done_.clear();
    transport_.wait(timeout_ms, done_);
    for (auto &[lane_index, response] : done_) handle(lane_index, response);
    launch_ready();
}

void Delivery::handle(size_t lane_index, const HttpResponse &response) {
    Lane &lane = lanes_[lane_index];
    lane.in_flight = false;
    Batch batch = std::move(lane.sending);
    lane.sending = Batch{};
    ResponseVerdict v = format_.classify(response);

    if (v.kind == ResponseKind::kAccepted) {
        stats_.sent += batch.records.size();
        return;
    }
    if (state_ != DeliveryState::kRunning) {
        // The run is over: answers still arriving are not retried.
        give_up(std::move(batch), Outcome::kNotSent, "", "not sent: " + error_);
        return;
    }
    switch (v.kind) {
        case ResponseKind::kAccepted:
            break;
        case ResponseKind::kRefusedSome: {
            std::vector<bool> refused(batch.records.size(), false);
            Batch rest;
            rest.tried = true;
            for (const RefusedIndex &r : v.refused) {
                if (r.index >= batch.records.size() || refused[r.index]) continue;
                refused[r.index] = true;
                Batch lone;
                lone.records.push_back(batch.records[r.index]);
                give_up(std::move(lone), Outcome::kRejected, r.field,
                        "refused by Amplitude: " + r.reason);
            }
            if (std::none_of(refused.begin(), refused.end(), [](bool b) { return b; })) {
                split_front(lane, std::move(batch));  // indices made no sense: bisect
                return;
            }
            for (size_t i = 0; i < batch.records.size(); ++i) {
                if (refused[i]) continue;
                rest.bytes += batch.records[i].json.size();
                rest.records.push_back(std::move(batch.records[i]));
            }
            if (!rest.records.empty()) lane.ready.push_front(std::move(rest));
            return;
        }
        case ResponseKind::kRefusedWhole:
            if (batch.records.size() == 1) {
                give_up(std::move(batch), Outcome::kRejected, "", "refused by Amplitude: " + v.error);
            } else {
                split_front(lane, std::move(batch));
            }
            return;
        case ResponseKind::kTooLarge:
            if (batch.records.size() == 1) {
                give_up(std::move(batch), Outcome::kRejected, "",
                        "refused by Amplitude: payload too large (HTTP 413) even alone");
            } else {
                // Later batches of the run stay at most this size.
                max_records_ = std::max<size_t>(1, std::min(max_records_, batch.records.size() / 2));
                split_front(lane, std::move(batch));
            }
            return;
        case ResponseKind::kThrottled: {
            if (batch.first_failure == Clock::time_point{}) batch.first_failure = Clock::now();
            if (millis_until(batch.first_failure + std::chrono::milliseconds(policy_.max_retry_ms)) == 0) {
                give_up(std::move(batch), Outcome::kNotSent, "", "not sent: still throttled: " + v.error);
                stop(DeliveryState::kFailed, "gave up on throttled records: " + v.error);
                return;
            }
            if (v.project_throttled()) {
                batch.not_before = Clock::now() + std::chrono::milliseconds(policy_.project_throttle_pause_ms);
                lane.ready.push_front(std::move(batch));
                return;
            }
            std::unordered_set<std::string> quota_users(v.quota_users.begin(), v.quota_users.end());
            std::unordered_set<std::string> quota_devices(v.quota_devices.begin(), v.quota_devices.end());
            std::unordered_set<std::string> paused_users(v.throttled_users.begin(), v.throttled_users.end());
            std::unordered_set<std::string> paused_devices(v.throttled_devices.begin(), v.throttled_devices.end());
            std::unordered_set<size_t> paused_indices(v.throttled_events.begin(), v.throttled_events.end());
            Batch now, later;
            now.tried = later.tried = true;
            later.first_failure = batch.first_failure;
            later.not_before = Clock::now() + std::chrono::milliseconds(policy_.throttle_pause_ms);
            for (size_t i = 0; i < batch.records.size(); ++i) {
                Record &r = batch.records[i];
                if ((!r.user_id.empty() && quota_users.count(r.user_id)) ||
                    (!r.device_id.empty() && quota_devices.count(r.device_id))) {
                    Batch lone;
                    lone.records.push_back(std::move(r));
                    give_up(std::move(lone), Outcome::kRejected, "",
                            "daily quota exceeded: Amplitude refuses more events for this ID today");
                    continue;
                }
                bool paused = paused_indices.count(i) || paused_users.count(r.user_id) ||
                              paused_devices.count(r.device_id);
                Batch &target = paused ? later : now;
                target.bytes += r.json.size();
                target.records.push_back(std::move(r));
            }
            if (!later.records.empty()) lane.ready.push_front(std::move(later));
            if (!now.records.empty()) lane.ready.push_front(std::move(now));
            return;
        }
        case ResponseKind::kRetry:
            retry_later(lane, std::move(batch), v.error);
            return;
        case ResponseKind::kFatal:
            give_up(std::move(batch), Outcome::kNotSent, "", "not sent: " + v.error);
            stop(DeliveryState::kStopped, v.error);
            return;
    }
}

void Delivery::retry_later(Lane &lane, Batch &&batch, const std::string &error) {
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
    lane.ready.push_front(std::move(batch));
}

void Delivery::split_front(Lane &lane, Batch &&batch) {
    size_t half = batch.records.size() / 2;
    Batch first, second;
    first.tried = second.tried = true;
    for (size_t i = 0; i < batch.records.size(); ++i) {
        Batch &target = i < half ? first : second;
        target.bytes += batch.records[i].json.size();
        target.records.push_back(std::move(batch.records[i]));
    }
    lane.ready.push_front(std::move(second));
    lane.ready.push_front(std::move(first));
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
}

void Delivery::stop(DeliveryState state, const std::string &error) {
    if (state_ != DeliveryState::kRunning) return;
    state_ = state;
    error_ = error;
}

void Delivery::drain_unsent() {
    for (Lane &lane : lanes_) {
        for (Batch &b : lane.ready) give_up(std::move(b), Outcome::kNotSent, "", "not sent: " + error_);
        lane.ready.clear();
        give_up(std::move(lane.building), Outcome::kNotSent, "", "not sent: " + error_);
        lane.building = Batch{};
    }
}

}  // namespace amplitude_sync
