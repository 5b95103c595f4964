#include "delivery.hpp"

#include <algorithm>
#include <cmath>

#include "json_text.hpp"

namespace amplitude_sync {

namespace {

// Records added between two turns of the transport while rows are read.
constexpr size_t kRecordsBetweenProgress = 8;

// Records held back by pacing that the run keeps in memory before reading
// waits for them to go.
constexpr size_t kMaxHeldBytes = 64u << 20;

// Fewer ID windows than this are never swept.
constexpr size_t kMinSweep = 1 << 16;

long millis_between(Delivery::Clock::time_point from, Delivery::Clock::time_point to) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count();
    return ms > 0 ? static_cast<long>(ms) : 0;
}

}  // namespace

DeliveryLimits delivery_limits(const Endpoint &endpoint, size_t max_records, double max_events_per_second,
                               long rate_window_ms) {
    DeliveryLimits l;
    l.max_records = max_records;
    l.max_bytes = static_cast<size_t>(endpoint.max_bytes);
    l.max_properties = endpoint.max_properties;
    l.per_id_events_per_second = endpoint.per_id_events_per_second;
    l.per_id_window_ms = rate_window_ms > 0 ? rate_window_ms : endpoint.per_id_window_ms;
    l.max_events_per_second = max_events_per_second;
    return l;
}

size_t Delivery::lane_of(const std::string &ordering_key, size_t lanes) {
    return lanes > 1 ? std::hash<std::string>{}(ordering_key) % lanes : 0;
}

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
                   std::function<bool()> should_stop, std::function<Clock::time_point()> now)
    : now_(now ? std::move(now) : [] { return Clock::now(); }),
      format_(format),
      transport_(transport),
      url_(std::move(url)),
      limits_(limits),
      policy_(policy),
      should_stop_(std::move(should_stop)),
      concurrency_(concurrency ? concurrency : 1),
      lanes_(concurrency_),
      max_records_(limits.max_records),
      jitter_(static_cast<unsigned>(now_().time_since_epoch().count())) {
    slots_.assign(concurrency_, queue_.end());
    building_.resize(lanes_);
    lane_seen_.resize(lanes_);
    double budget = std::floor(limits.per_id_events_per_second * limits.per_id_window_ms / 1000.0);
    pacing_ = budget >= 1;
    id_budget_ = pacing_ ? static_cast<uint32_t>(std::min(budget, 1e9)) : 0;
    id_window_ = std::chrono::milliseconds(limits.per_id_window_ms);
    sweep_at_ = kMinSweep;
    // A request never carries more than the cap allows in one second.
    if (limits.max_events_per_second >= 1)
        max_records_ = std::min(max_records_, static_cast<size_t>(limits.max_events_per_second));
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
    bool sealed = false;
    if (!held_.empty() && held_.count(record.ordering_key())) {
        hold(std::move(record), false);  // behind its key's earlier records
    } else if (pacing_ && !admit(record, now_())) {
        hold(std::move(record), false);
    } else {
        sealed = place(std::move(record), false);
    }
    if (sealed) {
        auto started = now_();
        launch_ready();
        // Bounded memory: about one batch in flight and one waiting per lane,
        // and a bounded amount held back by pacing.
        while (state_ == DeliveryState::kRunning && queue_.size() > 2 * concurrency_) pump(50);
        network_time_ += now_() - started;
    } else if (++since_progress_ >= kRecordsBetweenProgress) {
        // Keep requests in flight moving while rows are read: curl only
        // transfers when it is called.
        since_progress_ = 0;
        if (in_flight() || !held_.empty()) {
            auto started = now_();
            progress();
            network_time_ += now_() - started;
        }
    }
    if (held_bytes_ > kMaxHeldBytes) {
        auto started = now_();
        while (state_ == DeliveryState::kRunning && held_bytes_ > kMaxHeldBytes) pump(50, true);
        network_time_ += now_() - started;
    }
}

bool Delivery::place(Record &&record, bool tried) {
    size_t lane = lane_of(record.ordering_key(), lanes_);
    bool sealed = false;
    if (!building_[lane].records.empty() && !fits(building_[lane], record)) {
        seal(lane);
        sealed = true;
    }
    Batch &b = building_[lane];
    if (b.records.empty()) b.records.reserve(max_records_);
    b.bytes += record.wire_bytes;
    b.properties += record.property_count;
    b.tried |= tried;
    b.records.push_back(std::move(record));
    if (b.records.size() >= max_records_) {
        seal(lane);
        sealed = true;
    }
    return sealed;
}

