// Unit tests for src/core/delivery: batching, ordering and concurrency, and
// how Delivery reacts to each kind of answer. A fake Transport records every
// request (parsed with nlohmann/json) and answers from a script or a function,
// so each test states exactly which rows each request carried, in what order.
#include "delivery.hpp"

#include "identify_encoder.hpp"
#include "json_text.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

using namespace amplitude_sync;
using Clock = std::chrono::steady_clock;
using Rows = std::vector<uint64_t>;

namespace {

const std::string kApiKey = "test-api-key-0123456789abcdef";
const std::string kUrl = "https://api2.amplitude.test/2/httpapi";

// ------------------------------------------------------------- fake network

struct Request {
    size_t index = 0;  // 0-based, in the order requests were started
    size_t slot = 0;   // the transport slot it was started on
    std::string url, content_type, body;
    nlohmann::json json;
    Rows rows;                         // event_properties.n of each event, in order
    std::vector<std::string> keys;     // each event's ordering key (device_id, else user_id)
    Clock::time_point started;
    size_t answered_before = 0;        // answers given before this request started
    size_t in_flight_before = 0;       // requests in flight when it started
};

using Responder = std::function<HttpResponse(const Request &)>;

// Decodes one application/x-www-form-urlencoded value strictly: %XX with
// two hex digits, '+' as a space; anything else fails the test.
std::string UrlDecode(const std::string &s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%') {
            if (i + 2 >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i + 1])) ||
                !std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
                ADD_FAILURE() << "bad escape in " << s.substr(i, 3);
                break;
            }
            out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16)));
            i += 2;
        } else {
            out.push_back(s[i] == '+' ? ' ' : s[i]);
        }
    }
    return out;
}

// "api_key=..&identification=.." as {"api_key": key, "identification": [..]}.
nlohmann::json ParseForm(const std::string &body) {
    size_t amp = body.find('&');
    EXPECT_NE(amp, std::string::npos) << body;
    EXPECT_EQ(body.find('&', amp + 1), std::string::npos) << "more than two fields";
    EXPECT_EQ(body.rfind("api_key=", 0), 0u) << body.substr(0, 40);
    const std::string second = "identification=";
    EXPECT_EQ(body.compare(amp + 1, second.size(), second), 0);
    nlohmann::json form;
    form["api_key"] = UrlDecode(body.substr(8, amp - 8));
    form["identification"] = nlohmann::json::parse(UrlDecode(body.substr(amp + 1 + second.size())));
    return form;
}

class FakeTransport : public Transport {
public:
    explicit FakeTransport(Responder responder) : responder_(std::move(responder)) {}

    void start(size_t slot, const std::string &url, const std::string &content_type,
               const std::string &body) override {
        if (!busy_.insert(slot).second) ++overlapping_starts;
        Request r;
        r.index = requests.size();
        r.slot = slot;
        r.url = url;
        r.content_type = content_type;
        r.body = body;
        // A form body (identify APIs) is decoded to {"api_key":..,"identification":[..]}.
        bool form = content_type == "application/x-www-form-urlencoded";
        r.json = form ? ParseForm(body) : nlohmann::json::parse(body);
        for (const nlohmann::json &event : r.json.at(form ? "identification" : "events")) {
            r.rows.push_back(form ? event.at("user_properties").at("$set").at("n").get<uint64_t>()
                                  : event.at("event_properties").at("n").get<uint64_t>());
            r.keys.push_back(event.contains("device_id") ? event["device_id"].get<std::string>()
                                                         : event["user_id"].get<std::string>());
        }
        r.started = Now();
        r.answered_before = answer_order.size();
        r.in_flight_before = pending_.size();
        max_in_flight = std::max(max_in_flight, pending_.size() + 1);
        requests.push_back(std::move(r));
        pending_.push_back(requests.size() - 1);
    }

    // Answers everything in flight at once, in start order; sleeps like a
    // real wait when nothing is in flight. With answer_delay, a request's
    // answer arrives that long after it started: until then wait sleeps (at
    // most timeout_ms) and returns with nothing, like a real transport.
    void wait(int timeout_ms, std::vector<std::pair<size_t, HttpResponse>> &done) override {
        wait_timeouts.push_back(timeout_ms);
        const auto timeout = std::chrono::milliseconds(std::max(timeout_ms, 0));
        if (virtual_now) {
            // Simulated time: jump to the first answer or the timeout.
            Clock::time_point until = *virtual_now + timeout;
            for (size_t index : pending_) until = std::min(until, requests[index].started + answer_delay);
            until = std::max(until, *virtual_now);
            busy_slot_time += (until - *virtual_now) * static_cast<long>(pending_.size());
            *virtual_now = until;
        } else if (pending_.empty()) {
            std::this_thread::sleep_for(timeout);
            return;
        }
        if (pending_.empty()) return;
        if (answer_delay.count() > 0 && !virtual_now) {
            Clock::time_point first_ready = Clock::time_point::max();
            for (size_t index : pending_)
                first_ready = std::min(first_ready, requests[index].started + answer_delay);
            auto now = Clock::now();
            if (now < first_ready)
                std::this_thread::sleep_for(std::min<Clock::duration>(first_ready - now, timeout));
        }
        std::vector<size_t> not_ready;
        auto now = Now();
        for (size_t index : pending_) {
            const Request &r = requests[index];
            if (now < r.started + answer_delay) {
                not_ready.push_back(index);
                continue;
            }
            busy_.erase(r.slot);
            HttpResponse answer = responder_(r);
            statuses.resize(requests.size());
            statuses[index] = answer.status;
            answer_position.resize(requests.size(), SIZE_MAX);
            answer_position[index] = answer_order.size();
            answer_order.push_back(index);
            done.emplace_back(r.slot, std::move(answer));
        }
        pending_ = std::move(not_ready);
    }

    // True when request i had been answered before request j started.
    bool AnsweredBeforeStart(size_t i, size_t j) const {
        return i < answer_position.size() && answer_position[i] < requests[j].answered_before;
    }

    std::vector<Request> requests;
    std::vector<int> statuses;           // status answered to requests[i]
    std::vector<size_t> answer_order;    // request indices in the order answered
    std::vector<size_t> answer_position; // requests[i]'s place in answer_order
    size_t max_in_flight = 0;
    int overlapping_starts = 0;  // a start on a slot whose request was not answered
    std::chrono::milliseconds answer_delay{0};  // how long after its start a request is answered
    std::vector<int> wait_timeouts;             // timeout_ms of every wait() call
    // Simulated time (the Delivery's clock), advanced by wait() instead of sleeping.
    Clock::time_point *virtual_now = nullptr;
    Clock::duration busy_slot_time{};  // simulated: sum over time of requests in flight

    Clock::time_point Now() const { return virtual_now ? *virtual_now : Clock::now(); }

private:
    Responder responder_;
    std::set<size_t> busy_;
    std::vector<size_t> pending_;
};

HttpResponse Answer(int status, std::string body) {
    HttpResponse r;
    r.status = status;
    r.body = std::move(body);
    return r;
}

HttpResponse Ok() { return Answer(200, R"({"code":200,"events_ingested":1})"); }

HttpResponse TransportError(const std::string &error) {
    HttpResponse r;
    r.transport_error = error;
    return r;
}

// Answers from a list, then 200 for everything after it.
Responder Script(std::vector<HttpResponse> answers) {
    auto queue = std::make_shared<std::deque<HttpResponse>>(answers.begin(), answers.end());
    return [queue](const Request &) {
        if (queue->empty()) return Ok();
        HttpResponse r = queue->front();
        queue->pop_front();
        return r;
    };
}

Responder Always(HttpResponse answer) {
    return [answer](const Request &) { return answer; };
}

bool Contains(const Rows &rows, uint64_t n) {
    return std::find(rows.begin(), rows.end(), n) != rows.end();
}

// ---------------------------------------------------------------- records

// An event with property n = row number, for user (or device) key; padded
// with a "pad" property to exactly `size` bytes when size is given.
Record MakeRecord(uint64_t n, const std::string &user, size_t size = 0,
                  const std::string &device = "") {
    Record r;
    r.row_number = n;
    r.user_id = user;
    r.device_id = device;
    r.event_type = "e";
    r.insert_id = "id-" + std::to_string(n);
    std::string head = R"({"event_type":"e","user_id":")" + user + "\"";
    if (!device.empty()) head += R"(,"device_id":")" + device + "\"";
    head += R"(,"insert_id":")" + r.insert_id + R"(","event_properties":{"n":)" + std::to_string(n);
    r.json = head + "}}";
    if (size) {
        std::string padded = head + R"(,"pad":"")" + "}}";
        EXPECT_GE(size, padded.size()) << "record size too small for the test";
        r.json = head + R"(,"pad":")" + std::string(size - padded.size(), 'x') + "\"}}";
        EXPECT_EQ(r.json.size(), size);
    }
    return r;
}

// An identification with property n = row number, for user (or device)
// key; padded so that its URL-encoded size is exactly wire_size when given.
Record MakeIdentification(uint64_t n, const std::string &user, size_t wire_size = 0,
                          const std::string &device = "") {
    Record r;
    r.row_number = n;
    r.user_id = user;
    r.device_id = device;
    std::string head = R"({"user_id":")" + user + "\"";
    if (!device.empty()) head += R"(,"device_id":")" + device + "\"";
    head += R"(,"user_properties":{"$set":{"n":)" + std::to_string(n);
    r.json = head + "}}}";
    if (wire_size) {
        std::string padded = head + R"(,"pad":"")" + "}}}";
        EXPECT_GE(wire_size, url_encoded_size(padded)) << "record size too small for the test";
        r.json = head + R"(,"pad":")" + std::string(wire_size - url_encoded_size(padded), 'x') + "\"}}}";
        EXPECT_EQ(url_encoded_size(r.json), wire_size);
    }
    return r;
}

RetryPolicy FastPolicy() {
    RetryPolicy p;
    p.max_attempts = 4;
    p.max_retry_ms = 10000;
    p.backoff_base_ms = 1;
    p.backoff_cap_ms = 2;
    p.throttle_pause_ms = 5;
    p.project_throttle_pause_ms = 5;
    return p;
}

DeliveryLimits Limits(size_t max_records, size_t max_bytes = 1000000 - 1) {
    DeliveryLimits l;
    l.max_records = max_records;
    l.max_bytes = max_bytes;
    return l;
}

// The identify APIs' key in these tests needs URL-encoding.
const std::string kFormApiKey = "form+key/0123456789=abc def";
const std::string kIdentifyUrl = "https://api2.amplitude.test/identify";

template <class Format>
Format MakeFormat();
template <>
EventsFormat MakeFormat<EventsFormat>() { return EventsFormat(kApiKey, 5); }
template <>
IdentificationFormat MakeFormat<IdentificationFormat>() { return IdentificationFormat(kFormApiKey); }

// One Delivery with its format and fake transport. should_stop also trips
// after 5 s so a stuck test fails (state kInterrupted) instead of hanging.
template <class Format>
struct BasicHarness {
    static constexpr bool kForm = std::is_same_v<Format, IdentificationFormat>;

    explicit BasicHarness(Responder responder, DeliveryLimits limits = Limits(2000),
                          RetryPolicy policy = FastPolicy(), size_t concurrency = 1,
                          std::function<bool()> stop = nullptr)
        : format(MakeFormat<Format>()),
          transport(std::move(responder)),
          deadline(Clock::now() + std::chrono::seconds(5)),
          delivery(format, transport, kForm ? kIdentifyUrl : kUrl, limits, policy, concurrency,
                   [this, stop] { return (stop && stop()) || Clock::now() > deadline; }) {}

    void AddRows(uint64_t first, uint64_t last, const std::string &user = "user-1") {
        for (uint64_t n = first; n <= last; ++n)
            delivery.add(kForm ? MakeIdentification(n, user) : MakeRecord(n, user));
    }
    // Rows each request carried, in request order.
    std::vector<Rows> RequestRows() const {
        std::vector<Rows> out;
        for (const Request &r : transport.requests) out.push_back(r.rows);
        return out;
    }
    // Row numbers of the rejections with this outcome, in report order.
    Rows RejectedRows(Outcome outcome) {
        Rows out;
        for (const Rejection &r : delivery.rejections())
            if (r.outcome == outcome) out.push_back(r.record.row_number);
        return out;
    }
    const Rejection *RejectionFor(uint64_t row) {
        for (const Rejection &r : delivery.rejections())
            if (r.record.row_number == row) return &r;
        return nullptr;
    }

    Format format;
    FakeTransport transport;
    Clock::time_point deadline;
    Delivery delivery;
};

using Harness = BasicHarness<EventsFormat>;
using FormHarness = BasicHarness<IdentificationFormat>;

Rows Range(uint64_t first, uint64_t last) {
    Rows out;
    for (uint64_t n = first; n <= last; ++n) out.push_back(n);
    return out;
}

