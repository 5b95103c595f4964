// HTTP transport: several POSTs in flight over reused keep-alive connections
// (libcurl multi). Core file: no postgres.h; interrupts are the caller's
// business (wait() returns at least every timeout_ms so it can look).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "amplitude_response.hpp"

namespace amplitude_sync {

struct TransportOptions {
    long connect_timeout_ms = 10000;
    long request_timeout_ms = 30000;
    bool allow_plain_http = false;  // only for an endpoint a superuser set
    bool verify_tls = true;
    size_t max_response_bytes = 1 << 20;
};

class Transport {
public:
    virtual ~Transport() = default;
    // Starts a POST on slot (0 <= slot < slots). body must stay alive and
    // unchanged until the slot's answer has been returned by wait().
    virtual void start(size_t slot, const std::string &url, const std::string &content_type,
                       const std::string &body) = 0;
    // Waits at most timeout_ms for answers; appends (slot, answer) pairs.
    virtual void wait(int timeout_ms, std::vector<std::pair<size_t, HttpResponse>> &done) = 0;
    // Moves transfers along without waiting or polling; appends finished ones.
    virtual void advance(std::vector<std::pair<size_t, HttpResponse>> &done) { wait(0, done); }
};

// Throws std::runtime_error when libcurl cannot be set up.
std::unique_ptr<Transport> make_curl_transport(size_t slots, const TransportOptions &options);

// One blocking POST with the same options (for the set-up test event).
// should_stop is polled about every 50 ms and aborts the request.
HttpResponse http_post_once(const std::string &url, const std::string &content_type,
                            const std::string &body, const TransportOptions &options,
                            bool (*should_stop)());

}  // namespace amplitude_sync