void Delivery::seal(size_t lane) {
    Batch &b = building_[lane];
    b.lanes.assign(1, lane);
    b.reserved = pacing_;
    queue_.push_back(std::move(b));
    building_[lane] = Batch{};
}

bool Delivery::fits_size(size_t records, size_t bytes, size_t properties) const {
    size_t separators = records > 0 ? (records - 1) * format_.separator_bytes() : 0;
    return records <= max_records_ && format_.overhead_bytes() + bytes + separators <= limits_.max_bytes &&
           (limits_.max_properties == 0 || properties <= limits_.max_properties);
}

bool Delivery::shares_lane(const Batch &a, const std::vector<size_t> &lanes) const {
    for (size_t l : a.lanes)
        if (std::find(lanes.begin(), lanes.end(), l) != lanes.end()) return true;
    return false;
}

void Delivery::seal_idle_lanes() {
    // A lane whose batches are in flight or ready to go joins the merge (the
    // merged request waits for them: about one answer); a lane with a batch
    // waiting out a backoff keeps its tail for later.
    auto now = now_();
    std::fill(lane_seen_.begin(), lane_seen_.end(), 0);
    for (const Batch &b : queue_)
        if (b.slot < 0 && now < b.not_before)
            for (size_t l : b.lanes) lane_seen_[l] = 1;
    std::vector<size_t> idle;
    for (size_t lane = 0; lane < lanes_; ++lane)
        if (!lane_seen_[lane] && !building_[lane].records.empty()) idle.push_back(lane);
    if (idle.empty()) return;
    if (idle.size() == 1) {
        seal(idle.front());
        return;
    }
    // Two ways to merge the tails (each fits a request alone):
    // - whole tails packed first fit, largest first: the requests share no
    //   key and go out concurrently;
    // - all their records in query order, cut where a request is full: the
    //   fewest requests, but consecutive ones that share a lane go one
    //   after the other (a lane split between them).
    // The first when it needs no more requests than the second.
    std::vector<size_t> by_size = idle;
    std::stable_sort(by_size.begin(), by_size.end(), [this](size_t a, size_t b) {
        return building_[a].records.size() > building_[b].records.size();
    });
    struct Size {
        size_t records = 0, bytes = 0, properties = 0;
    };
    std::vector<std::vector<size_t>> packed;  // lanes per request
    std::vector<Size> sizes;
    for (size_t lane : by_size) {
        const Batch &tail = building_[lane];
        size_t k = 0;
        while (k < sizes.size() && !fits_size(sizes[k].records + tail.records.size(), sizes[k].bytes + tail.bytes,
                                              sizes[k].properties + tail.properties))
            ++k;
        if (k == sizes.size()) {
            sizes.emplace_back();
            packed.emplace_back();
        }
        sizes[k].records += tail.records.size();
        sizes[k].bytes += tail.bytes;
        sizes[k].properties += tail.properties;
        packed[k].push_back(lane);
    }
    std::vector<Record> all;
    bool tried = false;
    for (size_t lane : idle) {
        tried |= building_[lane].tried;
        for (Record &r : building_[lane].records) all.push_back(std::move(r));
    }
    for (size_t lane : idle) building_[lane] = Batch{};
    std::stable_sort(all.begin(), all.end(),
                     [](const Record &a, const Record &b) { return a.row_number < b.row_number; });
    std::vector<Batch> out;
    size_t cut_count = 1;
    Size cut;
    for (const Record &r : all) {
        if (cut.records > 0 && !fits_size(cut.records + 1, cut.bytes + r.wire_bytes, cut.properties + r.property_count)) {
            ++cut_count;
            cut = Size{};
        }
        cut.records++;
        cut.bytes += r.wire_bytes;
        cut.properties += r.property_count;
    }
    auto add_lane = [](Batch &b, size_t lane) {
        if (std::find(b.lanes.begin(), b.lanes.end(), lane) == b.lanes.end()) b.lanes.push_back(lane);
    };
    if (packed.size() <= cut_count) {
        std::vector<size_t> bin_of(lanes_, 0);
        for (size_t k = 0; k < packed.size(); ++k)
            for (size_t lane : packed[k]) bin_of[lane] = k;
        out.resize(packed.size());
        for (size_t k = 0; k < packed.size(); ++k) out[k].lanes = packed[k];
        for (Record &r : all) {
            Batch &b = out[bin_of[lane_of(r.ordering_key(), lanes_)]];
            b.bytes += r.wire_bytes;
            b.properties += r.property_count;
            b.records.push_back(std::move(r));
        }
    } else {
        out.emplace_back();
        for (Record &r : all) {
            if (!out.back().records.empty() && !fits(out.back(), r)) out.emplace_back();
            Batch &b = out.back();
            add_lane(b, lane_of(r.ordering_key(), lanes_));
            b.bytes += r.wire_bytes;
            b.properties += r.property_count;
            b.records.push_back(std::move(r));
        }
    }
    for (Batch &b : out) {
        std::sort(b.lanes.begin(), b.lanes.end());
        b.tried = tried;
        b.reserved = pacing_;
        queue_.push_back(std::move(b));
    }
}