// count keys "prefix-N" whose lanes among `lanes` are all different (same:
// all the same lane), so a test does not depend on the hash.
std::vector<std::string> KeysInLanes(size_t count, size_t lanes, bool same, const std::string &prefix = "user") {
    std::vector<std::string> keys;
    std::set<size_t> used;
    for (int n = 0; keys.size() < count; ++n) {
        std::string key = prefix + "-" + std::to_string(n);
        size_t lane = Delivery::lane_of(key, lanes);
        if (same ? (!keys.empty() && lane != *used.begin()) : used.count(lane)) continue;
        used.insert(lane);
        keys.push_back(key);
    }
    return keys;
}

long MillisBetween(Clock::time_point a, Clock::time_point b) {
    return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(b - a).count());
}

}  // namespace

// ============================================================ EventsFormat

TEST(EventsFormat, BuildsTheHttpApiBody) {
    EventsFormat format("KEY", 5);
    Record a, b;
    a.json = R"({"a":1})";
    b.json = R"({"b":2})";
    std::string body = "stale";
    format.build({a, b}, body);
    EXPECT_EQ(body, R"({"api_key":"KEY","events":[{"a":1},{"b":2}]})");
    EXPECT_EQ(format.overhead_bytes(), body.size() - a.json.size() - b.json.size() - 1);
    EXPECT_STREQ(format.content_type(), "application/json");
}

TEST(EventsFormat, SendsMinIdLengthOptionOnlyWhenNotTheDefault) {
    Record a;
    a.json = "{}";
    std::string body;
    EventsFormat(R"(k"ey)", 3).build({a}, body);
    EXPECT_EQ(body, R"({"api_key":"k\"ey","events":[{}],"options":{"min_id_length":3}})");
    EventsFormat(R"(k"ey)", 5).build({a}, body);
    EXPECT_EQ(body, R"({"api_key":"k\"ey","events":[{}]})");
}

TEST(EventsFormat, ClassifiesWithItsApiKeyRedacted) {
    EventsFormat format("KEY-123", 5);
    ResponseVerdict v = format.classify(Answer(400, R"({"code":400,"error":"Invalid API key: KEY-123"})"));
    EXPECT_EQ(v.kind, ResponseKind::kFatal);
    EXPECT_EQ(v.error, "Invalid API key: [redacted]");
}

// ================================================================ batching

TEST(DeliveryBatching, FiveThousandRecordsMakeThreeRequestsOfAtMost2000) {
    Harness h(Always(Ok()));
    for (uint64_t n = 1; n <= 5000; ++n) h.delivery.add(MakeRecord(n, "user-" + std::to_string(n % 10)));
    h.delivery.finish();

    ASSERT_EQ(h.transport.requests.size(), 3u);
    EXPECT_EQ(h.transport.requests[0].rows, Range(1, 2000));
    EXPECT_EQ(h.transport.requests[1].rows, Range(2001, 4000));
    EXPECT_EQ(h.transport.requests[2].rows, Range(4001, 5000));
    size_t bytes = 0;
    for (const Request &r : h.transport.requests) {
        EXPECT_EQ(r.url, kUrl);
        EXPECT_EQ(r.content_type, "application/json");
        EXPECT_EQ(r.json["api_key"], kApiKey);
        EXPECT_FALSE(r.json.contains("options"));
        bytes += r.body.size();
    }
    EXPECT_EQ(h.delivery.state(), DeliveryState::kRunning);
    EXPECT_EQ(h.delivery.stats().sent, 5000u);
    EXPECT_EQ(h.delivery.stats().requests, 3u);
    EXPECT_EQ(h.delivery.stats().retries, 0u);
    EXPECT_EQ(h.delivery.stats().rejected, 0u);
    EXPECT_EQ(h.delivery.stats().not_sent, 0u);
    EXPECT_EQ(h.delivery.stats().bytes_sent, bytes);
    EXPECT_TRUE(h.delivery.rejections().empty());
}

TEST(DeliveryBatching, RecordCountLimitIsExact) {
    Harness h(Always(Ok()), Limits(3));
    h.AddRows(1, 7);
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3}, {4, 5, 6}, {7}}));
}

TEST(DeliveryBatching, ByteLimitFillsRequestsUpToExactlyMaxBytes) {
    const size_t overhead = EventsFormat(kApiKey, 5).overhead_bytes();
    const size_t max_bytes = overhead + 3 * 100 + 2;  // three 100-byte records and two commas
    Harness h(Always(Ok()), Limits(2000, max_bytes));
    for (uint64_t n = 1; n <= 10; ++n) h.delivery.add(MakeRecord(n, "user-1", 100));
    h.delivery.finish();

    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3}, {4, 5, 6}, {7, 8, 9}, {10}}));
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(h.transport.requests[i].body.size(), max_bytes);
    EXPECT_EQ(h.delivery.stats().sent, 10u);
}

TEST(DeliveryBatching, OneByteLessMeansOneRecordLess) {
    const size_t overhead = EventsFormat(kApiKey, 5).overhead_bytes();
    Harness h(Always(Ok()), Limits(2000, overhead + 3 * 100 + 1));
    for (uint64_t n = 1; n <= 5; ++n) h.delivery.add(MakeRecord(n, "user-1", 100));
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2}, {3, 4}, {5}}));
    for (const Request &r : h.transport.requests) EXPECT_LE(r.body.size(), overhead + 3 * 100 + 1);
}

TEST(DeliveryBatching, RecordLargerThanAnyRequestIsRejected) {
    const size_t overhead = EventsFormat(kApiKey, 5).overhead_bytes();
    const size_t max_bytes = overhead + 99;
    Harness h(Always(Ok()), Limits(2000, max_bytes));
    h.delivery.add(MakeRecord(1, "user-1", 100));
    h.delivery.add(MakeRecord(2, "user-1", 99));
    h.delivery.finish();

    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{2}}));
    EXPECT_EQ(h.RejectedRows(Outcome::kRejected), (Rows{1}));
    EXPECT_EQ(h.RejectionFor(1)->reason,
              "record is 100 bytes, more than one request may carry (" + std::to_string(max_bytes) +
                  " bytes)");
    EXPECT_EQ(h.delivery.stats().sent, 1u);
    EXPECT_EQ(h.delivery.stats().rejected, 1u);
}

TEST(DeliveryBatching, EncoderRejectionsAreCountedAndPassedOn) {
    Harness h(Always(Ok()));
    Rejection refused;
    refused.record.row_number = 5;
    refused.reason = "event_type is missing";
    Rejection unsent;
    unsent.record.row_number = 6;
    unsent.outcome = Outcome::kNotSent;
    h.delivery.reject(std::move(refused));
    h.delivery.reject(std::move(unsent));
    h.delivery.finish();
    EXPECT_EQ(h.delivery.stats().rejected, 1u);
    EXPECT_EQ(h.delivery.stats().not_sent, 1u);
    EXPECT_EQ(h.delivery.stats().requests, 0u);
    ASSERT_EQ(h.delivery.rejections().size(), 2u);
    EXPECT_EQ(h.delivery.rejections()[0].reason, "event_type is missing");
}

// The run log stores every rejection's texts: whatever our checks or
// Amplitude's answers put in them must be storable (no invalid UTF-8, no NUL).
TEST(DeliveryBatching, RejectionsAreMadeStorable) {
    Harness h(Always(Ok()));
    Rejection refused;
    refused.record.row_number = 5;
    refused.record.user_id = "ab\xff";
    refused.reason = "user_id \"ab\xff\" is shorter than 5 characters";
    h.delivery.reject(std::move(refused));
    h.delivery.finish();
    ASSERT_EQ(h.delivery.rejections().size(), 1u);
    EXPECT_EQ(h.delivery.rejections()[0].reason, "user_id \"ab\\xff\" is shorter than 5 characters");
    EXPECT_EQ(h.delivery.rejections()[0].record.user_id, "ab\\xff");
}

TEST(DeliveryRefusals, FieldNamedByAmplitudeWithANulIsStorable) {
    Harness h(Script({Answer(400, R"({"code":400,"error":"Invalid field values on some events",
                                       "events_with_invalid_fields":{"ti\u0000me":[0]}})")}));
    h.AddRows(1, 2);
    h.delivery.finish();
    const Rejection *r = h.RejectionFor(1);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->field, "ti\\x00me");
    EXPECT_EQ(r->reason, "refused by Amplitude: Invalid field values on some events (field \"ti\\x00me\")");
}

// =================================================== ordering, concurrency

TEST(DeliveryOrdering, BatchesOfALaneFillInQueryOrderWhateverTheKey) {
    std::vector<std::string> keys = KeysInLanes(2, 4, true);
    Harness h(Always(Ok()), Limits(3), FastPolicy(), 4);
    for (uint64_t n = 1; n <= 7; ++n) h.delivery.add(MakeRecord(n, keys[n % 2]));
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3}, {4, 5, 6}, {7}}));
    EXPECT_EQ(h.transport.max_in_flight, 1u);  // one lane: one request at a time
}

TEST(DeliveryOrdering, KeysOfDifferentLanesFillTheirOwnBatches) {
    std::vector<std::string> keys = KeysInLanes(2, 4, false);
    Harness h(Always(Ok()), Limits(3), FastPolicy(), 4);
    for (uint64_t n = 1; n <= 7; ++n) h.delivery.add(MakeRecord(n, keys[(n + 1) % 2]));
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 3, 5}, {2, 4, 6}, {7}}));
}

TEST(DeliveryOrdering, ARunThatFitsOneRequestIsOneRequestInQueryOrder) {
    // Keys spread over every lane, far fewer records than a request holds:
    // the lanes' partial batches are merged at the end of input.
    std::vector<std::string> keys = KeysInLanes(4, 4, false);
    Harness h(Always(Ok()), Limits(2000), FastPolicy(), 4);
    for (uint64_t n = 1; n <= 10; ++n) h.delivery.add(MakeRecord(n, keys[n % 4]));
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{Range(1, 10)}));
    EXPECT_EQ(h.delivery.stats().requests, 1u);
    EXPECT_EQ(h.delivery.stats().sent, 10u);
}

TEST(DeliveryOrdering, PartialBatchesMergeIntoFewRequestsThatShareNoKey) {
    // Four lanes with two records each, requests of at most 4: whole lane
    // tails are packed two by two, so the two requests share no key and go
    // concurrently, each in query order.
    std::vector<std::string> keys = KeysInLanes(4, 4, false);
    Harness h(Always(Ok()), Limits(4), FastPolicy(), 4);
    for (uint64_t n = 1; n <= 8; ++n) h.delivery.add(MakeRecord(n, keys[n % 4]));
    h.delivery.finish();
    std::vector<Rows> sent = h.RequestRows();
    ASSERT_EQ(sent.size(), 2u);
    std::set<std::string> first_keys(h.transport.requests[0].keys.begin(), h.transport.requests[0].keys.end());
    for (const std::string &k : h.transport.requests[1].keys) EXPECT_EQ(first_keys.count(k), 0u) << k;
    for (const Rows &rows : sent) {
        EXPECT_EQ(rows.size(), 4u);
        EXPECT_TRUE(std::is_sorted(rows.begin(), rows.end()));
    }
    EXPECT_EQ(h.transport.max_in_flight, 2u);
    EXPECT_EQ(h.delivery.stats().sent, 8u);
}

TEST(DeliveryOrdering, TailsThatWholeWouldNeedMoreRequestsGoInQueryOrderChunks) {
    // Four lanes with three records each, requests of at most 4: whole tails
    // would need four requests, query order needs three. The chunks share
    // keys, so each waits for the one before it.
    std::vector<std::string> keys = KeysInLanes(4, 4, false);
    Harness h(Always(Ok()), Limits(4), FastPolicy(), 4);
    for (uint64_t n = 1; n <= 12; ++n) h.delivery.add(MakeRecord(n, keys[n % 4]));
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{Range(1, 4), Range(5, 8), Range(9, 12)}));
    EXPECT_TRUE(h.transport.AnsweredBeforeStart(0, 1));
    EXPECT_TRUE(h.transport.AnsweredBeforeStart(1, 2));
    EXPECT_EQ(h.delivery.stats().sent, 12u);
}

TEST(DeliveryOrdering, AMergedTailWaitsForTheEarlierBatchesOfItsLanes) {
    // Lane of keys[0]: a full batch (rows 1-2) in flight at the end of
    // input, refused once with 503. Its tail (row 5) and the other lane's
    // (row 3) merge into one request, which goes after rows 1-2 were
    // accepted: keys[0]'s order holds.
    std::vector<std::string> keys = KeysInLanes(2, 2, false);
    Harness h(Script({Answer(503, "busy")}), Limits(2), FastPolicy(), 2);
    h.delivery.add(MakeRecord(1, keys[0]));
    h.delivery.add(MakeRecord(2, keys[0]));
    h.delivery.add(MakeRecord(3, keys[1]));
    h.delivery.add(MakeRecord(5, keys[0]));
    h.delivery.finish();
    ASSERT_EQ(h.delivery.stats().sent, 4u);
    ASSERT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2}, {1, 2}, {3, 5}}));
    EXPECT_TRUE(h.transport.AnsweredBeforeStart(1, 2));
}

