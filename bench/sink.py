#!/usr/bin/env python3
"""A fast local sink that answers like Amplitude, for the benchmark.

It does not validate events (test/mock_amplitude.py does that): it reads each
body, counts the events by their insert_id keys, refuses /2/httpapi bodies of
1 MB or more with a 413 as Amplitude does, and answers the usual JSON (or
"success" for the identify endpoints). GET /stats gives the totals and the
sink's own CPU time, so the benchmark can show the sink is not the
bottleneck. With SINK_LATENCY=1 it also parses /2/httpapi bodies and keeps,
per event, the delay from its "time" to the moment the sink answers (the
outbox benchmark: time is set when the row is written, just before its
commit); GET /latency gives count, p50, p99 and max in ms.
Usage: sink.py PORT_FILE [DELAY_MS]

DELAY_MS (the latency case; about Amplitude's real latency is 200): every
ingestion answer is sent that long after the body was read, each request on
its own thread, so concurrent requests overlap as they do against Amplitude.
"""
import json
import os
import resource
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
DELAY_S = 0.0
STATS = {"requests": 0, "bytes": 0, "events": 0, "refused_413": 0, "events_refused": 0}
LATENCY = os.environ.get("SINK_LATENCY") == "1"
DELAYS_MS = []


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle's algorithm the
    # body would wait for the client's delayed ACK (40 ms per request).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _reply(self, status, body, content_type="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/reset":
            with LOCK:
                for k in STATS:
                    STATS[k] = 0
                DELAYS_MS.clear()
        if self.path == "/latency":
            with LOCK:
                d = sorted(DELAYS_MS)
            return self._reply(200, json.dumps({"count": len(d), "p50_ms": percentile(d, 50),
                                                "p99_ms": percentile(d, 99), "max_ms": d[-1] if d else None}))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with LOCK:
            out = dict(STATS, cpu_seconds=round(usage.ru_utime + usage.ru_stime, 3))
        self._reply(200, json.dumps(out))

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        if DELAY_S:
            time.sleep(DELAY_S)
        events = body.count(b'"insert_id"') or body.count(b'insert_id') or 1
        if self.path in ("/identify", "/groupidentify"):
            with LOCK:
                STATS["requests"] += 1
                STATS["bytes"] += length
                STATS["events"] += body.count(b"user_id") or 1
            return self._reply(200, "success", "text/plain")
        if self.path == "/2/httpapi" and length >= 1000000:
            with LOCK:
                STATS["requests"] += 1
                STATS["refused_413"] += 1
                STATS["events_refused"] += events
            return self._reply(413, '{"code":413,"error":"Payload too large"}')
        times = []
        if LATENCY and self.path == "/2/httpapi":
            try:
                times = [e.get("time") for e in json.loads(body).get("events", [])]
            except ValueError:
                times = []
        now_ms = time.time() * 1000
        with LOCK:
            STATS["requests"] += 1
            STATS["bytes"] += length
            STATS["events"] += events
            DELAYS_MS.extend(now_ms - t for t in times if isinstance(t, (int, float)))
        self._reply(200, json.dumps({"code": 200, "events_ingested": events, "payload_size_bytes": length,
                                     "server_upload_time": int(time.time() * 1000)}))


def main():
    global DELAY_S
    DELAY_S = int(sys.argv[2]) / 1000.0 if len(sys.argv) > 2 else 0.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    server.daemon_threads = True
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