void Delivery::progress() {
    if (should_stop_ && should_stop_()) {
        state_ = DeliveryState::kInterrupted;
        error_ = "the call was interrupted";
        return;
    }
    if (!held_.empty()) {
        release_held_records(now_());
        launch_ready();
    }
    collect(-1);
}

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

void Delivery::reject(Rejection &&rejection) {
    make_storable(rejection);
    (rejection.outcome == Outcome::kRejected ? stats_.rejected : stats_.not_sent)++;
    rejections_.push_back(std::move(rejection));
}

void Delivery::finish() {
    auto started = now_();
    finish_sending();
    network_time_ += now_() - started;
    stats_.pacing_wait_ms = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(pacing_wait_).count());
    stats_.id_pacing_wait_ms = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(id_pacing_wait_).count());
}

void Delivery::finish_sending() {
    auto building_left = [this] {
        for (const Batch &b : building_)
            if (!b.records.empty()) return true;
        return false;
    };
    while (state_ == DeliveryState::kRunning && (!queue_.empty() || !held_.empty() || building_left()))
        pump(50, true);
    // Stopped or failed: answers still on the way are collected, nothing is retried.
    while (state_ != DeliveryState::kInterrupted && in_flight()) pump(50);
    if (state_ == DeliveryState::kStopped || state_ == DeliveryState::kFailed) {
        const std::string why = "not sent: " + error_;
        for (Batch &b : queue_) {
            if (b.split) release_held(*b.split, Outcome::kNotSent, why);
            give_up(std::move(b), Outcome::kNotSent, "", why);
        }
        queue_.clear();
        for (Batch &b : building_) give_up(std::move(b), Outcome::kNotSent, "", why);
        // Held records in query order.
        std::vector<Record> held;
        for (auto &[key, h] : held_)
            for (HeldRecord &r : h.records) held.push_back(std::move(r.record));
        held_.clear();
        held_bytes_ = 0;
        std::sort(held.begin(), held.end(),
                  [](const Record &a, const Record &b) { return a.row_number < b.row_number; });
        Batch rest;
        rest.records = std::move(held);
        give_up(std::move(rest), Outcome::kNotSent, "", why);
    }
}

bool Delivery::in_flight() const {
    for (const auto &it : slots_)
        if (it != queue_.end()) return true;
    return false;
}

bool Delivery::project_allows(size_t records, Clock::time_point now) {
    if (limits_.max_events_per_second < 1) return true;
    while (!project_log_.empty() && now - project_log_.front().first >= std::chrono::seconds(1)) {
        project_counted_ -= project_log_.front().second;
        project_log_.pop_front();
    }
    return project_counted_ == 0 || project_counted_ + records <= limits_.max_events_per_second;
}