TEST(DeliveryOrdering, BatchesWithoutSharedKeysGoConcurrently) {
    std::vector<std::string> keys = KeysInLanes(2, 2, false);
    Harness h(Always(Ok()), Limits(2), FastPolicy(), 2);
    h.AddRows(1, 2, keys[0]);
    h.AddRows(3, 4, keys[1]);
    h.AddRows(5, 6, keys[0]);  // must wait for rows 1-2
    h.AddRows(7, 8, keys[1]);  // must wait for rows 3-4
    h.delivery.finish();

    const auto &req = h.transport.requests;
    ASSERT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2}, {3, 4}, {5, 6}, {7, 8}}));
    EXPECT_EQ(req[1].answered_before, 0u);  // started while rows 1-2 were in flight
    EXPECT_EQ(req[1].in_flight_before, 1u);
    EXPECT_NE(req[0].slot, req[1].slot);
    EXPECT_TRUE(h.transport.AnsweredBeforeStart(0, 2));
    EXPECT_EQ(h.transport.max_in_flight, 2u);
    EXPECT_EQ(h.transport.overlapping_starts, 0);
    EXPECT_EQ(h.delivery.stats().sent, 8u);
}

TEST(DeliveryOrdering, ConcurrencyOneSendsOneRequestAtATime) {
    Harness h(Always(Ok()), Limits(1), FastPolicy(), 1);
    h.delivery.add(MakeRecord(1, "user-a"));
    h.delivery.add(MakeRecord(2, "user-b"));
    h.delivery.add(MakeRecord(3, "user-c"));
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1}, {2}, {3}}));
    EXPECT_EQ(h.transport.max_in_flight, 1u);
    for (const Request &r : h.transport.requests) EXPECT_EQ(r.slot, 0u);
}

TEST(DeliveryOrdering, DeviceIdIsTheOrderingKeyWhenPresent) {
    std::vector<std::string> devices = KeysInLanes(2, 3, false, "device");
    Harness h(Always(Ok()), Limits(1), FastPolicy(), 3);
    h.delivery.add(MakeRecord(1, "user-u", 0, devices[0]));
    h.delivery.add(MakeRecord(2, "user-u", 0, devices[1]));  // same user, other device: no wait
    h.delivery.add(MakeRecord(3, "user-v", 0, devices[0]));  // other user, same device: waits
    h.delivery.finish();

    ASSERT_EQ(h.RequestRows(), (std::vector<Rows>{{1}, {2}, {3}}));
    EXPECT_EQ(h.transport.requests[1].answered_before, 0u);
    EXPECT_TRUE(h.transport.AnsweredBeforeStart(0, 2));
}

TEST(DeliveryOrdering, AWaitingBatchHoldsBackOnlyLaterBatchesOfItsLane) {
    std::vector<std::string> same = KeysInLanes(2, 3, true);
    std::string other;
    for (const std::string &k : KeysInLanes(3, 3, false))
        if (Delivery::lane_of(k, 3) != Delivery::lane_of(same[0], 3)) other = k;
    Harness h(Script({Answer(503, "busy")}), Limits(2), FastPolicy(), 3);
    h.delivery.add(MakeRecord(1, same[0]));
    h.delivery.add(MakeRecord(2, same[0]));  // answered 503, retried
    h.delivery.add(MakeRecord(3, same[1]));  // same lane: waits for rows 1-2
    h.delivery.add(MakeRecord(4, same[0]));
    h.delivery.add(MakeRecord(5, other));    // other lane: goes at once
    h.delivery.add(MakeRecord(6, other));
    h.delivery.finish();

    ASSERT_EQ(h.delivery.stats().sent, 6u);
    const auto &req = h.transport.requests;
    ASSERT_EQ(req.size(), 4u);
    EXPECT_EQ(req[0].rows, (Rows{1, 2}));
    EXPECT_EQ(req[1].rows, (Rows{5, 6}));
    EXPECT_EQ(req[1].answered_before, 0u);
    EXPECT_EQ(req[2].rows, (Rows{1, 2}));
    EXPECT_EQ(req[3].rows, (Rows{3, 4}));
    EXPECT_TRUE(h.transport.AnsweredBeforeStart(2, 3));
}

TEST(DeliveryOrdering, PerKeyOrderHoldsAcrossConcurrencyRetriesAndThrottling) {
    const size_t concurrency = 4;
    std::vector<std::string> keys = {"user-a", "user-b", "user-c", "user-d", "user-e", "device-f"};
    bool throttled_once = false;
    Responder responder = [&](const Request &r) {
        // Throttle user-b the first time it shows up, fail every third request.
        if (!throttled_once && std::count(r.keys.begin(), r.keys.end(), "user-b")) {
            throttled_once = true;
            return Answer(429, R"({"code":429,"error":"slow","throttled_users":{"user-b":31}})");
        }
        if (r.index % 3 == 2) return Answer(503, "busy");
        return Ok();
    };
    RetryPolicy policy = FastPolicy();
    policy.max_attempts = 50;
    Harness h(responder, Limits(2), policy, concurrency);

    std::map<std::string, Rows> expected;
    for (uint64_t n = 1; n <= 90; ++n) {
        // Runs of one key, then a mix: batches share keys only sometimes.
        const std::string &key = keys[n < 30 ? (n - 1) / 4 % keys.size() : (n * 7 + n / 5) % keys.size()];
        expected[key].push_back(n);
        h.delivery.add(key.rfind("device", 0) == 0 ? MakeRecord(n, "user-x", 0, key) : MakeRecord(n, key));
    }
    h.delivery.finish();

    ASSERT_EQ(h.delivery.state(), DeliveryState::kRunning) << h.delivery.error();
    const auto &req = h.transport.requests;
    EXPECT_EQ(h.transport.overlapping_starts, 0);
    EXPECT_GT(h.transport.max_in_flight, 1u);
    EXPECT_LE(h.transport.max_in_flight, concurrency);
    EXPECT_TRUE(throttled_once);

    // A request starts only after every earlier request sharing a key was answered.
    for (size_t j = 0; j < req.size(); ++j)
        for (size_t i = 0; i < j; ++i) {
            std::set<std::string> ki(req[i].keys.begin(), req[i].keys.end());
            bool shared = std::any_of(req[j].keys.begin(), req[j].keys.end(),
                                      [&](const std::string &k) { return ki.count(k) > 0; });
            if (shared) {
                EXPECT_TRUE(h.transport.AnsweredBeforeStart(i, j)) << "requests " << i << ", " << j;
            }
        }

    std::map<std::string, Rows> delivered;  // accepted rows per key, in send order
    std::set<uint64_t> seen;
    uint64_t expected_retries = 0, failed = 0;
    for (const Request &r : req) {
        bool resend = false;
        for (size_t i = 0; i < r.rows.size(); ++i) {
            resend |= !seen.insert(r.rows[i]).second;
            if (h.transport.statuses[r.index] == 200) delivered[r.keys[i]].push_back(r.rows[i]);
        }
        expected_retries += resend;
        failed += h.transport.statuses[r.index] != 200;
    }
    EXPECT_EQ(delivered, expected);
    EXPECT_GT(failed, 5u);
    EXPECT_EQ(h.delivery.stats().sent, 90u);
    EXPECT_EQ(h.delivery.stats().requests, req.size());
    EXPECT_EQ(h.delivery.stats().retries, expected_retries);
    EXPECT_TRUE(h.delivery.rejections().empty());
}

TEST(DeliveryOrdering, BatchesWaitingForAnEarlierBatchDoNotSpinTheWait) {
    // Rows 2 and 3 wait (for the one slot and for row 1's user) while each
    // answer takes 100 ms: wait() must sleep, not be called with 0 ms over and
    // over until the answer comes.
    Harness h(Always(Ok()), Limits(1), FastPolicy(), 1);
    h.transport.answer_delay = std::chrono::milliseconds(100);
    h.AddRows(1, 3, "user-1");
    h.delivery.finish();

    ASSERT_EQ(h.delivery.state(), DeliveryState::kRunning) << h.delivery.error();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1}, {2}, {3}}));
    EXPECT_EQ(h.delivery.stats().sent, 3u);
    const std::vector<int> &timeouts = h.transport.wait_timeouts;
    EXPECT_GE(timeouts.size(), 3u);
    EXPECT_LT(timeouts.size(), 200u) << "wait() called " << timeouts.size() << " times for 3 answers";
    EXPECT_EQ(std::count(timeouts.begin(), timeouts.end(), 0), 0) << "wait() was asked not to sleep";
    EXPECT_GT(*std::max_element(timeouts.begin(), timeouts.end()), 0);
}

// ========================================================== 400 refusals

TEST(DeliveryRefusals, PartialRefusalDropsThoseAndResendsTheRestFirst) {
    Harness h(Script({Answer(400, R"({"code":400,"error":"Invalid field values on some events",
                                       "events_with_invalid_fields":{"time":[1,3]}})")}),
              Limits(5));
    h.AddRows(1, 10);
    h.delivery.finish();

    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3, 4, 5}, {1, 3, 5}, {6, 7, 8, 9, 10}}));
    EXPECT_EQ(h.RejectedRows(Outcome::kRejected), (Rows{2, 4}));
    const Rejection *r = h.RejectionFor(2);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->field, "time");
    EXPECT_EQ(r->reason, "refused by Amplitude: Invalid field values on some events (field \"time\")");
    EXPECT_EQ(r->record.insert_id, "id-2");
    EXPECT_EQ(h.delivery.stats().sent, 8u);
    EXPECT_EQ(h.delivery.stats().rejected, 2u);
    EXPECT_EQ(h.delivery.stats().requests, 3u);
    EXPECT_EQ(h.delivery.stats().retries, 1u);
}

TEST(DeliveryRefusals, IndexNamedTwiceIsRejectedOnce) {
    Harness h(Script({Answer(400, R"({"code":400,"error":"bad",
                                       "events_with_invalid_fields":{"time":[0],"ip":[0]},
                                       "events_with_missing_fields":{"event_type":[0]}})")}));
    h.AddRows(1, 3);
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3}, {2, 3}}));
    EXPECT_EQ(h.RejectedRows(Outcome::kRejected), (Rows{1}));
    EXPECT_EQ(h.delivery.stats().rejected, 1u);
    EXPECT_EQ(h.delivery.stats().sent, 2u);
}

TEST(DeliveryRefusals, IndicesOutOfRangeFallBackToBisecting) {
    Harness h(Script({Answer(400, R"({"code":400,"error":"bad","events_with_invalid_fields":{"time":[99]}})")}));
    h.AddRows(1, 4);
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3, 4}, {1, 2}, {3, 4}}));
    EXPECT_EQ(h.delivery.stats().sent, 4u);
    EXPECT_EQ(h.delivery.stats().rejected, 0u);
    EXPECT_EQ(h.delivery.stats().retries, 2u);
}

TEST(DeliveryRefusals, RefusalWithoutIndicesBisectsToTheCulprit) {
    Harness h([](const Request &r) {
        return Contains(r.rows, 6) ? Answer(400, R"({"code":400,"error":"Invalid JSON request body"})") : Ok();
    });
    h.AddRows(1, 8);
    h.delivery.finish();

    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{
                                   {1, 2, 3, 4, 5, 6, 7, 8}, {1, 2, 3, 4}, {5, 6, 7, 8}, {5, 6}, {5}, {6}, {7, 8}}));
    EXPECT_EQ(h.RejectedRows(Outcome::kRejected), (Rows{6}));
    EXPECT_EQ(h.RejectionFor(6)->reason, "refused by Amplitude: Invalid JSON request body");
    EXPECT_EQ(h.RejectionFor(6)->field, "");
    EXPECT_EQ(h.delivery.stats().sent, 7u);
    EXPECT_EQ(h.delivery.stats().rejected, 1u);
    EXPECT_EQ(h.delivery.stats().requests, 7u);
    EXPECT_EQ(h.delivery.stats().retries, 6u);
    EXPECT_EQ(h.delivery.state(), DeliveryState::kRunning);
}

// ===================================================================== 413

TEST(DeliveryTooLarge, HalvesUntilRequestsFit) {
    Harness h([](const Request &r) {
        return r.rows.size() > 2 ? Answer(413, R"({"code":413,"error":"Payload too large"})") : Ok();
    }, Limits(8));
    h.AddRows(1, 8);
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3, 4, 5, 6, 7, 8}, {1, 2, 3, 4}, {1, 2}, {3, 4},
                                                  {5, 6, 7, 8}, {5, 6}, {7, 8}}));
    EXPECT_EQ(h.delivery.stats().sent, 8u);
    EXPECT_EQ(h.delivery.stats().retries, 6u);
}

TEST(DeliveryTooLarge, BatchesSealedAfterA413StaySmaller) {
    Harness h(Script({Answer(413, "")}), Limits(8));
    h.AddRows(1, 40);
    h.delivery.finish();
    // The 413 is read while row 9 is added (requests move along as rows
    // arrive), so every later batch has the learned size of 4.
    std::vector<Rows> expected{Range(1, 8), Range(1, 4), Range(5, 8)};
    for (int first = 9; first <= 40; first += 4) expected.push_back(Range(first, first + 3));
    EXPECT_EQ(h.RequestRows(), expected);
    EXPECT_EQ(h.delivery.stats().sent, 40u);
    EXPECT_EQ(h.delivery.stats().retries, 2u);
}

