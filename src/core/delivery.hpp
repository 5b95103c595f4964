// The one delivery path every sending function uses: batching under
// Amplitude's limits, several requests in flight, and the response contract
// (partial refusals, splitting, throttling, retries) so that every record
// ends up sent, rejected with a reason, or reported as not sent.
//
// Ordering: Amplitude keeps the arrival order of one device's events only,
// so records go to lanes by a hash of their ordering key (device_id, else
// user_id, else the group). Each lane fills its own batches in query order
// and has at most one batch unfinished (in flight or waiting to retry);
// batches of different lanes share no device and go out concurrently. The
// queue keeps sealed batches in sealing order; a batch starts when it is the
// first of its lanes in the queue and a slot is free. A lane's batch is
// sealed when full; at the end of input (and whenever records must go) the
// partial batches of lanes with nothing unfinished are merged into as few
// requests as the limits allow, each in query order, so a run that fits in
// one request is one request in query order. A merged request belongs to
// all its lanes: their later batches wait for it.
//
// Pacing: Amplitude throttles each user_id and device_id above a rate over a
// window (30 events/s over ~30 s on /2/httpapi). A record enters a lane only
// while its IDs have allowance left in the window; the others wait, per
// ordering key and in order, while other keys flow. A 429 naming IDs moves
// their records (and their key's later records still queued) back to the
// held ones, paused; a project-wide 429 or the project's own rate cap holds
// every launch. Time comes from an injectable clock.
//
// Core file: no postgres.h. Interrupts arrive through the should_stop
// callback, polled at least every 50 ms while waiting.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "amplitude_response.hpp"
#include "call_options.hpp"
#include "http_transport.hpp"
#include "records.hpp"

namespace amplitude_sync {

// How records become a request body: prefix, records joined by a
// separator, suffix; and how Amplitude's answer to it is read.
class PayloadFormat {
public:
    virtual ~PayloadFormat() = default;
    virtual const char *content_type() const = 0;
    virtual size_t overhead_bytes() const = 0;    // prefix and suffix
    virtual size_t separator_bytes() const = 0;
    virtual size_t wire_size(const Record &record) const = 0;
    virtual void build(const std::vector<Record> &records, std::string &body) const = 0;
    virtual ResponseVerdict classify(const HttpResponse &response) const = 0;
};

// {"api_key":..,"events":[..],"options":{..}} for /2/httpapi and /batch.
class EventsFormat final : public PayloadFormat {
public:
    EventsFormat(const std::string &api_key, int min_id_length);
    const char *content_type() const override { return "application/json"; }
    size_t overhead_bytes() const override { return prefix_.size() + suffix_.size(); }
    size_t separator_bytes() const override { return 1; }
    size_t wire_size(const Record &record) const override { return record.json.size(); }
    void build(const std::vector<Record> &records, std::string &body) const override;
    ResponseVerdict classify(const HttpResponse &response) const override;

private:
    std::string api_key_;
    std::string prefix_, suffix_;
};

// api_key=..&identification=[..] (URL-encoded) for /identify and /groupidentify.
class IdentificationFormat final : public PayloadFormat {
public:
    explicit IdentificationFormat(const std::string &api_key);
    const char *content_type() const override { return "application/x-www-form-urlencoded"; }
    size_t overhead_bytes() const override { return prefix_.size() + 3; }
    size_t separator_bytes() const override { return 3; }  // %2C
    size_t wire_size(const Record &record) const override;
    void build(const std::vector<Record> &records, std::string &body) const override;
    ResponseVerdict classify(const HttpResponse &response) const override;

private:
    std::string api_key_;
    std::string prefix_;  // api_key=...&identification=%5B
};

struct DeliveryLimits {
    size_t max_records = 2000;       // 1024 for identify and group identify
    size_t max_bytes = 1000000 - 1;  // /2/httpapi: "< 1 MB"
    // Sum of the records' property_count per request, 0 for none: 1024 for
    // /groupidentify ("1024 properties per request"). A record over it alone
    // is the encoder's to refuse.
    size_t max_properties = 0;
    // Per-ID pacing (0: none): at most rate x window events of one user_id
    // or device_id within any window, counted until answered.
    double per_id_events_per_second = 0;
    long per_id_window_ms = 30000;
    // The project's own cap (0: unlimited), over any second.
    double max_events_per_second = 0;
};

// The limits of an endpoint: max_records per request (batch_size or the
// endpoint's maximum), its size limit and per-ID rate, and the project cap.
// rate_window_ms > 0 replaces the endpoint's window of per-ID rates (the
// rate stays the endpoint's).
DeliveryLimits delivery_limits(const Endpoint &endpoint, size_t max_records, double max_events_per_second = 0,
                               long rate_window_ms = 0);

struct RetryPolicy {
    int max_attempts = 8;              // per batch, for 5xx/timeouts/resets
    long max_retry_ms = 300000;        // per batch, from its first failure
    long backoff_base_ms = 500;        // doubles each attempt, with jitter
    long backoff_cap_ms = 30000;
    long throttle_pause_ms = 30000;    // throttled IDs: 30 s /2/httpapi, 15 s /batch
    long project_throttle_pause_ms = 60000;
};

struct DeliveryStats {
    uint64_t sent = 0;
    uint64_t rejected = 0;
    uint64_t not_sent = 0;
    uint64_t requests = 0;
    uint64_t retries = 0;  // requests that carried records already tried
    uint64_t bytes_sent = 0;
    // Time nothing was in flight because pacing held records back (per-ID
    // allowance, 429 pauses, the project cap).
    uint64_t pacing_wait_ms = 0;
    // Of it, the time only per-ID allowance or pauses held records back
    // (nothing held by the project's cap or a project-wide pause).
    uint64_t id_pacing_wait_ms = 0;
};

enum class DeliveryState {
    kRunning,
    kInterrupted,  // should_stop said so: the caller raises the cancel
    kStopped,      // Amplitude refused the requests (key, 403, ...): error(), stop_reason()
    kFailed,       // retry budget spent: error()
};

class Delivery {
public:
    using Clock = std::chrono::steady_clock;
    // now: the clock (tests pass a fake one that their transport advances).
    Delivery(const PayloadFormat &format, Transport &transport, std::string url,
             DeliveryLimits limits, RetryPolicy policy, size_t concurrency,
             std::function<bool()> should_stop, std::function<Clock::time_point()> now = nullptr);