void Delivery::launch_ready() {
    project_capped_ = false;
    if (state_ != DeliveryState::kRunning) return;
    if (std::find(slots_.begin(), slots_.end(), queue_.end()) == slots_.end()) return;  // all busy
    auto now = now_();
    if (now < project_paused_until_) return;
    std::fill(lane_seen_.begin(), lane_seen_.end(), 0);
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
        // Only the first unfinished batch of its lanes may go: the lanes' order.
        bool first = true;
        for (size_t l : it->lanes) {
            if (lane_seen_[l]) first = false;
            lane_seen_[l] = 1;
        }
        if (!first || it->slot >= 0 || now < it->not_before) continue;
        auto free_slot = std::find(slots_.begin(), slots_.end(), queue_.end());
        if (free_slot == slots_.end()) return;  // every slot busy
        if (!project_allows(it->records.size(), now)) {
            project_capped_ = true;
            return;
        }
        if (limits_.max_events_per_second >= 1) {
            project_log_.emplace_back(now, it->records.size());
            project_counted_ += it->records.size();
        }
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

void Delivery::pump(int timeout_ms, bool flush) {
    if (should_stop_ && should_stop_()) {
        state_ = DeliveryState::kInterrupted;
        error_ = "the call was interrupted";
        return;
    }
    auto now = now_();
    release_held_records(now);
    if (flush) seal_idle_lanes();
    launch_ready();
    // Sleep no longer than until the next paused batch, held key or project
    // pause may go. Batches that only wait for a slot or their lane are
    // woken by the answers; held records waiting for allowance are looked
    // at again within timeout_ms.
    auto until = [&](Clock::time_point t) {
        if (t > now) timeout_ms = static_cast<int>(std::min<long>(timeout_ms, std::max(1L, millis_between(now, t))));
    };
    for (const Batch &b : queue_)
        if (b.slot < 0) until(b.not_before);
    for (const auto &[key, h] : held_) until(h.not_before);
    until(project_paused_until_);
    if (project_capped_ && !project_log_.empty()) until(project_log_.front().first + std::chrono::seconds(1));
    bool project_held = now < project_paused_until_ || project_capped_;
    bool paced = !in_flight() && (!held_.empty() || project_held);
    collect(timeout_ms);
    if (paced) {
        pacing_wait_ += now_() - now;
        if (!project_held) id_pacing_wait_ += now_() - now;
    }
}

// ---------------------------------------------------------------- pacing

void Delivery::prune(Clock::time_point now) {
    while (!answered_.empty() && now - answered_.front().first >= id_window_) {
        for (IdWindow *w : answered_.front().second) w->counted--;
        answered_.pop_front();
    }
}

// Takes one event of allowance from each of the record's IDs, if all have it.
bool Delivery::admit(const Record &r, Clock::time_point now) {
    prune(now);
    IdWindow *user = r.user_id.empty() ? nullptr : &users_[r.user_id];
    IdWindow *device = r.device_id.empty() ? nullptr : &devices_[r.device_id];
    auto open = [&](const IdWindow *w) {
        return !w || (now >= w->paused_until && w->reserved + w->counted < id_budget_);
    };
    if (!open(user) || !open(device)) return false;
    if (user) user->reserved++;
    if (device) device->reserved++;
    if (users_.size() + devices_.size() > sweep_at_) sweep_windows(now);
    return true;
}

void Delivery::unreserve(const Record &r) {
    if (!pacing_) return;
    if (!r.user_id.empty()) users_[r.user_id].reserved--;
    if (!r.device_id.empty()) devices_[r.device_id].reserved--;
}

void Delivery::count_answered(const std::vector<Record> &records, Clock::time_point now) {
    std::vector<IdWindow *> ids;
    ids.reserve(2 * records.size());
    auto count = [&](Windows &windows, const std::string &id) {
        if (id.empty()) return;
        IdWindow &w = windows[id];
        w.reserved--;
        w.counted++;
        ids.push_back(&w);
    };
    for (const Record &r : records) {
        count(users_, r.user_id);
        count(devices_, r.device_id);
    }
    answered_.emplace_back(now, std::move(ids));
}

void Delivery::sweep_windows(Clock::time_point now) {
    prune(now);
    for (Windows *windows : {&users_, &devices_}) {
        for (auto it = windows->begin(); it != windows->end();) {
            bool idle = it->second.reserved == 0 && it->second.counted == 0 && now >= it->second.paused_until;
            it = idle ? windows->erase(it) : std::next(it);
        }
    }
    sweep_at_ = std::max(kMinSweep, 2 * (users_.size() + devices_.size()));
}

void Delivery::hold(Record &&record, bool tried) {
    held_bytes_ += record.wire_bytes + sizeof(HeldRecord);
    std::string key = record.ordering_key();
    held_[key].records.push_back({std::move(record), tried});
}

void Delivery::hold_keys(Queue::iterator later, const std::vector<size_t> &lanes, std::vector<Record> &&records,
                         const std::unordered_set<std::string> &keys, Clock::time_point until) {
    std::unordered_map<std::string, std::vector<HeldRecord>> moved;
    for (Record &r : records) moved[r.ordering_key()].push_back({std::move(r), true});
    // Take a batch's records of those keys out, keeping the rest in order.
    auto take = [&](Batch &b) {
        size_t kept = 0;
        for (size_t i = 0; i < b.records.size(); ++i) {
            Record &r = b.records[i];
            if (keys.count(r.ordering_key())) {
                b.bytes -= r.wire_bytes;
                if (b.reserved) unreserve(r);  // admitted again when released
                std::string key = r.ordering_key();
                moved[key].push_back({std::move(r), b.tried});
            } else {
                if (kept != i) b.records[kept] = std::move(r);
                ++kept;
            }
        }
        b.records.resize(kept);
    };
    // The lanes' later batches are all still queued: one batch per lane is unfinished.
    for (auto it = later; it != queue_.end();) {
        if (shares_lane(*it, lanes) && it->slot < 0 && !it->split) {
            take(*it);
            if (it->records.empty()) {
                it = queue_.erase(it);
                continue;
            }
        }
        ++it;
    }
    for (size_t lane : lanes) take(building_[lane]);
    for (auto &[key, list] : moved) {
        Held &h = held_[key];
        for (const HeldRecord &r : list) held_bytes_ += r.record.wire_bytes + sizeof(HeldRecord);
        h.records.insert(h.records.begin(), std::make_move_iterator(list.begin()),
                         std::make_move_iterator(list.end()));
        h.not_before = std::max(h.not_before, until);
    }
}

void Delivery::release_held_records(Clock::time_point now) {
    if (held_.empty() || state_ != DeliveryState::kRunning) return;
    // Due keys merged by row number, so released records keep query order.
    using Entry = std::pair<uint64_t, Held *>;
    std::vector<Entry> heap;
    for (auto &[key, h] : held_)
        if (now >= h.not_before) heap.emplace_back(h.records.front().record.row_number, &h);
    auto later_first = [](const Entry &a, const Entry &b) { return a.first > b.first; };
    std::make_heap(heap.begin(), heap.end(), later_first);
    bool any = false;
    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), later_first);
        Held *h = heap.back().second;
        heap.pop_back();
        HeldRecord &front = h->records.front();
        if (pacing_ && !admit(front.record, now)) continue;  // the key waits on
        held_bytes_ -= front.record.wire_bytes + sizeof(HeldRecord);
        place(std::move(front.record), front.tried);
        h->records.pop_front();
        any = true;
        if (!h->records.empty()) {
            heap.emplace_back(h->records.front().record.row_number, h);
            std::push_heap(heap.begin(), heap.end(), later_first);
        }
    }
    if (!any) return;
    for (auto it = held_.begin(); it != held_.end();)
        it = it->second.records.empty() ? held_.erase(it) : std::next(it);
}