TEST(DeliveryTooLarge, SingleRecordStillTooLargeIsRejected) {
    Harness h([](const Request &r) { return Contains(r.rows, 2) ? Answer(413, "") : Ok(); });
    h.AddRows(1, 3);
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3}, {1}, {2, 3}, {2}, {3}}));
    EXPECT_EQ(h.RejectedRows(Outcome::kRejected), (Rows{2}));
    EXPECT_EQ(h.RejectionFor(2)->reason, "refused by Amplitude: payload too large (HTTP 413) even alone");
    EXPECT_EQ(h.delivery.stats().sent, 2u);
}

// ===================================================================== 429

TEST(DeliveryThrottling, QuotaIdsRejectedThrottledPausedOthersResentAtOnce) {
    RetryPolicy policy = FastPolicy();
    policy.throttle_pause_ms = 30;
    Harness h(Script({Answer(429, R"({"code":429,"error":"Too many requests for some devices and users",
        "throttled_users":{"user-3":31},"throttled_devices":{"device-t":31},"throttled_events":[6],
        "exceeded_daily_quota_users":{"user-2":500200},"exceeded_daily_quota_devices":{"device-q":500900}})")}),
              Limits(2000), policy);
    h.delivery.add(MakeRecord(1, "user-1"));
    h.delivery.add(MakeRecord(2, "user-2"));                 // quota user
    h.delivery.add(MakeRecord(3, "user-3"));                 // throttled user
    h.delivery.add(MakeRecord(4, "user-1"));
    h.delivery.add(MakeRecord(5, "user-5", 0, "device-t"));  // throttled device
    h.delivery.add(MakeRecord(6, "user-6", 0, "device-q"));  // quota device
    h.delivery.add(MakeRecord(7, "user-7"));                 // index 6: throttled event
    h.delivery.add(MakeRecord(8, "user-3"));
    h.delivery.finish();

    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3, 4, 5, 6, 7, 8}, {1, 4}, {3, 5, 7, 8}}));
    // Over quota is not the record's fault: not sent, for a later run.
    EXPECT_EQ(h.RejectedRows(Outcome::kNotSent), (Rows{2, 6}));
    EXPECT_EQ(h.RejectionFor(2)->reason,
              "daily quota exceeded: Amplitude refuses more events for this ID today");
    ASSERT_EQ(h.transport.requests.size(), 3u);
    EXPECT_GE(MillisBetween(h.transport.requests[0].started, h.transport.requests[2].started), 30);
    EXPECT_EQ(h.delivery.stats().sent, 6u);
    EXPECT_EQ(h.delivery.stats().not_sent, 2u);
    EXPECT_EQ(h.delivery.stats().requests, 3u);
    EXPECT_EQ(h.delivery.stats().retries, 2u);
    EXPECT_EQ(h.delivery.state(), DeliveryState::kRunning);
}

TEST(DeliveryThrottling, ThrottledEventPausesEveryRecordOfItsKey) {
    // Only index 0 (row 1) is named, but rows 2-3 are the same user's later
    // events: sending them before row 1 would break that user's order.
    RetryPolicy policy = FastPolicy();
    policy.throttle_pause_ms = 30;
    Harness h(Script({Answer(429, R"({"code":429,"error":"Too many requests for some devices and users",)"
                                  R"("throttled_events":[0]})")}),
              Limits(2000), policy);
    h.AddRows(1, 3, "user-1");
    h.delivery.finish();

    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3}, {1, 2, 3}}));
    ASSERT_EQ(h.transport.requests.size(), 2u);
    EXPECT_GE(MillisBetween(h.transport.requests[0].started, h.transport.requests[1].started), 30);
    EXPECT_EQ(h.delivery.stats().sent, 3u);
    EXPECT_EQ(h.delivery.stats().retries, 1u);
    EXPECT_TRUE(h.delivery.rejections().empty());
    EXPECT_EQ(h.delivery.state(), DeliveryState::kRunning);
}

TEST(DeliveryThrottling, ThrottledEventPausesItsKeyAndOtherKeysGoAtOnce) {
    RetryPolicy policy = FastPolicy();
    policy.throttle_pause_ms = 30;
    Harness h(Script({Answer(429, R"({"code":429,"error":"Too many requests for some devices and users",)"
                                  R"("throttled_events":[0]})")}),
              Limits(2000), policy);
    h.delivery.add(MakeRecord(1, "user-1"));  // index 0: throttled
    h.delivery.add(MakeRecord(2, "user-2"));
    h.delivery.add(MakeRecord(3, "user-1"));  // not named, but user-1's later event
    h.delivery.finish();

    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3}, {2}, {1, 3}}));
    ASSERT_EQ(h.transport.requests.size(), 3u);
    EXPECT_EQ(h.transport.requests[2].keys, (std::vector<std::string>{"user-1", "user-1"}));
    EXPECT_GE(MillisBetween(h.transport.requests[0].started, h.transport.requests[2].started), 30);
    EXPECT_EQ(h.delivery.stats().sent, 3u);
    EXPECT_TRUE(h.delivery.rejections().empty());
}

TEST(DeliveryThrottling, ProjectWideThrottleResendsEverythingAfterThePause) {
    RetryPolicy policy = FastPolicy();
    policy.project_throttle_pause_ms = 30;
    Harness h(Script({Answer(429, R"({"code":429,"error":"Too many requests"})")}), Limits(2000), policy);
    h.AddRows(1, 3);
    h.delivery.finish();

    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3}, {1, 2, 3}}));
    EXPECT_EQ(h.transport.requests[0].body, h.transport.requests[1].body);  // same insert_ids
    EXPECT_GE(MillisBetween(h.transport.requests[0].started, h.transport.requests[1].started), 30);
    EXPECT_EQ(h.delivery.stats().sent, 3u);
    EXPECT_EQ(h.delivery.stats().retries, 1u);
}

TEST(DeliveryThrottling, ThrottledLongerThanMaxRetryTimeFails) {
    RetryPolicy policy = FastPolicy();
    policy.max_retry_ms = 20;
    policy.project_throttle_pause_ms = 2;
    Harness h(Always(Answer(429, R"({"code":429,"error":"Too many requests"})")), Limits(2), policy);
    h.AddRows(1, 4);
    h.delivery.finish();

    EXPECT_EQ(h.delivery.state(), DeliveryState::kFailed);
    EXPECT_EQ(h.delivery.error(), "gave up on throttled records: Too many requests");
    EXPECT_GE(h.transport.requests.size(), 2u);
    for (const Request &r : h.transport.requests) EXPECT_EQ(r.rows, (Rows{1, 2}));
    EXPECT_EQ(h.RejectedRows(Outcome::kNotSent), (Rows{1, 2, 3, 4}));
    EXPECT_EQ(h.RejectionFor(1)->reason, "not sent: still throttled: Too many requests");
    EXPECT_EQ(h.RejectionFor(3)->reason, "not sent: gave up on throttled records: Too many requests");
    EXPECT_EQ(h.delivery.stats().sent, 0u);
    EXPECT_EQ(h.delivery.stats().not_sent, 4u);
}

TEST(DeliveryThrottling, ThrottledIdsWithNoRetryBudgetAreNotSentAfterOneRequest) {
    // max_retry_seconds 0: the first 429 naming the device ends it.
    RetryPolicy policy = FastPolicy();
    policy.max_retry_ms = 0;
    Harness h(Always(Answer(429, R"({"code":429,"error":"Too many requests for some devices and users","throttled_devices":{"device-1":31}})")),
              Limits(2), policy, 4);
    h.delivery.add(MakeRecord(1, "", 0, "device-1"));
    h.delivery.finish();
    EXPECT_EQ(h.delivery.state(), DeliveryState::kFailed);
    EXPECT_EQ(h.transport.requests.size(), 1u);
    EXPECT_EQ(h.RejectedRows(Outcome::kNotSent), (Rows{1}));
}

// ================================================================= retries

TEST(DeliveryRetries, ServerErrorsAreRetriedWithTheSameBody) {
    Harness h(Script({Answer(503, "down"), TransportError("Connection reset by peer"), Answer(500, "")}));
    h.AddRows(1, 3);
    h.delivery.finish();

    ASSERT_EQ(h.transport.requests.size(), 4u);
    for (const Request &r : h.transport.requests) EXPECT_EQ(r.body, h.transport.requests[0].body);
    EXPECT_EQ(h.delivery.state(), DeliveryState::kRunning);
    EXPECT_EQ(h.delivery.stats().sent, 3u);
    EXPECT_EQ(h.delivery.stats().requests, 4u);
    EXPECT_EQ(h.delivery.stats().retries, 3u);
    EXPECT_TRUE(h.delivery.rejections().empty());
}

TEST(DeliveryRetries, RetryKeepsQueueOrder) {
    Harness h(Script({Answer(502, "")}), Limits(2));
    h.AddRows(1, 6);
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2}, {1, 2}, {3, 4}, {5, 6}}));
}

TEST(DeliveryRetries, ExhaustedRetriesFailTheRunAndReportEverythingNotSent) {
    RetryPolicy policy = FastPolicy();
    policy.max_attempts = 3;
    Harness h(Always(Answer(503, "down")), Limits(2), policy);
    h.AddRows(1, 6);
    h.delivery.finish();

    EXPECT_EQ(h.delivery.state(), DeliveryState::kFailed);
    EXPECT_EQ(h.delivery.error(), "gave up after 3 attempts: HTTP 503: down");
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2}, {1, 2}, {1, 2}}));
    EXPECT_EQ(h.RejectedRows(Outcome::kNotSent), (Rows{1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(h.RejectedRows(Outcome::kRejected), Rows{});
    EXPECT_EQ(h.RejectionFor(1)->reason, "not sent: gave up after 3 attempts: HTTP 503: down");
    EXPECT_EQ(h.RejectionFor(5)->reason, "not sent: gave up after 3 attempts: HTTP 503: down");
    EXPECT_EQ(h.delivery.stats().sent, 0u);
    EXPECT_EQ(h.delivery.stats().not_sent, 6u);
    EXPECT_EQ(h.delivery.stats().requests, 3u);
    EXPECT_EQ(h.delivery.stats().retries, 2u);
}

TEST(DeliveryRetries, RecordsAddedAfterFailureAreNotSent) {
    RetryPolicy policy = FastPolicy();
    policy.max_attempts = 1;
    Harness h(Always(TransportError("Could not resolve host")), Limits(1), policy);
    // Rows 1-3 fill the lane (one in flight, two ready); row 4 makes it wait
    // for the network, which fails the run.
    h.AddRows(1, 4);
    EXPECT_EQ(h.delivery.state(), DeliveryState::kFailed);
    h.AddRows(5, 6);
    h.delivery.finish();
    EXPECT_EQ(h.transport.requests.size(), 1u);
    EXPECT_EQ(h.delivery.stats().not_sent, 6u);
    EXPECT_EQ(h.delivery.stats().sent, 0u);
    EXPECT_EQ(h.RejectionFor(6)->reason, "not sent: gave up after 1 attempts: Could not resolve host");
}

// =================================================================== fatal

TEST(DeliveryFatal, ForbiddenStopsTheRun) {
    Harness h(Always(Answer(403, R"({"code":403,"error":"Forbidden"})")), Limits(2));
    h.AddRows(1, 6);
    h.delivery.finish();

    EXPECT_EQ(h.delivery.state(), DeliveryState::kStopped);
    EXPECT_EQ(h.delivery.error(), "forbidden by Amplitude (HTTP 403): Forbidden");
    EXPECT_EQ(h.delivery.stop_reason(), StopReason::kRefused);
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2}}));
    EXPECT_EQ(h.RejectedRows(Outcome::kNotSent), (Rows{1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(h.RejectionFor(4)->reason, "not sent: forbidden by Amplitude (HTTP 403): Forbidden");
    EXPECT_EQ(h.delivery.stats().not_sent, 6u);
    EXPECT_EQ(h.delivery.stats().requests, 1u);
    EXPECT_EQ(h.delivery.stats().retries, 0u);
}

TEST(DeliveryFatal, ABodyThatIsNotUtf8IsEscapedInTheErrorAndReasons) {
    Harness h(Always(Answer(403, "acc\xe8s refus\xe9")), Limits(2));
    h.AddRows(1, 3);
    h.delivery.finish();
    EXPECT_EQ(h.delivery.error(), "forbidden by Amplitude (HTTP 403): HTTP 403: acc\\xe8s refus\\xe9");
    EXPECT_EQ(h.RejectionFor(3)->reason, "not sent: " + h.delivery.error());
}

TEST(DeliveryFatal, InvalidApiKeyStopsTheRunWithoutLeakingTheKey) {
    Harness h(Always(Answer(400, R"({"code":400,"error":"Invalid API key: )" + kApiKey + R"("})")));
    h.AddRows(1, 2);
    h.delivery.finish();
    EXPECT_EQ(h.delivery.state(), DeliveryState::kStopped);
    EXPECT_EQ(h.delivery.error(), "Invalid API key: [redacted]");
    EXPECT_EQ(h.delivery.stop_reason(), StopReason::kBadApiKey);
    EXPECT_EQ(h.delivery.stats().not_sent, 2u);
    for (const Rejection &r : h.delivery.rejections()) EXPECT_EQ(r.reason.find(kApiKey), std::string::npos);
}

TEST(DeliveryFatal, AnswersArrivingAfterTheStopAreCountedNotRetried) {
    Harness h([](const Request &r) {
        if (Contains(r.rows, 1)) return Answer(403, R"({"code":403,"error":"Forbidden"})");
        if (Contains(r.rows, 5)) return Answer(503, "");
        return Ok();
    }, Limits(2), FastPolicy(), 4);
    // Three batches of users in different lanes: all in flight when the 403
    // (answered first) stops the run.
    std::vector<std::string> users = KeysInLanes(3, 4, false);
    h.AddRows(1, 2, users[0]);
    h.AddRows(3, 4, users[1]);
    h.AddRows(5, 6, users[2]);
    h.delivery.finish();

    EXPECT_EQ(h.delivery.state(), DeliveryState::kStopped);
    EXPECT_EQ(h.transport.max_in_flight, 3u);
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2}, {3, 4}, {5, 6}}));  // the 503 is not retried
    EXPECT_EQ(h.delivery.stats().sent, 2u);  // user-b's 200 still counts
    EXPECT_EQ(h.RejectedRows(Outcome::kNotSent), (Rows{1, 2, 5, 6}));
    EXPECT_EQ(h.RejectionFor(5)->reason, "not sent: forbidden by Amplitude (HTTP 403): Forbidden");
}

