// Unit tests for src/core/amplitude_response: classify_events_response for
// each kind of answer Amplitude (or a proxy, or the network) gives, and
// redact().
#include "amplitude_response.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace amplitude_sync;

namespace {

const std::string kKey = "0123456789abcdef0123456789abcdef";

ResponseVerdict Classify(int status, const std::string &body) {
    HttpResponse r;
    r.status = status;
    r.body = body;
    return classify_events_response(r, kKey);
}

// "index:field" for each refused record, in the verdict's order.
std::vector<std::string> Refused(const ResponseVerdict &v) {
    std::vector<std::string> out;
    for (const RefusedIndex &r : v.refused) out.push_back(std::to_string(r.index) + ":" + r.field);
    return out;
}

// redact() on its own thread, given 2 s: nullopt when it has not returned by
// then, so a looping redact() fails the test instead of hanging the suite
// (the thread is detached and dies with the process).
std::optional<std::string> RedactWithin2s(const std::string &text, const std::string &secret) {
    auto result = std::make_shared<std::promise<std::string>>();
    std::future<std::string> answer = result->get_future();
    std::thread([result, text, secret] { result->set_value(redact(text, secret)); }).detach();
    if (answer.wait_for(std::chrono::seconds(2)) != std::future_status::ready) return std::nullopt;
    return answer.get();
}

using Strings = std::vector<std::string>;
using Indices = std::vector<size_t>;

}  // namespace

// ------------------------------------------------------------- transport

TEST(ClassifyResponse, TransportErrorIsRetriedWithKeyRedacted) {
    HttpResponse r;
    r.transport_error = "Connection reset by peer (api_key=" + kKey + ")";
    ResponseVerdict v = classify_events_response(r, kKey);
    EXPECT_EQ(v.kind, ResponseKind::kRetry);
    EXPECT_EQ(v.error, "Connection reset by peer (api_key=[redacted])");
}

TEST(ClassifyResponse, TimeoutIsRetried) {
    HttpResponse r;
    r.timed_out = true;
    r.transport_error = "Operation timed out after 30000 milliseconds";
    ResponseVerdict v = classify_events_response(r, kKey);
    EXPECT_EQ(v.kind, ResponseKind::kRetry);
    EXPECT_EQ(v.error, "request timed out");
}

// ------------------------------------------------------------------- 200

TEST(ClassifyResponse, ConfirmedSuccess) {
    ResponseVerdict v = Classify(
        200, R"({"code":200,"events_ingested":3,"payload_size_bytes":512,"server_upload_time":1714566600250})");
    EXPECT_EQ(v.kind, ResponseKind::kAccepted);
    EXPECT_EQ(v.error, "");
    EXPECT_TRUE(v.refused.empty());
}

TEST(ClassifyResponse, Http200WithoutConfirmationIsRetried) {
    ResponseVerdict v = Classify(200, "<html>\n<body>OK</body></html>");
    EXPECT_EQ(v.kind, ResponseKind::kRetry);
    EXPECT_EQ(v.error, "HTTP 200 without Amplitude's confirmation: HTTP 200: <html> <body>OK</body></html>");

    v = Classify(200, "");
    EXPECT_EQ(v.kind, ResponseKind::kRetry);
    EXPECT_EQ(v.error, "HTTP 200 without Amplitude's confirmation: HTTP 200");

    EXPECT_EQ(Classify(200, R"({"code":"200"})").kind, ResponseKind::kRetry);
    EXPECT_EQ(Classify(200, R"({"events_ingested":3})").kind, ResponseKind::kRetry);
    EXPECT_EQ(Classify(200, R"({"code":200,"events_ingested":3)").kind, ResponseKind::kRetry);  // cut
    EXPECT_EQ(Classify(200, "[200]").kind, ResponseKind::kRetry);
}

// ------------------------------------------------------------------- 400