// --------------------------------------------------------------- answers

void Delivery::requeue(Queue::iterator at, const std::vector<size_t> &lanes, Batch &&batch) {
    if (&batch.lanes != &lanes) batch.lanes = lanes;
    batch.slot = -1;
    batch.tried = true;
    batch.reserved = false;
    batch.body.clear();
    batch.body.shrink_to_fit();
    queue_.insert(at, std::move(batch));
}

void Delivery::handle(Queue::iterator it, const HttpResponse &response) {
    Batch batch = std::move(*it);
    auto at = queue_.erase(it);  // replacements go where the batch was
    batch.slot = -1;
    const std::vector<size_t> lane = batch.lanes;
    auto now = now_();
    if (batch.reserved) {
        count_answered(batch.records, now);
        batch.reserved = false;
    }
    ResponseVerdict v = format_.classify(response);
    // A half leaves its split with its first answer (a retry starts afresh).
    std::shared_ptr<Split> family = std::move(batch.split);

    if (v.kind == ResponseKind::kAccepted) {
        accepted_any_ = true;
        stats_.sent += batch.records.size();
        for (Record &r : batch.records) {
            if (!throttled_since_.empty()) throttled_since_.erase(r.ordering_key());
            if (!r.state_key.empty())
                confirmed_.push_back({std::move(r.state_key), r.fingerprint, r.has_position, r.position});
        }
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
            std::string why = v.error + " (every request refused alike)";
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
            if (!rest.records.empty()) requeue(at, lane, std::move(rest));
            return;
        }
        case ResponseKind::kRefusedWhole:
            if (!family && !accepted_any_ && batch.records.size() > 1) {
                // The same net across lanes: two batches refused alike
                // before anything was accepted.
                if (first_refusal_.empty()) {
                    first_refusal_ = v.error;
                } else if (v.error == first_refusal_) {
                    std::string why = v.error + " (every request refused alike)";
                    stop(DeliveryState::kStopped, why, StopReason::kRefused);
                    give_up(std::move(batch), Outcome::kNotSent, "", "not sent: " + why);
                    return;
                }
            }
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
        case ResponseKind::kThrottled:
            throttled(at, std::move(batch), v);
            return;
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

void Delivery::throttled(Queue::iterator at, Batch &&batch, const ResponseVerdict &v) {
    const std::vector<size_t> lane = batch.lanes;
    auto now = now_();
    auto give_up_throttled = [&] {
        give_up(std::move(batch), Outcome::kNotSent, "", "not sent: still throttled: " + v.error);
        stop(DeliveryState::kFailed, "gave up on throttled records: " + v.error);
    };
    if (v.project_throttled()) {
        // The whole project waits; the batch keeps its place.
        if (batch.first_failure == Clock::time_point{}) batch.first_failure = now;
        if (now - batch.first_failure >= std::chrono::milliseconds(policy_.max_retry_ms)) return give_up_throttled();
        project_paused_until_ =
            std::max(project_paused_until_, now + std::chrono::milliseconds(policy_.project_throttle_pause_ms));
        requeue(at, lane, std::move(batch));
        return;
    }
    std::unordered_set<std::string> quota_users(v.quota_users.begin(), v.quota_users.end());
    std::unordered_set<std::string> quota_devices(v.quota_devices.begin(), v.quota_devices.end());
    std::unordered_set<std::string> paused_users(v.throttled_users.begin(), v.throttled_users.end());
    std::unordered_set<std::string> paused_devices(v.throttled_devices.begin(), v.throttled_devices.end());
    std::unordered_set<size_t> paused_indices(v.throttled_events.begin(), v.throttled_events.end());
    // Records of throttled IDs are held, paused, with their key's later
    // records; the others go again at once.
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
    // Throttled again after max_retry_ms (at once when it is 0): pacing did
    // not get these through.
    bool expired = false;
    for (const std::string &key : paused_keys) {
        auto since = throttled_since_.emplace(key, now).first;
        if (now - since->second >= std::chrono::milliseconds(policy_.max_retry_ms)) expired = true;
    }
    if (expired) return give_up_throttled();
    auto until = now + std::chrono::milliseconds(policy_.throttle_pause_ms);
    if (pacing_) {
        // Their other keys (a user's other devices) wait too.
        for (const std::string &id : paused_users) users_[id].paused_until = until;
        for (const std::string &id : paused_devices) devices_[id].paused_until = until;
    }
    Batch now_batch;
    std::vector<Record> paused;
    for (size_t i = 0; i < batch.records.size(); ++i) {
        Record &r = batch.records[i];
        if (over_quota(r)) {
            Batch lone;
            lone.records.push_back(std::move(r));
            // Not the record's fault, and over tomorrow: a later run sends it.
            give_up(std::move(lone), Outcome::kNotSent, "",
                    "daily quota exceeded: Amplitude refuses more events for this ID today");
        } else if (paused_keys.count(r.ordering_key())) {
            paused.push_back(std::move(r));
        } else {
            now_batch.bytes += r.wire_bytes;
            now_batch.records.push_back(std::move(r));
        }
    }
    if (!now_batch.records.empty()) requeue(at, lane, std::move(now_batch));
    if (!paused_keys.empty()) hold_keys(at, lane, std::move(paused), paused_keys, until);
}

void Delivery::retry_later(Queue::iterator at, Batch &&batch, const std::string &error) {
    auto now = now_();
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
    const std::vector<size_t> lanes = batch.lanes;
    requeue(at, lanes, std::move(batch));
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
    requeue(at, batch.lanes, std::move(first));
    requeue(at, batch.lanes, std::move(second));
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