// ============================================================== interrupts

TEST(DeliveryInterrupt, ShouldStopInterruptsTheRun) {
    FakeTransport *transport = nullptr;
    Harness h(Always(Ok()), Limits(10), FastPolicy(), 1,
              [&] { return transport->requests.size() >= 2; });
    transport = &h.transport;
    h.AddRows(1, 50);
    EXPECT_EQ(h.delivery.state(), DeliveryState::kInterrupted);
    h.delivery.finish();

    EXPECT_EQ(h.delivery.state(), DeliveryState::kInterrupted);
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{Range(1, 10), Range(11, 20)}));
    EXPECT_EQ(h.delivery.stats().sent, 10u);  // the second answer was never waited for
    EXPECT_EQ(h.delivery.stats().requests, 2u);

    // Records added once the run is interrupted are reported as not sent.
    h.delivery.add(MakeRecord(51, "user-1"));
    Rows not_sent = h.RejectedRows(Outcome::kNotSent);
    ASSERT_FALSE(not_sent.empty());
    EXPECT_EQ(not_sent.back(), 51u);
    EXPECT_EQ(h.delivery.stats().not_sent, not_sent.size());
}

TEST(DeliveryInterrupt, ShouldStopDuringFinishInterruptsWaitingRetries) {
    RetryPolicy policy = FastPolicy();
    policy.backoff_base_ms = 5000;  // a retry that would wait seconds
    policy.backoff_cap_ms = 5000;
    std::atomic<bool> stop{false};
    Harness h(Script({Answer(503, "")}), Limits(2000), policy, 1, [&] { return stop.load(); });
    h.AddRows(1, 2);
    auto started = Clock::now();
    std::thread interrupter([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        stop = true;
    });
    h.delivery.finish();
    interrupter.join();
    EXPECT_EQ(h.delivery.state(), DeliveryState::kInterrupted);
    EXPECT_LT(MillisBetween(started, Clock::now()), 1000);
    EXPECT_EQ(h.transport.requests.size(), 1u);
}

TEST(DeliveryInterrupt, RecordAddedAfterInterruptionSaysWhyItWasNotSent) {
    Harness h(Always(Ok()), Limits(2000), FastPolicy(), 1, [] { return true; });
    h.delivery.add(MakeRecord(1, "user-1"));
    h.delivery.finish();  // polls should_stop: interrupted
    ASSERT_EQ(h.delivery.state(), DeliveryState::kInterrupted);
    EXPECT_EQ(h.delivery.error(), "the call was interrupted");

    h.delivery.add(MakeRecord(2, "user-1"));
    EXPECT_EQ(h.RejectedRows(Outcome::kNotSent), (Rows{2}));
    ASSERT_NE(h.RejectionFor(2), nullptr);
    EXPECT_EQ(h.RejectionFor(2)->reason, "not sent: the call was interrupted");
}

// ==================================================== IdentificationFormat

namespace {

HttpResponse FormOk() { return Answer(200, "success"); }

Record WithJson(std::string json) {
    Record r;
    r.json = std::move(json);
    return r;
}

}  // namespace

TEST(IdentificationFormat, BuildsTheFormBody) {
    IdentificationFormat format("ab+c/d=e&f g");
    Record a = WithJson(R"({"user_id":"user-1"})");
    Record b = WithJson("{\"user_id\":\"\xC3\xBC x\"}");  // ü x
    std::string body = "stale";
    format.build({a, b}, body);
    EXPECT_EQ(body,
              "api_key=ab%2Bc%2Fd%3De%26f%20g&identification=%5B"
              "%7B%22user_id%22%3A%22user-1%22%7D%2C%7B%22user_id%22%3A%22%C3%BC%20x%22%7D%5D");
    EXPECT_STREQ(format.content_type(), "application/x-www-form-urlencoded");
    EXPECT_EQ(format.separator_bytes(), 3u);
    EXPECT_EQ(format.wire_size(a), 34u);
    EXPECT_EQ(format.wire_size(b), 38u);
    EXPECT_EQ(format.overhead_bytes(), std::string("api_key=ab%2Bc%2Fd%3De%26f%20g&identification=%5B%5D").size());
    EXPECT_EQ(format.overhead_bytes() + format.wire_size(a) + format.wire_size(b) + format.separator_bytes(),
              body.size());

    format.build({a}, body);
    EXPECT_EQ(body, "api_key=ab%2Bc%2Fd%3De%26f%20g&identification=%5B%7B%22user_id%22%3A%22user-1%22%7D%5D");
    format.build({}, body);
    EXPECT_EQ(body.size(), format.overhead_bytes());
}

TEST(IdentificationFormat, SizesAddUpToTheBuiltBody) {
    IdentificationFormat format(kFormApiKey);
    std::vector<Record> records;
    const char *texts[] = {R"({"user_id":"user-00001","user_properties":{"$set":{"plan":"pro"}}})",
                           "{\"device_id\":\"d\xC3\xA9vice-1\",\"city\":\"Z\xC3\xBCrich\"}",
                           R"({"group_type":"company","group_value":"a&b=c+d","group_properties":{"$add":{"n":-1.5}}})",
                           R"({"user_id":"x~y_z.w-v"})", R"({})"};
    for (const char *text : texts) {
        records.push_back(WithJson(text));
        EXPECT_EQ(format.wire_size(records.back()), url_encoded_size(text));
        size_t expected = format.overhead_bytes() + format.separator_bytes() * (records.size() - 1);
        for (const Record &r : records) expected += format.wire_size(r);
        std::string body;
        format.build(records, body);
        EXPECT_EQ(body.size(), expected) << records.size() << " records";
        // And it decodes back to the records.
        nlohmann::json form = ParseForm(body);
        EXPECT_EQ(form["api_key"], kFormApiKey);
        ASSERT_EQ(form["identification"].size(), records.size());
        for (size_t i = 0; i < records.size(); ++i)
            EXPECT_EQ(form["identification"][i], nlohmann::json::parse(records[i].json));
    }
}

TEST(IdentificationFormat, ClassifiesFormAnswersWithItsKeyRedacted) {
    IdentificationFormat format("KEY-123");
    ResponseVerdict v = format.classify(Answer(400, "Invalid API key: KEY-123"));
    EXPECT_EQ(v.kind, ResponseKind::kFatal);
    EXPECT_EQ(v.error, "Invalid API key: [redacted]");
    EXPECT_EQ(format.classify(Answer(200, "")).kind, ResponseKind::kAccepted);
    v = format.classify(Answer(429, "slow down KEY-123"));
    EXPECT_EQ(v.kind, ResponseKind::kThrottled);
    EXPECT_TRUE(v.whole_batch_throttled);
    EXPECT_EQ(v.error, "HTTP 429: slow down [redacted]");
}

// ============================================ delivery to the identify APIs

TEST(DeliveryIdentify, ThreeThousandRecordsMakeRequestsOfAtMost1024) {
    FormHarness h(Always(FormOk()), Limits(1024));
    for (uint64_t n = 1; n <= 3000; ++n)
        h.delivery.add(MakeIdentification(n, "user-" + std::to_string(n % 10)));
    h.delivery.finish();

    ASSERT_EQ(h.transport.requests.size(), 3u);
    EXPECT_EQ(h.transport.requests[0].rows, Range(1, 1024));
    EXPECT_EQ(h.transport.requests[1].rows, Range(1025, 2048));
    EXPECT_EQ(h.transport.requests[2].rows, Range(2049, 3000));
    size_t bytes = 0;
    for (const Request &r : h.transport.requests) {
        EXPECT_EQ(r.url, kIdentifyUrl);
        EXPECT_EQ(r.content_type, "application/x-www-form-urlencoded");
        EXPECT_EQ(r.json["api_key"], kFormApiKey);
        EXPECT_EQ(r.body.rfind("api_key=form%2Bkey%2F0123456789%3Dabc%20def&identification=%5B%7B", 0), 0u);
        EXPECT_EQ(r.body.substr(r.body.size() - 6), "%7D%5D");
        bytes += r.body.size();
    }
    EXPECT_EQ(h.transport.requests[0].json["identification"][0],
              nlohmann::json::parse(R"({"user_id":"user-1","user_properties":{"$set":{"n":1}}})"));
    EXPECT_EQ(h.delivery.state(), DeliveryState::kRunning);
    EXPECT_EQ(h.delivery.stats().sent, 3000u);
    EXPECT_EQ(h.delivery.stats().requests, 3u);
    EXPECT_EQ(h.delivery.stats().retries, 0u);
    EXPECT_EQ(h.delivery.stats().rejected, 0u);
    EXPECT_EQ(h.delivery.stats().not_sent, 0u);
    EXPECT_EQ(h.delivery.stats().bytes_sent, bytes);
    EXPECT_TRUE(h.delivery.rejections().empty());
}

TEST(DeliveryIdentify, ByteLimitCountsUrlEncodedBytes) {
    const size_t overhead = MakeFormat<IdentificationFormat>().overhead_bytes();
    const size_t max_bytes = overhead + 3 * 200 + 2 * 3;  // three records and two %2C
    // Raw, four of these records would fit: only their encoded size is limited.
    const size_t raw = MakeIdentification(1, "user-1", 200).json.size();
    ASSERT_LE(overhead + 4 * raw + 3 * 3, max_bytes);

    FormHarness h(Always(FormOk()), Limits(1024, max_bytes));
    for (uint64_t n = 1; n <= 10; ++n) h.delivery.add(MakeIdentification(n, "user-1", 200));
    h.delivery.finish();

    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3}, {4, 5, 6}, {7, 8, 9}, {10}}));
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(h.transport.requests[i].body.size(), max_bytes);
    EXPECT_EQ(h.transport.requests[3].body.size(), overhead + 200);
    EXPECT_EQ(h.delivery.stats().sent, 10u);
}

TEST(DeliveryIdentify, OneEncodedByteLessMeansOneRecordLess) {
    const size_t overhead = MakeFormat<IdentificationFormat>().overhead_bytes();
    const size_t max_bytes = overhead + 3 * 200 + 2 * 3 - 1;
    FormHarness h(Always(FormOk()), Limits(1024, max_bytes));
    for (uint64_t n = 1; n <= 5; ++n) h.delivery.add(MakeIdentification(n, "user-1", 200));
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2}, {3, 4}, {5}}));
    for (const Request &r : h.transport.requests) EXPECT_LE(r.body.size(), max_bytes);
}

TEST(DeliveryIdentify, RecordLargerThanAnyRequestOnceEncodedIsRejected) {
    const size_t overhead = MakeFormat<IdentificationFormat>().overhead_bytes();
    const size_t max_bytes = overhead + 199;
    FormHarness h(Always(FormOk()), Limits(1024, max_bytes));
    Record big = MakeIdentification(1, "user-1", 200);
    ASSERT_LT(big.json.size(), 199u);  // it would fit raw
    h.delivery.add(std::move(big));
    h.delivery.add(MakeIdentification(2, "user-1", 199));
    h.delivery.finish();

    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{2}}));
    EXPECT_EQ(h.RejectedRows(Outcome::kRejected), (Rows{1}));
    EXPECT_EQ(h.RejectionFor(1)->reason,
              "record is 200 bytes, more than one request may carry (" + std::to_string(max_bytes) + " bytes)");
    EXPECT_EQ(h.transport.requests[0].body.size(), max_bytes);
}