TEST(ClassifyResponse, Http400WithIndexMapsRefusesThoseRecords) {
    ResponseVerdict v = Classify(400, R"({"code":400,"error":"Invalid field values on some events",
        "events_with_invalid_fields":{"time":[3,1]},
        "events_with_missing_fields":{"event_type":[0]},
        "events_with_invalid_id_lengths":{"user_id":[5],"device_id":[6]}})");
    EXPECT_EQ(v.kind, ResponseKind::kRefusedSome);
    EXPECT_EQ(v.error, "Invalid field values on some events");
    // Maps in a fixed order; fields within a map in key order.
    EXPECT_EQ(Refused(v), (Strings{"3:time", "1:time", "0:event_type", "6:device_id", "5:user_id"}));
    EXPECT_EQ(v.refused[0].reason, "Invalid field values on some events (field \"time\")");
    EXPECT_EQ(v.refused[4].reason, "Invalid field values on some events (field \"user_id\")");
}

TEST(ClassifyResponse, Http400SilencedEventsAreRefused) {
    ResponseVerdict v = Classify(400, R"({"code":400,"error":"Events silenced for device_id",
        "silenced_devices":["device-9"],"silenced_events":[2,4]})");
    EXPECT_EQ(v.kind, ResponseKind::kRefusedSome);
    EXPECT_EQ(Refused(v), (Strings{"2:device_id", "4:device_id"}));
    EXPECT_EQ(v.refused[1].reason, "Amplitude has silenced this device_id");
}

TEST(ClassifyResponse, Http400IgnoresIndicesThatAreNotNonNegativeIntegers) {
    ResponseVerdict v = Classify(
        400, R"({"code":400,"error":"Invalid field values on some events",
                 "events_with_invalid_fields":{"time":[-1,"2",1.5,null],"ip":"7"},"silenced_events":[-3]})");
    EXPECT_EQ(v.kind, ResponseKind::kRefusedWhole);
    EXPECT_TRUE(v.refused.empty());
    EXPECT_EQ(v.error, "Invalid field values on some events");
}

TEST(ClassifyResponse, Http400WithoutIndicesRefusesTheWholeRequest) {
    ResponseVerdict v = Classify(400, R"({"code":400,"error":"Invalid JSON request body"})");
    EXPECT_EQ(v.kind, ResponseKind::kRefusedWhole);
    EXPECT_EQ(v.error, "Invalid JSON request body");

    v = Classify(400, R"({"code":400})");
    EXPECT_EQ(v.kind, ResponseKind::kRefusedWhole);
    EXPECT_EQ(v.error, R"(HTTP 400: {"code":400})");
}

TEST(ClassifyResponse, Http400FromAProxyIsRefusedWhole) {
    ResponseVerdict v = Classify(400, "<html>Bad Request</html>");
    EXPECT_EQ(v.kind, ResponseKind::kRefusedWhole);
    EXPECT_EQ(v.error, "HTTP 400: <html>Bad Request</html>");
}

TEST(ClassifyResponse, InvalidApiKeyIsFatalAndRedacted) {
    ResponseVerdict v = Classify(400, R"({"code":400,"error":"Invalid API key: )" + kKey + R"("})");
    EXPECT_EQ(v.kind, ResponseKind::kFatal);
    EXPECT_EQ(v.stop, StopReason::kBadApiKey);
    EXPECT_EQ(v.error, "Invalid API key: [redacted]");
    EXPECT_TRUE(v.refused.empty());
}

TEST(ClassifyResponse, MissingFieldIsFatal) {
    ResponseVerdict v = Classify(
        400, R"({"code":400,"error":"Request missing required field","missing_field":"api_key",
                 "events_with_missing_fields":{"event_type":[0]}})");
    EXPECT_EQ(v.kind, ResponseKind::kFatal);
    EXPECT_EQ(v.stop, StopReason::kRefused);
    EXPECT_EQ(v.error, "Request missing required field (missing_field: \"api_key\")");
    EXPECT_TRUE(v.refused.empty());
}

// ------------------------------------------------------------------- 413

TEST(ClassifyResponse, Http413MeansSplit) {
    ResponseVerdict v = Classify(413, R"({"code":413,"error":"Payload too large"})");
    EXPECT_EQ(v.kind, ResponseKind::kTooLarge);
    EXPECT_EQ(v.error, "payload too large (HTTP 413)");
    EXPECT_EQ(Classify(413, "<html>Request Entity Too Large</html>").kind, ResponseKind::kTooLarge);
}

// ------------------------------------------------------------------- 429

