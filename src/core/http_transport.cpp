#include "http_transport.hpp"

#include <curl/curl.h>

#include <stdexcept>

namespace amplitude_sync {

namespace {

struct Slot {
    CURL *easy = nullptr;
    curl_slist *headers = nullptr;
    std::string content_type;
    std::string response;
    bool busy = false;
};

size_t append_capped(char *data, size_t size, size_t nmemb, void *userdata) {
    auto *slot = static_cast<std::pair<std::string *, size_t> *>(userdata);
    size_t n = size * nmemb;
    size_t room = slot->second > slot->first->size() ? slot->second - slot->first->size() : 0;
    // Keep what fits and swallow the rest: the answer is still read to the end
    // so the connection stays usable.
    slot->first->append(data, n < room ? n : room);
    return n;
}

class CurlTransport final : public Transport {
public:
    CurlTransport(size_t slots, const TransportOptions &options)
        : options_(options), slots_(slots), sinks_(slots) {
        multi_ = curl_multi_init();
        if (!multi_) throw std::runtime_error("could not initialise libcurl");
        // One connection per slot, kept alive for the whole run.
        curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(slots));
    }

    ~CurlTransport() override {
        for (Slot &s : slots_) {
            if (s.easy) {
                if (s.busy) curl_multi_remove_handle(multi_, s.easy);
                curl_easy_cleanup(s.easy);
            }
            curl_slist_free_all(s.headers);
        }
        curl_multi_cleanup(multi_);
    }

    void start(size_t index, const std::string &url, const std::string &content_type,
               const std::string &body) override {
        Slot &s = slots_.at(index);
        if (!s.easy) {
            s.easy = curl_easy_init();
            if (!s.easy) throw std::runtime_error("could not create a libcurl handle");
            configure(s.easy);
        }
        if (s.content_type != content_type) {
            curl_slist_free_all(s.headers);
            s.headers = nullptr;
            for (std::string h : {"Content-Type: " + content_type, std::string("Accept: */*"),
                                  std::string("Expect:")}) {
                curl_slist *grown = curl_slist_append(s.headers, h.c_str());
                if (!grown) throw std::bad_alloc();
                s.headers = grown;
            }
            s.content_type = content_type;
        }
        s.response.clear();
        sinks_[index] = {&s.response, options_.max_response_bytes};
        curl_easy_setopt(s.easy, CURLOPT_URL, url.c_str());
        curl_easy_setopt(s.easy, CURLOPT_HTTPHEADER, s.headers);
        curl_easy_setopt(s.easy, CURLOPT_POSTFIELDS, body.data());
        curl_easy_setopt(s.easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
        curl_easy_setopt(s.easy, CURLOPT_WRITEDATA, &sinks_[index]);
        curl_easy_setopt(s.easy, CURLOPT_PRIVATE, reinterpret_cast<void *>(index));
        if (curl_multi_add_handle(multi_, s.easy) != CURLM_OK)
            throw std::runtime_error("could not start an HTTP request");
        s.busy = true;
    }

    void wait(int timeout_ms, std::vector<std::pair<size_t, HttpResponse>> &done) override {
        int running = 0;
        curl_multi_perform(multi_, &running);
        collect(done);
        if (!done.empty()) return;
        // With nothing in flight this is an interruptible sleep.
        curl_multi_poll(multi_, nullptr, 0, timeout_ms, nullptr);
        curl_multi_perform(multi_, &running);
        collect(done);
    }

    void advance(std::vector<std::pair<size_t, HttpResponse>> &done) override {
        int running = 0;
        curl_multi_perform(multi_, &running);
        collect(done);
    }

private:
    void configure(CURL *easy) {
        curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, options_.allow_plain_http ? "http,https" : "https");
        curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, options_.connect_timeout_ms);
        curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, options_.request_timeout_ms);
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, options_.verify_tls ? 1L : 0L);
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, options_.verify_tls ? 2L : 0L);
        curl_easy_setopt(easy, CURLOPT_USERAGENT, "amplitude_sync/1.0");
        curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, append_capped);
        curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    }

    void collect(std::vector<std::pair<size_t, HttpResponse>> &done) {
        int left = 0;
        while (CURLMsg *msg = curl_multi_info_read(multi_, &left)) {
            if (msg->msg != CURLMSG_DONE) continue;
            void *priv = nullptr;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
            size_t index = reinterpret_cast<size_t>(priv);
            Slot &s = slots_[index];
            HttpResponse r;
            if (msg->data.result == CURLE_OK) {
                long status = 0;
                curl_easy_getinfo(s.easy, CURLINFO_RESPONSE_CODE, &status);
                r.status = static_cast<int>(status);
                r.body = std::move(s.response);
            } else {
                r.timed_out = msg->data.result == CURLE_OPERATION_TIMEDOUT;
                r.transport_error = curl_easy_strerror(msg->data.result);
            }
            curl_multi_remove_handle(multi_, s.easy);
            s.busy = false;
            done.emplace_back(index, std::move(r));
        }
    }

    TransportOptions options_;
    CURLM *multi_ = nullptr;
    std::vector<Slot> slots_;
    std::vector<std::pair<std::string *, size_t>> sinks_;
};

}  // namespace

std::unique_ptr<Transport> make_curl_transport(size_t slots, const TransportOptions &options) {
    return std::make_unique<CurlTransport>(slots, options);
}

HttpResponse http_post_once(const std::string &url, const std::string &content_type,
                            const std::string &body, const TransportOptions &options,
                            bool (*should_stop)()) {
    CurlTransport transport(1, options);
    transport.start(0, url, content_type, body);
    std::vector<std::pair<size_t, HttpResponse>> done;
    while (done.empty()) {
        if (should_stop && should_stop()) {
            HttpResponse stopped;
            stopped.transport_error = "interrupted";
            return stopped;
        }
        transport.wait(50, done);
    }
    return std::move(done.front().second);
}

}  // namespace amplitude_sync