TEST(DeliveryIdentify, Http429PausesTheWholeBatchThenSendsIt) {
    RetryPolicy policy = FastPolicy();
    policy.throttle_pause_ms = 30;
    policy.project_throttle_pause_ms = 2000;  // not this one: the IDs' pause
    FormHarness h(Script({Answer(429, "Too many requests")}), Limits(1024), policy);
    h.delivery.add(MakeIdentification(1, "user-a"));
    h.delivery.add(MakeIdentification(2, "user-b"));
    h.delivery.add(MakeIdentification(3, "user-c", 0, "device-c"));
    h.delivery.finish();

    // No record goes again at once: all of them wait, none is rejected.
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3}, {1, 2, 3}}));
    ASSERT_EQ(h.transport.requests.size(), 2u);
    EXPECT_EQ(h.transport.requests[0].body, h.transport.requests[1].body);
    long gap = MillisBetween(h.transport.requests[0].started, h.transport.requests[1].started);
    EXPECT_GE(gap, 30);
    EXPECT_LT(gap, 1500);
    EXPECT_TRUE(h.delivery.rejections().empty());
    EXPECT_EQ(h.delivery.stats().sent, 3u);
    EXPECT_EQ(h.delivery.stats().rejected, 0u);
    EXPECT_EQ(h.delivery.stats().not_sent, 0u);
    EXPECT_EQ(h.delivery.stats().requests, 2u);
    EXPECT_EQ(h.delivery.stats().retries, 1u);
    EXPECT_EQ(h.delivery.state(), DeliveryState::kRunning);
}

TEST(DeliveryIdentify, Http429HoldsBackOnlyTheThrottledKeys) {
    RetryPolicy policy = FastPolicy();
    policy.throttle_pause_ms = 30;
    FormHarness h(Script({Answer(429, "Too many requests")}), Limits(2), policy);
    h.delivery.add(MakeIdentification(1, "user-a"));  // throttled batch
    h.delivery.add(MakeIdentification(2, "user-b"));
    h.delivery.add(MakeIdentification(3, "user-c"));  // unrelated: goes at once
    h.delivery.add(MakeIdentification(4, "user-d"));
    h.delivery.add(MakeIdentification(5, "user-a"));  // user-a's later row: waits with it
    h.delivery.add(MakeIdentification(6, "user-e"));  // goes at once
    h.delivery.finish();

    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2}, {3, 4}, {6}, {1, 2}, {5}}));
    ASSERT_EQ(h.transport.requests.size(), 5u);
    EXPECT_LT(MillisBetween(h.transport.requests[0].started, h.transport.requests[2].started), 30);
    EXPECT_GE(MillisBetween(h.transport.requests[0].started, h.transport.requests[3].started), 30);
    EXPECT_TRUE(h.transport.AnsweredBeforeStart(3, 4));
    EXPECT_EQ(h.delivery.stats().sent, 6u);
    EXPECT_TRUE(h.delivery.rejections().empty());
}

TEST(DeliveryIdentify, ThrottledLongerThanMaxRetryTimeFails) {
    RetryPolicy policy = FastPolicy();
    policy.max_retry_ms = 20;
    policy.throttle_pause_ms = 2;
    FormHarness h(Always(Answer(429, "Too many requests")), Limits(2), policy);
    h.AddRows(1, 4);
    h.delivery.finish();

    EXPECT_EQ(h.delivery.state(), DeliveryState::kFailed);
    EXPECT_EQ(h.delivery.error(), "gave up on throttled records: HTTP 429: Too many requests");
    EXPECT_GE(h.transport.requests.size(), 2u);
    for (const Request &r : h.transport.requests) EXPECT_EQ(r.rows, (Rows{1, 2}));
    EXPECT_EQ(h.RejectedRows(Outcome::kNotSent), (Rows{1, 2, 3, 4}));
    EXPECT_EQ(h.RejectionFor(1)->reason, "not sent: still throttled: HTTP 429: Too many requests");
    EXPECT_EQ(h.delivery.stats().sent, 0u);
}

TEST(DeliveryIdentify, Http400BisectsToTheCulpritAndRejectsItWithTheText) {
    FormHarness h([](const Request &r) {
        return Contains(r.rows, 6) ? Answer(400, "invalid field values: user_id") : FormOk();
    });
    h.AddRows(1, 8);
    h.delivery.finish();

    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{
                                   {1, 2, 3, 4, 5, 6, 7, 8}, {1, 2, 3, 4}, {5, 6, 7, 8}, {5, 6}, {5}, {6}, {7, 8}}));
    EXPECT_EQ(h.RejectedRows(Outcome::kRejected), (Rows{6}));
    ASSERT_NE(h.RejectionFor(6), nullptr);
    EXPECT_EQ(h.RejectionFor(6)->reason, "refused by Amplitude: HTTP 400: invalid field values: user_id");
    EXPECT_EQ(h.RejectionFor(6)->field, "");
    EXPECT_EQ(h.RejectionFor(6)->record.user_id, "user-1");
    EXPECT_EQ(h.delivery.stats().sent, 7u);
    EXPECT_EQ(h.delivery.stats().rejected, 1u);
    EXPECT_EQ(h.delivery.stats().not_sent, 0u);
    EXPECT_EQ(h.delivery.stats().requests, 7u);
    EXPECT_EQ(h.delivery.stats().retries, 6u);
    EXPECT_EQ(h.delivery.state(), DeliveryState::kRunning);
}

TEST(DeliveryIdentify, MissingEventStopsTheRun) {
    FormHarness h(Always(Answer(400, "missing_event")), Limits(2));
    h.AddRows(1, 6);
    h.delivery.finish();

    EXPECT_EQ(h.delivery.state(), DeliveryState::kStopped);
    EXPECT_EQ(h.delivery.error(), "HTTP 400: missing_event");
    EXPECT_EQ(h.delivery.stop_reason(), StopReason::kRefused);
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2}}));
    EXPECT_EQ(h.RejectedRows(Outcome::kNotSent), (Rows{1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(h.RejectedRows(Outcome::kRejected), Rows{});
    EXPECT_EQ(h.RejectionFor(1)->reason, "not sent: HTTP 400: missing_event");
    EXPECT_EQ(h.RejectionFor(5)->reason, "not sent: HTTP 400: missing_event");
    EXPECT_EQ(h.delivery.stats().sent, 0u);
    EXPECT_EQ(h.delivery.stats().not_sent, 6u);
    EXPECT_EQ(h.delivery.stats().requests, 1u);
    EXPECT_EQ(h.delivery.stats().retries, 0u);
}

TEST(DeliveryIdentify, InvalidApiKeyStopsTheRunWithoutLeakingTheKey) {
    FormHarness h(Always(Answer(400, "Invalid API key: " + kFormApiKey)));
    h.AddRows(1, 2);
    h.delivery.finish();
    EXPECT_EQ(h.delivery.state(), DeliveryState::kStopped);
    EXPECT_EQ(h.delivery.error(), "Invalid API key: [redacted]");
    EXPECT_EQ(h.delivery.stop_reason(), StopReason::kBadApiKey);
    EXPECT_EQ(h.delivery.stats().not_sent, 2u);
    for (const Rejection &r : h.delivery.rejections())
        EXPECT_EQ(r.reason.find(kFormApiKey), std::string::npos) << r.reason;
}

TEST(DeliveryIdentify, Http414HalvesUntilRequestsFit) {
    FormHarness h([](const Request &r) { return r.rows.size() > 2 ? Answer(414, "URI Too Long") : FormOk(); },
                  Limits(8));
    h.AddRows(1, 8);
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3, 4, 5, 6, 7, 8}, {1, 2, 3, 4}, {1, 2}, {3, 4},
                                                  {5, 6, 7, 8}, {5, 6}, {7, 8}}));
    EXPECT_EQ(h.delivery.stats().sent, 8u);
    EXPECT_EQ(h.delivery.stats().retries, 6u);
}

TEST(DeliveryIdentify, EncodedRowsArriveAsTheEncoderWroteThem) {
    std::vector<ColumnInput> columns = {{"user_id", TypeCategory::kText}, {"n", TypeCategory::kInteger},
                                        {"nickname", TypeCategory::kText}};
    IdentifyOptions options;
    IdentifyEncoder encoder(plan_identify_columns(columns, options), options);
    const std::string nicknames[] = {"a&b=c d+e", "100% \"sure\"", "\xC3\xA9t\xC3\xA9 / \xE2\x82\xAC"};
    FormHarness h(Always(FormOk()), Limits(1024));
    std::vector<std::string> sent_json;
    for (uint64_t n = 1; n <= 3; ++n) {
        std::string user = "user-0000" + std::to_string(n);
        Value values[3];
        values[0].category = TypeCategory::kText;
        values[0].is_null = false;
        values[0].text = user.data();
        values[0].text_len = user.size();
        values[1].category = TypeCategory::kInteger;
        values[1].is_null = false;
        values[1].i = static_cast<int64_t>(n);
        values[2].category = TypeCategory::kText;
        values[2].is_null = false;
        values[2].text = nicknames[n - 1].data();
        values[2].text_len = nicknames[n - 1].size();
        Record record;
        Rejection rejection;
        ASSERT_TRUE(encoder.encode_row(n, values, record, rejection)) << rejection.reason;
        sent_json.push_back(record.json);
        h.delivery.add(std::move(record));
    }
    h.delivery.finish();

    ASSERT_EQ(h.transport.requests.size(), 1u);
    const nlohmann::json &ids = h.transport.requests[0].json["identification"];
    ASSERT_EQ(ids.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(ids[i], nlohmann::json::parse(sent_json[i]));
        EXPECT_EQ(ids[i]["user_properties"]["$set"]["nickname"], nicknames[i]);
    }
    EXPECT_EQ(h.transport.requests[0].keys, (std::vector<std::string>{"user-00001", "user-00002", "user-00003"}));
    EXPECT_EQ(h.delivery.stats().sent, 3u);
}

// ================================================== request-level refusals
// A refusal that does not depend on the records stops the run at once: a
// wrong key is one request whatever the row count, and bisection gives up
// when both halves of a batch are refused like their parent before
// Amplitude accepted anything. Before, 1,000 identifications with a wrong
// key made 1,999 requests and ended "rejected" one by one.

namespace {

std::string UserOf(uint64_t n) {
    std::string digits = std::to_string(n);
    return "user-" + std::string(5 - std::min<size_t>(5, digits.size()), '0') + digits;
}

// Rows first..last, each of its own user (so halves of a batch can go at once).
template <class H>
void AddUsers(H &h, uint64_t first, uint64_t last) {
    for (uint64_t n = first; n <= last; ++n)
        h.delivery.add(H::kForm ? MakeIdentification(n, UserOf(n)) : MakeRecord(n, UserOf(n)));
}

template <class H>
void ExpectAllAccountedFor(H &h, uint64_t rows) {
    const DeliveryStats &s = h.delivery.stats();
    EXPECT_EQ(s.sent + s.rejected + s.not_sent, rows);
    EXPECT_EQ(h.delivery.rejections().size(), s.rejected + s.not_sent);
}

}  // namespace

TEST(DeliveryRequestRefusals, WrongKeyOnAThousandIdentificationsIsOneRequest) {
    FormHarness h(Always(Answer(400, "invalid_api_key")), Limits(1024));
    AddUsers(h, 1, 1000);
    h.delivery.finish();

    EXPECT_EQ(h.delivery.stats().requests, 1u);
    EXPECT_EQ(h.delivery.state(), DeliveryState::kStopped);
    EXPECT_EQ(h.delivery.stop_reason(), StopReason::kBadApiKey);
    EXPECT_EQ(h.delivery.error(), "Invalid API key: [redacted]");
    EXPECT_EQ(h.delivery.stats().sent, 0u);
    EXPECT_EQ(h.delivery.stats().rejected, 0u);
    EXPECT_EQ(h.delivery.stats().not_sent, 1000u);
    ExpectAllAccountedFor(h, 1000);
    EXPECT_EQ(h.RejectionFor(1000)->reason, "not sent: Invalid API key: [redacted]");
}

TEST(DeliveryRequestRefusals, WrongKeyOnGroupIdentifyWithConcurrencyStopsAtOnce) {
    FormHarness h(Always(Answer(400, "invalid_api_key")), Limits(1024), FastPolicy(), 4);
    AddUsers(h, 1, 5000);
    h.delivery.finish();
    // The batches already in flight when the first answer arrives, no more.
    EXPECT_LE(h.delivery.stats().requests, 4u);
    EXPECT_EQ(h.delivery.stop_reason(), StopReason::kBadApiKey);
    EXPECT_EQ(h.delivery.stats().not_sent, 5000u);
    ExpectAllAccountedFor(h, 5000);
}

TEST(DeliveryRequestRefusals, PlainTextKeyErrorOnTheEventsEndpointToo) {
    Harness h(Always(Answer(400, "invalid_api_key")));
    AddUsers(h, 1, 1000);
    h.delivery.finish();
    EXPECT_EQ(h.delivery.stats().requests, 1u);
    EXPECT_EQ(h.delivery.stop_reason(), StopReason::kBadApiKey);
    EXPECT_EQ(h.delivery.stats().not_sent, 1000u);
}