    // The lane of an ordering key among lanes (one per slot).
    static size_t lane_of(const std::string &ordering_key, size_t lanes);

    // Queues a record; may wait for the network when the queue is full.
    void add(Record &&record);
    // A record refused before sending (by our own checks).
    void reject(Rejection &&rejection);
    // Sends what is queued and waits for every answer.
    void finish();

    DeliveryState state() const { return state_; }
    // Time spent building requests, moving them and waiting for answers.
    std::chrono::steady_clock::duration network_time() const { return network_time_; }
    const std::string &error() const { return error_; }
    // kStopped: whether Amplitude refused the API key or the requests.
    StopReason stop_reason() const { return stop_reason_; }
    const DeliveryStats &stats() const { return stats_; }
    // Rejections since the last call; the caller stores and clears them.
    std::vector<Rejection> &rejections() { return rejections_; }
    // Confirmed records that carry a state_key, since the last call; the
    // caller stores and clears them.
    std::vector<ConfirmedRecord> &confirmed() { return confirmed_; }

private:
    struct Batch;
    // The two halves of a batch refused whole. When both are refused with
    // their parent's message before Amplitude accepted anything, the
    // refusal does not depend on the records: the run stops instead of
    // bisecting down to single records (2N requests for N records).
    struct Split {
        std::string refusal;   // the parent's message
        int refused_alike = 0; // halves refused with it so far
        // A single-record half refused alike while its sibling is pending:
        // rejected or not sent depending on the sibling's answer.
        std::unique_ptr<Batch> held;
        std::string held_reason;
    };
    struct Batch {
        std::vector<Record> records;
        size_t bytes = 0;  // sum of record sizes
        size_t properties = 0;  // sum of property counts, while the batch is built
        int attempts = 0;  // failed attempts (5xx, timeouts)
        bool tried = false;
        bool reserved = false;  // its records hold per-ID allowance until answered
        // Its lanes: one, or several for the tails merged at the end of input.
        std::vector<size_t> lanes;
        int slot = -1;     // transport slot while in flight
        Clock::time_point not_before{};
        Clock::time_point first_failure{};
        std::string body;  // while in flight
        std::shared_ptr<Split> split;  // set on the halves of a batch refused whole
    };
    using Queue = std::list<Batch>;
    // Events of one ID counted in the window: admitted ones until answered,
    // then by the time of their answer (Amplitude saw them before it).
    struct IdWindow {
        uint32_t reserved = 0;
        uint32_t counted = 0;  // answered within the window (see answered_)
        Clock::time_point paused_until{};  // after a 429 naming the ID
    };
    using Windows = std::unordered_map<std::string, IdWindow>;
    struct HeldRecord {
        Record record;
        bool tried;  // sent before (a 429): its next request counts as a retry
    };
    // Records of one ordering key waiting for allowance or a pause, in order.
    struct Held {
        std::deque<HeldRecord> records;
        Clock::time_point not_before{};
    };