TEST(ClassifyResponse, Http429NamesThrottledAndOverQuotaIds) {
    ResponseVerdict v = Classify(429, R"({"code":429,"error":"Too many requests for some devices and users",
        "eps_threshold":30,"throttled_devices":{"device-a":31},"throttled_users":{"user-b":32,"user-c":40},
        "throttled_events":[3,4,7],"exceeded_daily_quota_users":{"user-q":500200},
        "exceeded_daily_quota_devices":{"device-q":500900}})");
    EXPECT_EQ(v.kind, ResponseKind::kThrottled);
    EXPECT_EQ(v.error, "Too many requests for some devices and users");
    EXPECT_EQ(v.throttled_events, (Indices{3, 4, 7}));
    EXPECT_EQ(v.throttled_devices, (Strings{"device-a"}));
    EXPECT_EQ(v.throttled_users, (Strings{"user-b", "user-c"}));
    EXPECT_EQ(v.quota_users, (Strings{"user-q"}));
    EXPECT_EQ(v.quota_devices, (Strings{"device-q"}));
    EXPECT_FALSE(v.project_throttled());
}

TEST(ClassifyResponse, Http429WithOnlyQuotaIsNotProjectWide) {
    ResponseVerdict v = Classify(429, R"({"code":429,"error":"x","exceeded_daily_quota_users":{"user-q":1}})");
    EXPECT_EQ(v.kind, ResponseKind::kThrottled);
    EXPECT_FALSE(v.project_throttled());
    EXPECT_EQ(v.quota_users, (Strings{"user-q"}));
}

TEST(ClassifyResponse, Http429WithEmptyMapsIsProjectWide) {
    ResponseVerdict v = Classify(429, R"({"code":429,"error":"Too many requests","throttled_users":{},"throttled_events":[]})");
    EXPECT_EQ(v.kind, ResponseKind::kThrottled);
    EXPECT_TRUE(v.project_throttled());
    EXPECT_EQ(v.error, "Too many requests");

    v = Classify(429, "<html>slow down</html>");
    EXPECT_EQ(v.kind, ResponseKind::kThrottled);
    EXPECT_TRUE(v.project_throttled());
    EXPECT_EQ(v.error, "HTTP 429: <html>slow down</html>");
}

// ------------------------------------------------------------------- 5xx

TEST(ClassifyResponse, ServerErrorsAreRetried) {
    for (int status : {500, 502, 503, 504}) {
        ResponseVerdict v = Classify(status, "upstream\r\nfailed");
        EXPECT_EQ(v.kind, ResponseKind::kRetry) << status;
        EXPECT_EQ(v.error, "HTTP " + std::to_string(status) + ": upstream  failed");
    }
}

TEST(ClassifyResponse, UnlistedServerErrorsAreRetriedAsUnexpected) {
    for (int status : {501, 505, 520, 599}) {
        ResponseVerdict v = Classify(status, "");
        EXPECT_EQ(v.kind, ResponseKind::kRetry) << status;
        EXPECT_EQ(v.error, "unexpected answer: HTTP " + std::to_string(status));
    }
}

TEST(ClassifyResponse, LongBodiesAreCutInErrors) {
    ResponseVerdict v = Classify(502, std::string(500, 'x'));
    EXPECT_EQ(v.error, "HTTP 502: " + std::string(200, 'x') + "...");
}

// ------------------------------------------------------------- fatal ones

TEST(ClassifyResponse, ForbiddenIsFatal) {
    ResponseVerdict v = Classify(403, R"({"code":403,"error":"Forbidden"})");
    EXPECT_EQ(v.kind, ResponseKind::kFatal);
    EXPECT_EQ(v.error, "forbidden by Amplitude (HTTP 403): Forbidden");

    v = Classify(403, "<html>denied</html>");
    EXPECT_EQ(v.kind, ResponseKind::kFatal);
    EXPECT_EQ(v.error, "forbidden by Amplitude (HTTP 403): HTTP 403: <html>denied</html>");
}