TEST(DeliveryRequestRefusals, JsonKeyErrorOnTheFormEndpointToo) {
    FormHarness h(Always(Answer(400, R"({"code":400,"error":"Invalid API key: )" + kFormApiKey + R"("})")),
                  Limits(1024));
    AddUsers(h, 1, 1000);
    h.delivery.finish();
    EXPECT_EQ(h.delivery.stats().requests, 1u);
    EXPECT_EQ(h.delivery.stop_reason(), StopReason::kBadApiKey);
    for (const Rejection &r : h.delivery.rejections())
        EXPECT_EQ(r.reason.find(kFormApiKey), std::string::npos) << r.reason;
}

TEST(DeliveryRequestRefusals, MissingFieldIsARefusalNotABadKey) {
    for (const std::string &body : {std::string("missing_field"),
                                    std::string(R"({"code":400,"error":"Request missing required field","missing_field":"events"})")}) {
        Harness h(Always(Answer(400, body)));
        AddUsers(h, 1, 10);
        h.delivery.finish();
        EXPECT_EQ(h.delivery.stats().requests, 1u) << body;
        EXPECT_EQ(h.delivery.state(), DeliveryState::kStopped) << body;
        EXPECT_EQ(h.delivery.stop_reason(), StopReason::kRefused) << body;
    }
    FormHarness h(Always(Answer(400, "missing_event")));
    AddUsers(h, 1, 10);
    h.delivery.finish();
    EXPECT_EQ(h.delivery.stop_reason(), StopReason::kRefused);
}

TEST(DeliveryRequestRefusals, OtherEndsOfARunCarryNoStopReason) {
    Harness ok(Always(Ok()));
    AddUsers(ok, 1, 3);
    ok.delivery.finish();
    EXPECT_EQ(ok.delivery.stop_reason(), StopReason::kNone);

    Harness failed(Always(Answer(503, "")));  // retry budget spent
    AddUsers(failed, 1, 3);
    failed.delivery.finish();
    EXPECT_EQ(failed.delivery.state(), DeliveryState::kFailed);
    EXPECT_EQ(failed.delivery.stop_reason(), StopReason::kNone);

    Harness forbidden(Always(Answer(403, R"({"code":403,"error":"Forbidden"})")));
    AddUsers(forbidden, 1, 3);
    forbidden.delivery.finish();
    EXPECT_EQ(forbidden.delivery.stop_reason(), StopReason::kRefused);
}

// ------------------------------------------------ bisection's safety net

// Regression: an unrecognised answer that refuses every request whatever it
// carries used to be bisected down to single records (1,999 requests for
// 1,000 rows, every row "rejected"). Now the run stops after a few requests
// and reports every row not sent, none rejected.
TEST(DeliveryBisection, RefusalAlikeForEveryPartStopsTheRunInAFewRequests) {
    for (size_t concurrency : {1u, 4u}) {
        for (bool one_user : {false, true}) {  // one user: the halves go one after the other
            FormHarness h(Always(Answer(400, "Bad Request")), Limits(1024), FastPolicy(), concurrency);
            if (one_user) h.AddRows(1, 1000); else AddUsers(h, 1, 1000);
            h.delivery.finish();
            SCOPED_TRACE("concurrency " + std::to_string(concurrency) + (one_user ? ", one user" : ""));

            uint64_t requests = h.delivery.stats().requests;
            EXPECT_NE(requests, 1999u);
            EXPECT_LE(requests, 22u);  // at most one path down (log2 1000 = 10 levels) and a pair
            EXPECT_EQ(h.delivery.state(), DeliveryState::kStopped);
            EXPECT_EQ(h.delivery.stop_reason(), StopReason::kRefused);
            EXPECT_EQ(h.delivery.error(), "HTTP 400: Bad Request (every request refused alike)");
            EXPECT_EQ(h.delivery.stats().sent, 0u);
            EXPECT_EQ(h.delivery.stats().rejected, 0u);  // nothing blamed on a record
            EXPECT_EQ(h.delivery.stats().not_sent, 1000u);
            ExpectAllAccountedFor(h, 1000);
        }
    }
}

TEST(DeliveryBisection, RefusalAlikeOnTheEventsEndpointStopsTheRunToo) {
    Harness h(Always(Answer(400, R"({"code":400,"error":"Invalid JSON request body"})")), Limits(2000),
              FastPolicy(), 4);
    AddUsers(h, 1, 2000);
    h.delivery.finish();
    EXPECT_LE(h.delivery.stats().requests, 24u);
    EXPECT_EQ(h.delivery.stop_reason(), StopReason::kRefused);
    EXPECT_EQ(h.delivery.stats().not_sent, 2000u);
}

TEST(DeliveryBisection, OneBadRecordAmongAThousandIsIsolatedInAFewRequests) {
    for (uint64_t bad : {1u, 637u, 1000u}) {
        for (size_t concurrency : {1u, 4u}) {
            FormHarness h([bad](const Request &r) {
                return Contains(r.rows, bad) ? Answer(400, "invalid field values: user_id") : FormOk();
            }, Limits(1024), FastPolicy(), concurrency);
            AddUsers(h, 1, 1000);
            h.delivery.finish();
            SCOPED_TRACE("bad row " + std::to_string(bad) + ", concurrency " + std::to_string(concurrency));

            EXPECT_EQ(h.delivery.state(), DeliveryState::kRunning);
            EXPECT_EQ(h.delivery.stop_reason(), StopReason::kNone);
            EXPECT_LE(h.delivery.stats().requests, 21u);  // two per level of 10, plus the first
            EXPECT_EQ(h.RejectedRows(Outcome::kRejected), (Rows{bad}));
            ASSERT_NE(h.RejectionFor(bad), nullptr);
            EXPECT_EQ(h.RejectionFor(bad)->reason, "refused by Amplitude: HTTP 400: invalid field values: user_id");
            EXPECT_EQ(h.delivery.stats().sent, 999u);
            EXPECT_EQ(h.delivery.stats().not_sent, 0u);
            ExpectAllAccountedFor(h, 1000);
        }
    }
}

TEST(DeliveryBisection, RecordsRefusedAlikeAfterAnAcceptanceAreEachIsolated) {
    // Amplitude took the first batch: key and request shape are good, so two
    // records refused with the same text are records, not the request.
    FormHarness h([](const Request &r) {
        return Contains(r.rows, 150) || Contains(r.rows, 160) ? Answer(400, "invalid field values: user_id")
                                                              : FormOk();
    }, Limits(100));
    AddUsers(h, 1, 300);
    h.delivery.finish();
    EXPECT_EQ(h.delivery.state(), DeliveryState::kRunning);
    EXPECT_EQ(h.RejectedRows(Outcome::kRejected), (Rows{150, 160}));
    EXPECT_EQ(h.delivery.stats().sent, 298u);
    EXPECT_LT(h.delivery.stats().requests, 2u * 300u);
    ExpectAllAccountedFor(h, 300);
}

TEST(DeliveryBisection, RecordsRefusedAlikeBeforeAnyAcceptanceStopTheRun) {
    // The price of the bound: before Amplitude accepted anything, two bad
    // records in batches of different lanes look like a refusal of the
    // request. The run stops loudly with Amplitude's text; nothing is blamed
    // on a record. (Halves of one batch share its lane and go one after the
    // other, so within a lane the first half is isolated before the second.)
    // Full batches (4 records): tails would be merged into one request.
    std::vector<std::string> users = KeysInLanes(2, 4, false);
    FormHarness h([](const Request &r) {
        return Contains(r.rows, 2) || Contains(r.rows, 7) ? Answer(400, "invalid field values: user_id")
                                                          : FormOk();
    }, Limits(4), FastPolicy(), 4);
    h.AddRows(1, 4, users[0]);
    h.AddRows(5, 8, users[1]);
    h.delivery.finish();
    std::vector<Rows> sent = h.RequestRows();
    std::sort(sent.begin(), sent.end());
    EXPECT_EQ(sent, (std::vector<Rows>{Range(1, 4), Range(5, 8)}));
    EXPECT_EQ(h.delivery.stop_reason(), StopReason::kRefused);
    EXPECT_EQ(h.delivery.error(), "HTTP 400: invalid field values: user_id (every request refused alike)");
    EXPECT_EQ(h.delivery.stats().rejected, 0u);
    EXPECT_EQ(h.delivery.stats().not_sent, 8u);
}

TEST(DeliveryBisection, RecordsRefusedAlikeInOneLaneAreEachIsolated) {
    FormHarness h([](const Request &r) {
        return Contains(r.rows, 2) || Contains(r.rows, 7) ? Answer(400, "invalid field values: user_id")
                                                          : FormOk();
    }, Limits(1024), FastPolicy(), 1);
    AddUsers(h, 1, 8);
    h.delivery.finish();
    EXPECT_EQ(h.delivery.state(), DeliveryState::kRunning);
    EXPECT_EQ(h.RejectedRows(Outcome::kRejected), (Rows{2, 7}));
    EXPECT_EQ(h.delivery.stats().sent, 6u);
}

TEST(DeliveryBisection, AHeldRecordIsRejectedWhenItsSiblingIsAccepted) {
    // Rows 1 and 2 share a user, so {2} goes only after {1} was answered:
    // {1} is refused like its parent with nothing accepted yet, waits for {2}.
    FormHarness h([](const Request &r) {
        return Contains(r.rows, 1) ? Answer(400, "invalid field values: user_id") : FormOk();
    }, Limits(1024));
    h.AddRows(1, 2);
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2}, {1}, {2}}));
    EXPECT_EQ(h.RejectedRows(Outcome::kRejected), (Rows{1}));
    EXPECT_EQ(h.delivery.stats().sent, 1u);
    EXPECT_EQ(h.delivery.state(), DeliveryState::kRunning);
}

TEST(DeliveryBisection, AHeldRecordIsNotSentWhenItsSiblingStopsTheRun) {
    FormHarness h([](const Request &r) {
        if (r.rows == Rows{1, 2}) return Answer(400, "invalid field values: user_id");
        if (r.rows == Rows{1}) return Answer(400, "invalid field values: user_id");
        return Answer(400, "invalid_api_key");
    }, Limits(1024));
    h.AddRows(1, 2);
    h.delivery.finish();
    EXPECT_EQ(h.delivery.stop_reason(), StopReason::kBadApiKey);
    EXPECT_EQ(h.RejectedRows(Outcome::kNotSent), (Rows{1, 2}));
    EXPECT_EQ(h.RejectionFor(1)->reason, "not sent: Invalid API key: [redacted]");
    EXPECT_EQ(h.delivery.stats().rejected, 0u);
    ExpectAllAccountedFor(h, 2);
}

// Group Identify: at most 1024 group properties per request, counted over
// the request's identifications.
TEST(DeliveryBatching, PropertyLimitCountsOverTheRequest) {
    DeliveryLimits limits = Limits(1024);
    limits.max_properties = 1024;
    FormHarness h(Always(FormOk()), limits);
    auto add = [&](uint64_t n, size_t properties) {
        Record r = MakeIdentification(n, "user-" + std::to_string(n));
        r.property_count = properties;
        h.delivery.add(std::move(r));
    };
    for (uint64_t n = 1; n <= 11; ++n) add(n, 200);  // 5 x 200 = 1000 fit, a sixth does not
    add(12, 24);                                     // tops the last request up to exactly 1024
    add(13, 1024);
    add(14, 0);                                      // a record without properties still fits
    h.delivery.finish();
    EXPECT_EQ(h.RequestRows(), (std::vector<Rows>{{1, 2, 3, 4, 5}, {6, 7, 8, 9, 10}, {11, 12}, {13, 14}}));
    EXPECT_EQ(h.delivery.stats().sent, 14u);

    // 0 means no such limit.
    FormHarness unlimited(Always(FormOk()), Limits(1024));
    for (uint64_t n = 1; n <= 11; ++n) {
        Record r = MakeIdentification(n, "user-" + std::to_string(n));
        r.property_count = 200;
        unlimited.delivery.add(std::move(r));
    }
    unlimited.delivery.finish();
    EXPECT_EQ(unlimited.RequestRows(), (std::vector<Rows>{Range(1, 11)}));
}

// ================================== lanes and pacing, on simulated time
//
// The clock is fake: wait() jumps to the next answer (answer_delay after a
// request started) or to its timeout, so runs of minutes take milliseconds
// and their timings are exact.

namespace {

struct SimulatedHarness {
    SimulatedHarness(Responder responder, DeliveryLimits limits, size_t concurrency,
                     std::chrono::milliseconds delay, RetryPolicy policy = RetryPolicy())
        : format(kApiKey, 5),
          transport(std::move(responder)),
          start(Clock::now()),
          now(start),
          deadline(Clock::now() + std::chrono::seconds(60)),
          delivery(format, transport, kUrl, limits, policy, concurrency,
                   [this] { return Clock::now() > deadline; }, [this] { return now; }) {
        transport.virtual_now = &now;
        transport.answer_delay = delay;
    }
    double Seconds() const { return std::chrono::duration<double>(now - start).count(); }
    double Seconds(Clock::time_point t) const { return std::chrono::duration<double>(t - start).count(); }