    bool fits(const Batch &batch, const Record &record) const;
    // Puts an admitted record into its lane's batch; true when that sealed one.
    bool place(Record &&record, bool tried);
    void seal(size_t lane);
    // The partial batches of lanes with nothing waiting out a backoff,
    // merged into as few requests as the limits allow (one when they fit),
    // each in query order; a merged request belongs to all its lanes.
    void seal_idle_lanes();
    bool fits_size(size_t records, size_t bytes, size_t properties) const;
    bool shares_lane(const Batch &a, const std::vector<size_t> &lanes) const;
    void finish_sending();
    void pump(int timeout_ms, bool flush = false);
    // Per-ID pacing.
    bool admit(const Record &record, Clock::time_point now);
    void unreserve(const Record &record);
    void count_answered(const std::vector<Record> &records, Clock::time_point now);
    void prune(Clock::time_point now);
    void sweep_windows(Clock::time_point now);
    void hold(Record &&record, bool tried);
    // Moves the records of keys (this batch's, then the later ones of its
    // lane still queued or being filled) back to the held ones, paused.
    void hold_keys(Queue::iterator later, const std::vector<size_t> &lanes, std::vector<Record> &&records,
                   const std::unordered_set<std::string> &keys, Clock::time_point until);
    void release_held_records(Clock::time_point now);
    bool project_allows(size_t records, Clock::time_point now);
    void progress();  // moves requests in flight along without waiting
    void collect(int timeout_ms);  // waits (not at all if < 0) for answers and handles them
    void launch_ready();
    void handle(Queue::iterator batch, const HttpResponse &response);
    // Puts batch (or what is left of it) back in the queue at position at.
    void requeue(Queue::iterator at, const std::vector<size_t> &lanes, Batch &&batch);
    void throttled(Queue::iterator at, Batch &&batch, const ResponseVerdict &verdict);
    void retry_later(Queue::iterator at, Batch &&batch, const std::string &error);
    void split(Queue::iterator at, Batch &&batch, const std::string &refusal = "");
    // Decides a held half once its sibling's fate is known.
    void release_held(Split &split, Outcome outcome, const std::string &reason);
    void give_up(Batch &&batch, Outcome outcome, const std::string &field,
                 const std::string &reason);
    void stop(DeliveryState state, const std::string &error, StopReason reason = StopReason::kNone);
    bool in_flight() const;

    std::function<Clock::time_point()> now_;
    const PayloadFormat &format_;
    Transport &transport_;
    std::string url_;
    DeliveryLimits limits_;
    RetryPolicy policy_;
    std::function<bool()> should_stop_;
    size_t concurrency_;
    size_t lanes_;
    std::vector<Batch> building_;           // per lane
    Queue queue_;                           // sealing order; finished batches leave it
    std::vector<Queue::iterator> slots_;    // in-flight batch per slot, or queue_.end()
    size_t max_records_;  // lowered after a 413
    // Pacing state.
    bool pacing_ = false;
    uint32_t id_budget_ = 0;  // events of one ID per window
    Clock::duration id_window_{};
    Windows users_, devices_;
    // The IDs of each answer, oldest first: their counts leave the window
    // together (map nodes stay put until swept, and a swept ID counts none).
    std::deque<std::pair<Clock::time_point, std::vector<IdWindow *>>> answered_;
    size_t sweep_at_ = 0;
    std::unordered_map<std::string, Held> held_;  // by ordering key
    size_t held_bytes_ = 0;
    std::unordered_map<std::string, Clock::time_point> throttled_since_;  // by ordering key
    Clock::time_point project_paused_until_{};
    std::deque<std::pair<Clock::time_point, size_t>> project_log_;  // launches in the last second
    size_t project_counted_ = 0;
    bool project_capped_ = false;  // the cap held a launch back
    Clock::duration pacing_wait_{};
    Clock::duration id_pacing_wait_{};
    std::vector<char> lane_seen_;
    size_t since_progress_ = 0;
    Clock::duration network_time_{};
    DeliveryState state_ = DeliveryState::kRunning;
    std::string error_;
    StopReason stop_reason_ = StopReason::kNone;
    bool accepted_any_ = false;  // Amplitude accepted a request of this run
    std::string first_refusal_;  // of a whole batch (not a half), before any acceptance
    DeliveryStats stats_;
    std::vector<Rejection> rejections_;
    std::vector<ConfirmedRecord> confirmed_;
    std::minstd_rand jitter_;
    std::vector<std::pair<size_t, HttpResponse>> done_;
};

}  // namespace amplitude_sync