TEST(ClassifyResponse, OtherClientStatusesAreFatal) {
    for (int status : {301, 401, 404, 405, 409, 414}) {
        ResponseVerdict v = Classify(status, "nope");
        EXPECT_EQ(v.kind, ResponseKind::kFatal) << status;
        EXPECT_EQ(v.error, "unexpected answer: HTTP " + std::to_string(status) + ": nope");
    }
}

TEST(ClassifyResponse, KeyIsRedactedFromQuotedBodies) {
    ResponseVerdict v = Classify(404, "no project for key " + kKey);
    EXPECT_EQ(v.error, "unexpected answer: HTTP 404: no project for key [redacted]");
}

// ----------------------------------------------------------------- redact

TEST(Redact, ReplacesEveryOccurrence) {
    EXPECT_EQ(redact("k=SECRET&again=SECRETSECRET", "SECRET"), "k=[redacted]&again=[redacted][redacted]");
    EXPECT_EQ(redact("nothing here", "SECRET"), "nothing here");
}

TEST(Redact, SecretInsideTheMaskEnds) {
    // "[redacted]" itself contains "red" and "a": the search goes on after it.
    std::optional<std::string> out = RedactWithin2s("key=red red", "red");
    ASSERT_TRUE(out.has_value()) << "redact(\"key=red red\", \"red\") did not return within 2 s";
    EXPECT_EQ(*out, "key=[redacted] [redacted]");

    out = RedactWithin2s("a-a", "a");
    ASSERT_TRUE(out.has_value()) << "redact(\"a-a\", \"a\") did not return within 2 s";
    EXPECT_EQ(*out, "[redacted]-[redacted]");
}

TEST(Redact, EmptySecretChangesNothing) {
    EXPECT_EQ(redact("abc", ""), "abc");
}

TEST(Redact, CutsToMaxLength) {
    EXPECT_EQ(redact(std::string(301, 'a'), "k"), std::string(300, 'a') + "...");
    EXPECT_EQ(redact(std::string(300, 'a'), "k"), std::string(300, 'a'));
    EXPECT_EQ(redact("abcdef", "k", 4), "abcd...");
}

TEST(Redact, CutsOnACharacterBoundary) {
    // "aé€": cutting at 2 would split é, at 4 would split €.
    EXPECT_EQ(redact("a\xc3\xa9\xe2\x82\xac", "k", 2), "a...");
    EXPECT_EQ(redact("a\xc3\xa9\xe2\x82\xac", "k", 4), "a\xc3\xa9...");
}

TEST(Redact, RedactsBeforeCuttingSoNoPartOfTheKeyLeaks) {
    std::string out = redact(std::string(295, 'a') + "SECRETKEY", "SECRETKEY");
    EXPECT_EQ(out, std::string(295, 'a') + "[reda...");
}

// Errors are stored in sync_runs and raised: a proxy's Latin-1 page or a
// NUL in a body must not make storing them fail.
TEST(Redact, EscapesBytesThatAreNotValidUtf8) {
    EXPECT_EQ(redact(std::string("caf\xe9 \0!", 7), "k"), "caf\\xe9 \\x00!");
    EXPECT_EQ(Classify(502, "Bad gateway \xa0\xff").error, "HTTP 502: Bad gateway \\xa0\\xff");
    HttpResponse r;
    r.status = 500;
    r.body = "r\xe9ponse";
    EXPECT_EQ(classify_form_response(r, kKey).error, "HTTP 500: r\\xe9ponse");
}

// ====================================================== classify_form_response
// /identify and /groupidentify answer in plain text and name no records.

namespace {

ResponseVerdict ClassifyForm(int status, const std::string &body) {
    HttpResponse r;
    r.status = status;
    r.body = body;
    return classify_form_response(r, kKey);
}

// Nothing an events answer may carry besides kind and error.
void ExpectNoIds(const ResponseVerdict &v) {
    EXPECT_TRUE(v.refused.empty());
    EXPECT_TRUE(v.throttled_events.empty());
    EXPECT_TRUE(v.throttled_users.empty());
    EXPECT_TRUE(v.throttled_devices.empty());
    EXPECT_TRUE(v.quota_users.empty());
    EXPECT_TRUE(v.quota_devices.empty());
}

}  // namespace