    // Every row exactly once in accepted requests, each key's rows in order.
    void ExpectExactlyOnceInOrder(uint64_t rows) {
        std::vector<int> seen(rows + 1, 0);
        std::map<std::string, uint64_t> last;
        for (const Request &r : transport.requests) {
            if (transport.statuses[r.index] != 200) continue;
            for (size_t i = 0; i < r.rows.size(); ++i) {
                ASSERT_LE(r.rows[i], rows);
                seen[r.rows[i]]++;
                uint64_t &previous = last[r.keys[i]];
                EXPECT_LT(previous, r.rows[i]) << "key " << r.keys[i] << " out of order";
                previous = r.rows[i];
            }
        }
        for (uint64_t n = 1; n <= rows; ++n) ASSERT_EQ(seen[n], 1) << "row " << n;
    }

    EventsFormat format;
    FakeTransport transport;
    Clock::time_point start, now, deadline;
    Delivery delivery;
};

// Amplitude's per-ID rule as the mock applies it: a request is throttled
// when, for one of its IDs, its events plus the ID's events accepted in the
// last window exceed rate x window.
struct RateEnforcer {
    RateEnforcer(double rate, std::chrono::milliseconds window) : budget(rate * window.count() / 1000.0), window(window) {}

    HttpResponse operator()(const Request &r) {
        std::map<std::string, size_t> in_request;
        for (const nlohmann::json &e : r.json["events"]) {
            if (e.contains("user_id")) in_request["u:" + e["user_id"].get<std::string>()]++;
            if (e.contains("device_id")) in_request["d:" + e["device_id"].get<std::string>()]++;
        }
        std::string users;
        for (const auto &[id, count] : in_request) {
            auto &log = accepted[id];
            while (!log.empty() && r.started - log.front() >= window) log.pop_front();
            if (log.size() + count > budget) users += (users.empty() ? "" : ",") + ("\"" + id.substr(2) + "\":31");
        }
        if (!users.empty()) {
            ++throttled;
            return Answer(429, R"({"code":429,"error":"Too many requests for some devices and users","throttled_users":{)" +
                                   users + "}}");
        }
        for (const auto &[id, count] : in_request)
            for (size_t i = 0; i < count; ++i) accepted[id].push_back(r.started);
        return Ok();
    }

    double budget;
    std::chrono::milliseconds window;
    std::map<std::string, std::deque<Clock::time_point>> accepted;
    int throttled = 0;
};

}  // namespace

TEST(DeliveryLanes, TimeOrderedEventsOfManyUsersKeepEverySlotBusy) {
    // 100,000 events of 1,000 users interleaved, 200 ms answers, 4 slots:
    // the old rule sent one request at a time (every batch shares users).
    const uint64_t rows = 100000;
    SimulatedHarness h(Always(Ok()), delivery_limits(kHttpApiEndpoint, 2000), 4, std::chrono::milliseconds(200));
    for (uint64_t n = 1; n <= rows; ++n) h.delivery.add(MakeRecord(n, "user-" + std::to_string(n % 1000)));
    h.delivery.finish();

    ASSERT_EQ(h.delivery.state(), DeliveryState::kRunning) << h.delivery.error();
    EXPECT_EQ(h.delivery.stats().sent, rows);
    EXPECT_EQ(h.transport.overlapping_starts, 0);
    EXPECT_EQ(h.transport.max_in_flight, 4u);
    for (const Request &r : h.transport.requests) EXPECT_LE(r.rows.size(), 2000u);
    h.ExpectExactlyOnceInOrder(rows);
    double seconds = h.Seconds();
    double busy = std::chrono::duration<double>(h.transport.busy_slot_time).count() / (4 * seconds);
    double rate = rows / seconds;
    RecordProperty("events_per_second", std::to_string(rate));
    std::printf("    100k events, 1,000 users, 4 slots, 200 ms: %.2f s simulated, %.0f events/s, slots busy %.0f%%, %zu requests\n",
                seconds, rate, busy * 100, h.transport.requests.size());
    EXPECT_GE(busy, 0.8);
    EXPECT_GE(rate, 0.8 * 4 * 2000 / 0.2);
    EXPECT_EQ(h.delivery.stats().pacing_wait_ms, 0u);
}

TEST(DeliveryLanes, ALoneHeavyDeviceDoesNotStallTheOtherLanes) {
    // One device's 20,000 events first (ordered by user), then 20,000 of
    // many: the others flow beside the heavy lane's one-at-a-time requests.
    SimulatedHarness h(Always(Ok()), delivery_limits(kBatchEndpoint, 2000), 4, std::chrono::milliseconds(200));
    for (uint64_t n = 1; n <= 20000; ++n) h.delivery.add(MakeRecord(n, "user-heavy"));
    for (uint64_t n = 20001; n <= 40000; ++n) h.delivery.add(MakeRecord(n, "user-" + std::to_string(n % 500)));
    h.delivery.finish();
    ASSERT_EQ(h.delivery.state(), DeliveryState::kRunning) << h.delivery.error();
    h.ExpectExactlyOnceInOrder(40000);
    EXPECT_GT(h.transport.max_in_flight, 1u);
    // The heavy lane alone needs 10 answers in a row: 2 s. The rest go beside it.
    EXPECT_LT(h.Seconds(), 3.0);
}

TEST(DeliveryLanes, AThrottledUserDoesNotStallTheOtherLanes) {
    // Amplitude throttles one user three times in a row (30 s pauses): the
    // 499 other users' events, interleaved with it, are all accepted within
    // the first two seconds; the throttled user's arrive later, once, in order.
    int refusals = 0;
    Responder responder = [&](const Request &r) {
        if (refusals < 3 && std::count(r.keys.begin(), r.keys.end(), "user-stuck")) {
            ++refusals;
            return Answer(429, R"({"code":429,"error":"Too many requests for some devices and users","throttled_users":{"user-stuck":31}})");
        }
        return Ok();
    };
    SimulatedHarness h(responder, delivery_limits(kHttpApiEndpoint, 2000), 4, std::chrono::milliseconds(200));
    const uint64_t rows = 10000;
    for (uint64_t n = 1; n <= rows; ++n)
        h.delivery.add(MakeRecord(n, n % 20 == 0 ? "user-stuck" : "user-" + std::to_string(n % 499)));
    h.delivery.finish();

    ASSERT_EQ(h.delivery.state(), DeliveryState::kRunning) << h.delivery.error();
    EXPECT_EQ(refusals, 3);
    h.ExpectExactlyOnceInOrder(rows);
    for (const Request &r : h.transport.requests) {
        if (h.transport.statuses[r.index] != 200) continue;
        if (std::any_of(r.keys.begin(), r.keys.end(), [](const std::string &k) { return k != "user-stuck"; })) {
            EXPECT_LT(h.Seconds(r.started), 2.0) << "request " << r.index;
        }
    }
    EXPECT_GE(h.Seconds(), 90.0);  // three pauses of the throttled user
}

TEST(DeliveryPacing, AHeavyUserIsPacedNeverThrottledWhileOthersFlow) {
    // 3,000 events of one user among 5,000 of 500 light users on
    // /2/httpapi (900 events of one ID per 30 s).
    RateEnforcer amplitude(30, std::chrono::milliseconds(30000));
    SimulatedHarness h(std::ref(amplitude), delivery_limits(kHttpApiEndpoint, 2000), 4,
                       std::chrono::milliseconds(200));
    uint64_t n = 0;
    for (int i = 0; i < 5000; ++i) {
        h.delivery.add(MakeRecord(++n, "user-" + std::to_string(i % 500)));
        if (i % 5 < 3) h.delivery.add(MakeRecord(++n, "user-heavy"));
    }
    h.delivery.finish();

    ASSERT_EQ(h.delivery.state(), DeliveryState::kRunning) << h.delivery.error();
    EXPECT_EQ(amplitude.throttled, 0);
    h.ExpectExactlyOnceInOrder(n);
    EXPECT_EQ(h.delivery.stats().sent, n);
    // Light users' events all went within the first second.
    for (const Request &r : h.transport.requests) {
        if (std::any_of(r.keys.begin(), r.keys.end(), [](const std::string &k) { return k != "user-heavy"; })) {
            EXPECT_LT(h.Seconds(r.started), 1.0);
        }
    }
    // 900 at once, then 900 per window: about 3 windows for 3,000.
    std::printf("    heavy user, 3,000 events on /2/httpapi: %.1f s simulated, pacing held %.1f s, %zu requests\n",
                h.Seconds(), h.delivery.stats().pacing_wait_ms / 1000.0, h.transport.requests.size());
    EXPECT_GT(h.Seconds(), 90.0);
    EXPECT_LT(h.Seconds(), 95.0);
    EXPECT_GT(h.delivery.stats().pacing_wait_ms, 85000u);
}

TEST(DeliveryPacing, A429NamingAUserPausesItThenItResumesAtTheAllowedRate) {
    // Amplitude throttles the user once (its own count is unknown to us):
    // it waits the pause, then goes at the allowed rate, never in a loop.
    RateEnforcer amplitude(30, std::chrono::milliseconds(30000));
    bool once = false;
    Responder responder = [&](const Request &r) {
        if (!once && std::count(r.keys.begin(), r.keys.end(), "user-heavy")) {
            once = true;
            return Answer(429, R"({"code":429,"error":"Too many requests for some devices and users","throttled_users":{"user-heavy":31}})");
        }
        return amplitude(r);
    };
    SimulatedHarness h(responder, delivery_limits(kHttpApiEndpoint, 2000), 4, std::chrono::milliseconds(200));
    for (uint64_t n = 1; n <= 1200; ++n) h.delivery.add(MakeRecord(n, n % 2 ? "user-heavy" : "user-" + std::to_string(n % 100)));
    h.delivery.finish();

    ASSERT_EQ(h.delivery.state(), DeliveryState::kRunning) << h.delivery.error();
    EXPECT_TRUE(once);
    EXPECT_EQ(amplitude.throttled, 0);
    h.ExpectExactlyOnceInOrder(1200);
    // 600 events: the first try is refused, they go after the 30 s pause
    // (within one window's allowance, counted conservatively).
    EXPECT_GE(h.Seconds(), 30.0);
    EXPECT_LT(h.Seconds(), 61.0);
}

TEST(DeliveryPacing, ProjectCapSpreadsRequestsOverSeconds) {
    DeliveryLimits limits = delivery_limits(kHttpApiEndpoint, 2000, 1000);
    SimulatedHarness h(Always(Ok()), limits, 4, std::chrono::milliseconds(50));
    for (uint64_t n = 1; n <= 5000; ++n) h.delivery.add(MakeRecord(n, "user-" + std::to_string(n % 300)));
    h.delivery.finish();

    ASSERT_EQ(h.delivery.state(), DeliveryState::kRunning) << h.delivery.error();
    h.ExpectExactlyOnceInOrder(5000);
    // No second holds more than 1,000 events' worth of request starts.
    const auto &req = h.transport.requests;
    for (size_t i = 0; i < req.size(); ++i) {
        size_t events = 0;
        for (size_t j = i; j < req.size() && req[j].started - req[i].started < std::chrono::seconds(1); ++j)
            events += req[j].rows.size();
        EXPECT_LE(events, 1000u) << "from request " << i;
    }
    EXPECT_GE(h.Seconds(), 4.0);
    EXPECT_LT(h.Seconds(), 6.0);
    EXPECT_GT(h.delivery.stats().pacing_wait_ms, 0u);
}

TEST(DeliveryPacing, AProjectWide429PausesEverythingOnceForThePause) {
    RetryPolicy policy;
    policy.project_throttle_pause_ms = 60000;
    bool once = false;
    Responder responder = [&](const Request &) {
        if (once) return Ok();
        once = true;
        return Answer(429, R"({"code":429,"error":"Too many requests"})");
    };
    SimulatedHarness h(responder, delivery_limits(kHttpApiEndpoint, 2000), 4, std::chrono::milliseconds(200), policy);
    for (uint64_t n = 1; n <= 20000; ++n) h.delivery.add(MakeRecord(n, "user-" + std::to_string(n % 1000)));
    h.delivery.finish();

    ASSERT_EQ(h.delivery.state(), DeliveryState::kRunning) << h.delivery.error();
    h.ExpectExactlyOnceInOrder(20000);
    const auto &req = h.transport.requests;
    Clock::time_point refused_at = req[0].started + std::chrono::milliseconds(200);
    for (const Request &r : req)
        EXPECT_FALSE(r.started > refused_at && r.started < refused_at + std::chrono::seconds(60)) << r.index;
    // The pause, then the rest at full speed: not a pause per batch.
    EXPECT_GE(h.Seconds(), 60.2);
    EXPECT_LT(h.Seconds(), 62.0);
}