TEST(ClassifyFormResponse, Http200IsAcceptedWhateverTheBody) {
    for (const std::string &body : Strings{"success", "", "<html>ok</html>", R"({"code":500})", "failure"}) {
        ResponseVerdict v = ClassifyForm(200, body);
        EXPECT_EQ(v.kind, ResponseKind::kAccepted) << body;
        EXPECT_FALSE(v.whole_batch_throttled);
        ExpectNoIds(v);
    }
}

TEST(ClassifyFormResponse, InvalidApiKeyIsFatalAndRedacted) {
    for (const std::string &body : Strings{"Invalid API key: " + kKey, "invalid api_key",
                                           "error: invalid api_key " + kKey, R"({"error":"Invalid API key"})"}) {
        ResponseVerdict v = ClassifyForm(400, body);
        EXPECT_EQ(v.kind, ResponseKind::kFatal) << body;
        EXPECT_EQ(v.stop, StopReason::kBadApiKey) << body;
        EXPECT_EQ(v.error, "Invalid API key: [redacted]") << body;
        EXPECT_EQ(v.error.find(kKey), std::string::npos);
    }
}

TEST(ClassifyFormResponse, MissingEventIsFatal) {
    ResponseVerdict v = ClassifyForm(400, "missing_event");
    EXPECT_EQ(v.kind, ResponseKind::kFatal);
    EXPECT_EQ(v.error, "HTTP 400: missing_event");
    v = ClassifyForm(400, "Bad request: missing_event (identification)");
    EXPECT_EQ(v.kind, ResponseKind::kFatal);
    EXPECT_EQ(v.error, "HTTP 400: Bad request: missing_event (identification)");
}

TEST(ClassifyFormResponse, OtherHttp400RefusesTheWholeRequest) {
    for (const std::string &body : Strings{"invalid field values: user_id", "", R"({"code":400,"error":"bad"})",
                                           "Invalid API", "missing event"}) {
        ResponseVerdict v = ClassifyForm(400, body);
        EXPECT_EQ(v.kind, ResponseKind::kRefusedWhole) << body;
        EXPECT_EQ(v.error, body.empty() ? "HTTP 400" : "HTTP 400: " + body);
        ExpectNoIds(v);
    }
}

TEST(ClassifyFormResponse, Http413And414MeanTooLarge) {
    ResponseVerdict v = ClassifyForm(413, "Payload too large");
    EXPECT_EQ(v.kind, ResponseKind::kTooLarge);
    EXPECT_EQ(v.error, "payload too large (HTTP 413)");
    v = ClassifyForm(414, "<html>URI Too Long</html>");
    EXPECT_EQ(v.kind, ResponseKind::kTooLarge);
    EXPECT_EQ(v.error, "payload too large (HTTP 414)");
}

TEST(ClassifyFormResponse, Http429ThrottlesTheWholeBatch) {
    ResponseVerdict v = ClassifyForm(429, "Too many requests");
    EXPECT_EQ(v.kind, ResponseKind::kThrottled);
    EXPECT_TRUE(v.whole_batch_throttled);
    EXPECT_FALSE(v.project_throttled());
    EXPECT_EQ(v.error, "HTTP 429: Too many requests");
    ExpectNoIds(v);
    // A JSON body naming IDs is not read: the identify APIs have no such contract.
    v = ClassifyForm(429, R"({"code":429,"throttled_users":{"user-1":31},"throttled_events":[0]})");
    EXPECT_EQ(v.kind, ResponseKind::kThrottled);
    EXPECT_TRUE(v.whole_batch_throttled);
    ExpectNoIds(v);
}

TEST(ClassifyFormResponse, ForbiddenIsFatal) {
    ResponseVerdict v = ClassifyForm(403, "Forbidden");
    EXPECT_EQ(v.kind, ResponseKind::kFatal);
    EXPECT_EQ(v.error, "forbidden by Amplitude (HTTP 403: Forbidden)");
    v = ClassifyForm(403, "");
    EXPECT_EQ(v.error, "forbidden by Amplitude (HTTP 403)");
}

TEST(ClassifyFormResponse, ServerErrorsAreRetried) {
    for (int status : {500, 502, 503, 504, 501, 599}) {
        ResponseVerdict v = ClassifyForm(status, "upstream\r\nfailed");
        EXPECT_EQ(v.kind, ResponseKind::kRetry) << status;
        EXPECT_EQ(v.error, "HTTP " + std::to_string(status) + ": upstream  failed");
    }
}

TEST(ClassifyFormResponse, OtherStatusesAreFatal) {
    for (int status : {301, 401, 404, 405, 409, 418}) {
        ResponseVerdict v = ClassifyForm(status, "nope");
        EXPECT_EQ(v.kind, ResponseKind::kFatal) << status;
        EXPECT_EQ(v.error, "HTTP " + std::to_string(status) + ": nope");
    }
}

TEST(ClassifyFormResponse, TransportFailuresAreRetriedWithKeyRedacted) {
    HttpResponse r;
    r.transport_error = "Connection reset by peer (api_key=" + kKey + ")";
    ResponseVerdict v = classify_form_response(r, kKey);
    EXPECT_EQ(v.kind, ResponseKind::kRetry);
    EXPECT_EQ(v.error, "Connection reset by peer (api_key=[redacted])");
    r.timed_out = true;
    v = classify_form_response(r, kKey);
    EXPECT_EQ(v.kind, ResponseKind::kRetry);
    EXPECT_EQ(v.error, "request timed out");
}

TEST(ClassifyFormResponse, KeyIsRedactedAndBodiesCutInErrors) {
    for (int status : {400, 404, 429, 503}) {
        ResponseVerdict v = ClassifyForm(status, "api_key=" + kKey + " was refused");
        EXPECT_EQ(v.error, "HTTP " + std::to_string(status) + ": api_key=[redacted] was refused") << status;
    }
    ResponseVerdict v = ClassifyForm(403, "key " + kKey);
    EXPECT_EQ(v.error, "forbidden by Amplitude (HTTP 403: key [redacted])");
    v = ClassifyForm(503, std::string(500, 'x'));
    EXPECT_EQ(v.error, "HTTP 503: " + std::string(200, 'x') + "...");
    // The key at the cut is redacted before cutting: no part of it leaks.
    v = ClassifyForm(400, std::string(190, 'y') + kKey);
    EXPECT_EQ(v.error, "HTTP 400: " + std::string(190, 'y') + "[redacted]");
}

// ========================================================= request refusals
// The same on every endpoint whatever the body's format: the key error
// (JSON "Invalid API key: ...", plain "invalid_api_key") and missing parts of
// the request (missing_field, missing_event) stop the run with a reason.

namespace {

using Classifier = ResponseVerdict (*)(const HttpResponse &, const std::string &);

struct Endpoint {
    const char *name;
    Classifier classify;
};

const Endpoint kEndpoints[] = {{"events", classify_events_response}, {"form", classify_form_response}};

ResponseVerdict ClassifyWith(const Endpoint &e, int status, const std::string &body) {
    HttpResponse r;
    r.status = status;
    r.body = body;
    return e.classify(r, kKey);
}

}  // namespace

TEST(RequestRefusal, PlainTextInvalidApiKeyOnEveryEndpoint) {
    for (const Endpoint &e : kEndpoints) {
        for (const std::string &body : Strings{"invalid_api_key", "invalid_api_key\n", "INVALID_API_KEY",
                                               "Invalid-Api-Key", "InvalidApiKey", R"("invalid_api_key")"}) {
            ResponseVerdict v = ClassifyWith(e, 400, body);
            EXPECT_EQ(v.kind, ResponseKind::kFatal) << e.name << " " << body;
            EXPECT_EQ(v.stop, StopReason::kBadApiKey) << e.name << " " << body;
            EXPECT_EQ(v.error, "Invalid API key: [redacted]") << e.name << " " << body;
        }
    }
}

TEST(RequestRefusal, JsonInvalidApiKeyOnEveryEndpointNeverQuotesTheKey) {
    // Amplitude echoes the key; an altered echo (trimmed, cut) must not leak either.
    for (const Endpoint &e : kEndpoints) {
        for (const std::string &echoed : Strings{kKey, kKey.substr(0, 20), " " + kKey + " "}) {
            ResponseVerdict v = ClassifyWith(e, 400, R"({"code":400,"error":"Invalid API key: )" + echoed + R"("})");
            EXPECT_EQ(v.kind, ResponseKind::kFatal) << e.name;
            EXPECT_EQ(v.stop, StopReason::kBadApiKey) << e.name;
            EXPECT_EQ(v.error, "Invalid API key: [redacted]") << e.name;
        }
    }
}

TEST(RequestRefusal, KeyErrorUnderOtherClientStatusesIsStillTheKey) {
    for (const Endpoint &e : kEndpoints) {
        for (int status : {401, 403}) {
            ResponseVerdict v = ClassifyWith(e, status, "invalid_api_key");
            EXPECT_EQ(v.kind, ResponseKind::kFatal) << e.name << status;
            EXPECT_EQ(v.stop, StopReason::kBadApiKey) << e.name << status;
        }
    }
}

TEST(RequestRefusal, MissingFieldInJsonOrPlainTextIsARefusal) {
    for (const Endpoint &e : kEndpoints) {
        ResponseVerdict v = ClassifyWith(
            e, 400, R"({"code":400,"error":"Request missing required field","missing_field":"events"})");
        EXPECT_EQ(v.kind, ResponseKind::kFatal) << e.name;
        EXPECT_EQ(v.stop, StopReason::kRefused) << e.name;
        EXPECT_EQ(v.error, "Request missing required field (missing_field: \"events\")") << e.name;

        for (const std::string &body : Strings{"missing_field", "missing_event", "MISSING_FIELD: api_key"}) {
            v = ClassifyWith(e, 400, body);
            EXPECT_EQ(v.kind, ResponseKind::kFatal) << e.name << " " << body;
            EXPECT_EQ(v.stop, StopReason::kRefused) << e.name << " " << body;
            EXPECT_EQ(v.error, "HTTP 400: " + body) << e.name;
        }
    }
}

TEST(RequestRefusal, OtherFatalAnswersAreRefusals) {
    for (const Endpoint &e : kEndpoints) {
        for (int status : {301, 403, 404, 409}) {
            ResponseVerdict v = ClassifyWith(e, status, "nope");
            EXPECT_EQ(v.kind, ResponseKind::kFatal) << e.name << status;
            EXPECT_EQ(v.stop, StopReason::kRefused) << e.name << status;
        }
    }
}

TEST(RequestRefusal, RecordLevelAndNonFatalAnswersCarryNoStopReason) {
    for (const Endpoint &e : kEndpoints) {
        for (auto [status, body] : std::vector<std::pair<int, std::string>>{
                 {200, "success"},
                 {400, R"({"code":400,"error":"Invalid field values on some events","events_with_invalid_fields":{"time":[0]}})"},
                 {400, "invalid field values: user_id"},
                 {400, "missing event"},
                 {400, R"({"code":400,"error":"Request missing required field","events_with_missing_fields":{"event_type":[0]}})"},
                 {413, "invalid_api_key"},
                 {429, "invalid_api_key"},
                 {503, "invalid_api_key"}}) {
            ResponseVerdict v = ClassifyWith(e, status, body);
            EXPECT_NE(v.kind, ResponseKind::kFatal) << e.name << " " << status << " " << body;
            EXPECT_EQ(v.stop, StopReason::kNone) << e.name << " " << status << " " << body;
            HttpResponse r;
            r.status = status;
            r.body = body;
            EXPECT_EQ(request_refusal(r), StopReason::kNone) << status << " " << body;
        }
    }
}

// Regression (issue 9.7): a non-ASCII key came back JSON-escaped in
// Amplitude's answer and was shown unredacted.
TEST(Redact, EveryFormTheKeyTravelsIn) {
    const std::string key = "bob-s\xc3\xa9" "cret/1";
    EXPECT_EQ(redact("Invalid API key: bob-s\\u00e9cret\\/1", key), "Invalid API key: [redacted]");
    EXPECT_EQ(redact("Invalid API key: bob-s\\u00e9cret/1", key), "Invalid API key: [redacted]");
    EXPECT_EQ(redact("api_key=bob-s%C3%A9cret%2F1", key), "api_key=[redacted]");
    EXPECT_EQ(redact("key bob-s\xc3\xa9" "cret/1 here", key), "key [redacted] here");
}
