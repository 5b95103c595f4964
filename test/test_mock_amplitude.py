"""Tests for test/mock_amplitude.py, the strict Amplitude mock.

Run from the repository root:  /usr/bin/python3 -m unittest test/test_mock_amplitude.py
The mock runs as a subprocess (as the SQL tests start it), shared by all tests and reset in setUp.
"""

import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

MOCK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mock_amplitude.py")
KEY = "mock-key-0123456789abcdef"
OTHER_KEY = "second-key-abcdef"

_proc = None
_tmp = None
PORT = None


def start_mock(directory, *extra):
    port_file = os.path.join(directory, f"port-{len(os.listdir(directory))}")
    proc = subprocess.Popen([sys.executable, MOCK, "--port", "0", "--port-file", port_file, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not os.path.exists(port_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("mock did not start: " + proc.stderr.read().decode())
        time.sleep(0.02)
    with open(port_file) as f:
        return proc, int(f.read())


def setUpModule():
    global _proc, _tmp, PORT
    _tmp = tempfile.TemporaryDirectory()
    _proc, PORT = start_mock(_tmp.name, "--api-key", KEY, "--api-key", OTHER_KEY)


def tearDownModule():
    _proc.send_signal(signal.SIGTERM)
    _, stderr = _proc.communicate(timeout=10)
    _tmp.cleanup()
    assert _proc.returncode == 0, _proc.returncode
    # Quiet by default: a traceback here would mean a bug in the mock.
    assert stderr == b"", stderr.decode()


# ------------------------------------------------------------------------------------------
# HTTP helpers
# ------------------------------------------------------------------------------------------

def request(method, path, body=b"", headers=None, port=None):
    """(status, content type, body bytes) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port or PORT, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


def post_raw(path, body, content_type="application/json", **headers):
    hdrs = {"Content-Type": content_type} if content_type else {}
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    status, _, data = request("POST", path, body, hdrs)
    return status, data


def post_json(path, obj, **headers):
    status, data = post_raw(path, json.dumps(obj).encode(), **headers)
    return status, json.loads(data)


def send(events, path="/2/httpapi", key=KEY, **body):
    return post_json(path, {"api_key": key, "events": events, **body})


def post_form(path, api_key=KEY, identification=None, raw_identification=None, **extra):
    fields = {}
    if api_key is not None:
        fields["api_key"] = api_key
    if identification is not None:
        fields["identification"] = json.dumps(identification)
    if raw_identification is not None:
        fields["identification"] = raw_identification
    fields.update(extra)
    body = urllib.parse.urlencode(fields).encode()
    status, data = post_raw(path, body, "application/x-www-form-urlencoded")
    return status, data.decode()


def ev(i=0, **fields):
    event = {"event_type": "Test Event", "user_id": f"user-{i:04d}"}
    event.update(fields)
    return {k: v for k, v in event.items() if v is not DROP}


DROP = object()     # ev(user_id=DROP) leaves the key out


def control(method, name, obj=None):
    body = json.dumps(obj).encode() if obj is not None else b""
    status, _, data = request(method, "/_mock/" + name, body)
    return status, json.loads(data) if data else None


def lines(name):
    status, ctype, data = request("GET", "/_mock/" + name)
    assert status == 200, status
    text = data.decode("utf-8")
    return [json.loads(line) for line in text.splitlines()]


def stats():
    return control("GET", "stats")[1]


def faults(*rules):
    status, body = control("POST", "faults", list(rules))
    assert status == 200, body


class MockTestCase(unittest.TestCase):
    def setUp(self):
        self.assertEqual(control("POST", "reset")[0], 200)

    def assertRefused(self, events, table, expected, path="/2/httpapi", **body):
        """The request is a 400 whose map `table` equals `expected` and nothing is stored."""
        before = stats()
        status, resp = send(events, path, **body)
        self.assertEqual(status, 400, resp)
        self.assertEqual(resp.get(table), expected, resp)
        after = stats()
        self.assertEqual((after["events_stored"], after["duplicates_dropped"]),
                         (before["events_stored"], before["duplicates_dropped"]))
        return resp

    def assertInvalid(self, event, field):
        self.assertRefused([event], "events_with_invalid_fields", {field: [0]})

    def assertAccepted(self, events, path="/2/httpapi", **body):
        status, resp = send(events, path, **body)
        self.assertEqual(status, 200, resp)
        self.assertEqual(resp["events_ingested"], len(events))
        return resp


# ------------------------------------------------------------------------------------------
# Command line and HTTP plumbing
# ------------------------------------------------------------------------------------------

class CliTest(unittest.TestCase):
    def test_log_file_and_clean_exit_on_sigint(self):
        with tempfile.TemporaryDirectory() as d:
            log = os.path.join(d, "mock.log")
            proc, port = start_mock(d, "--log", log)
            status, _, _ = request("GET", "/_mock/stats", port=port)
            self.assertEqual(status, 200)
            status, _, data = request("POST", "/2/httpapi", json.dumps(
                {"api_key": "mock-key-0123456789abcdef", "events": [ev()]}).encode(),
                {"Content-Type": "application/json"}, port=port)
            self.assertEqual(status, 200, data)      # the default API key
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=10)
            self.assertEqual(proc.returncode, 0)
            self.assertEqual(stderr, b"")
            with open(log) as f:
                self.assertIn("/2/httpapi", f.read())
            self.assertEqual(os.listdir(d), ["mock.log", "port-0"])   # no temp file left

    def test_port_file_holds_the_port(self):
        self.assertTrue(1024 <= PORT <= 65535)


class HttpTest(MockTestCase):
    def test_keep_alive_reuses_the_connection(self):
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
        body = json.dumps({"api_key": KEY, "events": [ev()]}).encode()
        conn.request("POST", "/2/httpapi", body, {"Content-Type": "application/json"})
        first = conn.getresponse()
        first.read()
        sock = conn.sock
        conn.request("POST", "/2/httpapi", body, {"Content-Type": "application/json"})
        second = conn.getresponse()
        self.assertEqual(json.loads(second.read())["code"], 200)
        self.assertIs(conn.sock, sock)
        self.assertIsNotNone(first.getheader("Content-Length"))
        conn.close()

    def test_chunked_body(self):
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
        body = json.dumps({"api_key": KEY, "events": [ev()]}).encode()
        conn.request("POST", "/2/httpapi", iter([body[:10], body[10:]]),
                     {"Content-Type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200, resp.read())
        conn.close()

    def test_unknown_paths_and_methods_are_404_json(self):
        for method, path in (("GET", "/2/httpapi"), ("POST", "/nope"), ("PUT", "/batch"),
                             ("GET", "/_mock/nope")):
            status, ctype, data = request(method, path)
            self.assertEqual(status, 404, (method, path))
            self.assertEqual(json.loads(data), {"code": 404, "error": "Not Found"})
        status, _, data = request("HEAD", "/nope")
        self.assertEqual((status, data), (404, b""))
        status, _, data = request("OPTIONS", "/nope")
        self.assertEqual(status, 404)
        # A wrong method on an ingestion path is still a request that reached "Amplitude".
        self.assertEqual([r["status"] for r in lines("requests")], [404, 404])
        self.assertEqual(stats()["requests"], 2)


# ------------------------------------------------------------------------------------------
# /2/httpapi and /batch: request-level checks
# ------------------------------------------------------------------------------------------

class RequestLevelTest(MockTestCase):
    def error(self, body, **kw):
        status, data = post_raw("/2/httpapi", body, **kw)
        self.assertEqual(status, 400, data)
        return json.loads(data)

    def test_missing_body(self):
        self.assertEqual(self.error(b""), {"code": 400, "error": "Missing request body"})

    def test_invalid_json_variants(self):
        latin1 = json.dumps({"api_key": KEY, "events": [ev(user_id="caf\xe9-1")]},
                            ensure_ascii=False).encode("latin-1")
        for body in (b"{", b"\xff\xfe{}", b'{"api_key":"' + KEY.encode() + b'","events":[NaN]}',
                     b'{"api_key":1,"api_key":2}', b'"\\ud800"', b"[]", b"\xef\xbb\xbf{}",
                     b'{"events":[{"price":1e400}]}', latin1):
            self.assertEqual(self.error(body), {"code": 400, "error": "Invalid JSON request body"},
                             body)

    def test_content_type_required(self):
        body = json.dumps({"api_key": KEY, "events": [ev()]}).encode()
        self.assertIn("Content-Type", self.error(body, content_type="text/plain")["error"])
        self.assertIn("Content-Type", self.error(body, content_type=None)["error"])
        status, _ = post_raw("/2/httpapi", body, "application/json; charset=UTF-8")
        self.assertEqual(status, 200)

    def test_missing_fields(self):
        for body, field in (({"events": [ev()]}, "api_key"), ({"api_key": "", "events": [ev()]},
                            "api_key"), ({"api_key": KEY}, "events"),
                            ({"api_key": KEY, "events": []}, "events"),
                            ({"api_key": KEY, "events": {"a": 1}}, "events"),
                            ({"events": "x"}, "api_key")):
            self.assertEqual(self.error(json.dumps(body).encode()),
                             {"code": 400, "error": "Request missing required field",
                              "missing_field": field})

    def test_invalid_api_key_is_echoed(self):
        status, resp = send([ev()], key="secret-wrong-key")
        self.assertEqual((status, resp), (400, {"code": 400,
                                                "error": "Invalid API key: secret-wrong-key"}))
        # Missing events is reported before the key is checked.
        status, resp = post_json("/2/httpapi", {"api_key": "bad", "events": []})
        self.assertEqual(resp["missing_field"], "events")

    def test_second_key_and_unknown_top_level_keys(self):
        self.assertAccepted([ev()], key=OTHER_KEY, client="x", extra={"y": 1})

    def test_options_min_id_length(self):
        self.assertAccepted([ev(user_id="ab")], options={"min_id_length": 2})
        status, resp = send([ev()], options={"min_id_length": 0})
        self.assertEqual(status, 400)
        status, resp = send([ev()], options={"min_id_length": 5, "other": 1})
        self.assertEqual(status, 400)

    def test_unsupported_content_encoding(self):
        body = json.dumps({"api_key": KEY, "events": [ev()]}).encode()
        self.assertIn("Content-Encoding", self.error(body, Content_Encoding="br")["error"])
        self.assertEqual(self.error(b"not gzip", Content_Encoding="gzip")["error"],
                         "Invalid JSON request body")


# ------------------------------------------------------------------------------------------
# Limits
# ------------------------------------------------------------------------------------------

def padded_body(size, path_key=KEY, big=0):
    """A valid one-event JSON body of exactly `size` bytes (padding: trailing whitespace)."""
    event = ev(event_properties={"blob": "x" * big})
    body = json.dumps({"api_key": path_key, "events": [event]}).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


class LimitsTest(MockTestCase):
    def test_2000_events_per_request(self):
        for path in ("/2/httpapi", "/batch"):
            self.assertAccepted([ev(i) for i in range(2000)], path)
            status, resp = send([ev(i) for i in range(2001)], path)
            self.assertEqual((status, resp), (413, {"code": 413, "error": "Payload too large"}))

    def test_httpapi_body_under_1mb(self):
        status, data = post_raw("/2/httpapi", padded_body(999_999, big=990_000))
        self.assertEqual(status, 200, data)
        status, data = post_raw("/2/httpapi", padded_body(1_000_000, big=990_000))
        self.assertEqual((status, json.loads(data)),
                         (413, {"code": 413, "error": "Payload too large"}))
        status, data = post_raw("/batch", padded_body(1_000_000, big=990_000))
        self.assertEqual(status, 200)

    def test_batch_body_up_to_20mb(self):
        status, data = post_raw("/batch", padded_body(20_000_000, big=19_999_000))
        self.assertEqual(status, 200, data[:200])
        status, data = post_raw("/batch", padded_body(20_000_001, big=19_999_000))
        self.assertEqual(status, 413)

    def test_gzip_counts_events_after_and_bytes_before_decoding(self):
        events = [ev(i, event_properties={"pad": "y" * 1000}) for i in range(1500)]
        raw = json.dumps({"api_key": KEY, "events": events}).encode()
        self.assertGreater(len(raw), 1_000_000)
        packed = gzip.compress(raw)
        status, data = post_raw("/2/httpapi", packed, Content_Encoding="gzip")
        resp = json.loads(data)
        self.assertEqual((status, resp["events_ingested"], resp["payload_size_bytes"]),
                         (200, 1500, len(packed)))
        packed = gzip.compress(json.dumps({"api_key": KEY,
                                           "events": [ev(i) for i in range(2001)]}).encode())
        status, _ = post_raw("/2/httpapi", packed, Content_Encoding="gzip")
        self.assertEqual(status, 413)
        record = lines("requests")[0]
        self.assertEqual((record["content_encoding"], record["body_bytes"], len(record["events"])),
                         ("gzip", len(gzip.compress(raw)), 1500))

    def test_identify_limits(self):
        idents = [{"user_id": f"user-{i:04d}", "user_properties": {"a": i}} for i in range(1024)]
        self.assertEqual(post_form("/identify", identification=idents), (200, "success"))
        idents.append({"user_id": "user-9999"})
        self.assertEqual(post_form("/identify", identification=idents), (413, "Payload too large"))
        groups = [{"group_type": "org", "group_value": f"o{i}", "group_properties": {"a": 1}}
                  for i in range(1025)]
        self.assertEqual(post_form("/groupidentify", identification=groups)[0], 413)

    def test_form_body_over_1mb(self):
        def body(size):
            head = urllib.parse.urlencode({"api_key": KEY, "identification": json.dumps(
                {"user_id": "user-0001", "user_properties": {"blob": "x" * 990_000}})})
            return (head + "+" * (size - len(head))).encode()   # "+" = a space in the JSON
        status, text = post_raw("/identify", body(1_000_000), "application/x-www-form-urlencoded")
        self.assertEqual((status, text), (200, b"success"))
        status, text = post_raw("/identify", body(1_000_001), "application/x-www-form-urlencoded")
        self.assertEqual((status, text), (413, b"Payload too large"))

    def test_group_properties_at_most_1024(self):
        props = {f"p{i}": i for i in range(1024)}
        ident = {"group_type": "org", "group_value": "acme", "group_properties": props}
        self.assertEqual(post_form("/groupidentify", identification=ident)[0], 200)
        ident["group_properties"] = {"$set": props, "$setOnce": {"extra": 1}}
        status, text = post_form("/groupidentify", identification=ident)
        self.assertEqual(status, 400)
        self.assertIn("1024", text)


# ------------------------------------------------------------------------------------------
# Per-event validation
# ------------------------------------------------------------------------------------------

STRING_FIELDS = ("insert_id", "platform", "os_name", "os_version", "device_brand",
                 "device_manufacturer", "device_model", "carrier", "country", "region", "city",
                 "dma", "language", "app_version", "productId", "revenueType", "currency", "ip",
                 "idfa", "idfv", "adid", "android_id", "android_app_set_id", "user_agent",
                 "partner_id", "library")
REFUSED = ("anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", "",
           "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1")


def nested(depth):
    """A property object whose containers nest `depth` deep (the object itself is 1)."""
    value = 1
    for level in range(depth - 1):
        value = {"k": value} if level % 2 else [value]
    return {"top": value}


class EventValidationTest(MockTestCase):
    def test_event_type(self):
        self.assertRefused([ev(event_type=DROP), ev(1, event_type=None)],
                           "events_with_missing_fields", {"event_type": [0, 1]})
        for bad in ("", "  ", 5, ["x"]):
            self.assertInvalid(ev(event_type=bad), "event_type")

    def test_user_or_device_id_required(self):
        resp = self.assertRefused([ev(), ev(1, user_id=DROP), ev(2, user_id=None)],
                                  "events_with_missing_fields",
                                  {"device_id": [1, 2], "user_id": [1, 2]})
        self.assertEqual(resp["error"], "Request missing required field")
        self.assertAccepted([ev(user_id=DROP, device_id="device-1"),
                             ev(user_id=None, device_id="device-2")])

    def test_ids_must_be_strings(self):
        self.assertInvalid(ev(user_id=12345678), "user_id")
        self.assertInvalid(ev(device_id=["abcdefg"]), "device_id")

    def test_refused_ids_case_insensitive(self):
        for value in REFUSED + ("Anonymous", "NULL", "N/A", "LMY47D", "Undefined"):
            self.assertInvalid(ev(user_id=value), "user_id")
            self.assertInvalid(ev(user_id=DROP, device_id=value), "device_id")
        # Refused even when min_id_length would allow the length.
        self.assertRefused([ev(user_id="na")], "events_with_invalid_fields", {"user_id": [0]},
                           options={"min_id_length": 1})

    def test_id_length(self):
        resp = self.assertRefused([ev(user_id="abcd"), ev(1), ev(2, device_id="dev1")],
                                  "events_with_invalid_id_lengths",
                                  {"device_id": [2], "user_id": [0]})
        self.assertEqual(resp["error"], "Invalid id length for user_id or device_id")
        self.assertAccepted([ev(user_id="abcde")])

    def test_integer_fields(self):
        for field in ("time", "event_id", "session_id", "quantity"):
            for bad in (1.0, "1", True, 2 ** 63, None):
                self.assertInvalid(ev(**{field: bad}), field)
            self.assertAccepted([ev(**{field: 1700000000000})])
        self.assertInvalid(ev(time=-1), "time")
        self.assertInvalid(ev(session_id=-2), "session_id")
        self.assertAccepted([ev(session_id=-1, time=0)])

    def test_number_fields(self):
        for field in ("price", "revenue", "location_lat", "location_lng"):
            for bad in (True, "1.5", None, [1]):
                self.assertInvalid(ev(**{field: bad}), field)
            self.assertAccepted([ev(**{field: 1}), ev(1, **{field: -1.25})])

    def test_object_fields(self):
        for field in ("event_properties", "user_properties", "group_properties", "groups",
                      "plan", "ingestion_metadata"):
            for bad in ("{}", [], 1, None):
                self.assertInvalid(ev(**{field: bad}), field)
        self.assertAccepted([ev(plan={"branch": "main", "source": "db", "version": "1"},
                                ingestion_metadata={"source_name": "amplitude_sync",
                                                    "source_version": "1.0"},
                                group_properties={"anything": {"goes": [1]}})])
        self.assertInvalid(ev(plan={"branch": "main", "other": "x"}), "plan")
        self.assertInvalid(ev(ingestion_metadata={"source_name": 1}), "ingestion_metadata")

    def test_groups_shape(self):
        self.assertAccepted([ev(groups={"org": "acme", "team": [f"t{i}" for i in range(10)]})])
        for bad in ({"org": 5}, {"org": ""}, {"org": []}, {"": "x"}, {"org": ["a", 1]}):
            self.assertInvalid(ev(groups=bad), "groups")

    def test_nesting_depth(self):
        self.assertAccepted([ev(event_properties=nested(40), user_properties=nested(40))])
        for field in ("event_properties", "user_properties", "group_properties"):
            self.assertInvalid(ev(**{field: nested(41)}), field)

    def test_string_fields(self):
        for field in STRING_FIELDS:
            self.assertInvalid(ev(**{field: 123}), field)
            self.assertInvalid(ev(**{field: None}), field)
        self.assertAccepted([ev(**{field: "value" for field in STRING_FIELDS})])

    def test_skip_user_properties_sync_is_bool(self):
        self.assertInvalid(ev(**{"$skip_user_properties_sync": "true"}),
                           "$skip_user_properties_sync")
        self.assertAccepted([ev(**{"$skip_user_properties_sync": True})])

    def test_insert_id_length(self):
        self.assertAccepted([ev(insert_id="i" * 128)])
        self.assertInvalid(ev(insert_id="i" * 129), "insert_id")
        self.assertInvalid(ev(insert_id=""), "insert_id")

    def test_unknown_top_level_key(self):
        self.assertInvalid(ev(customer_tier="gold"), "customer_tier")
        self.assertInvalid(ev(paying="true"), "paying")        # an identify field, not an event's
        self.assertInvalid(ev(**{"$path": "x"}), "$path")

    def test_non_object_event(self):
        self.assertRefused([ev(), "event"], "events_with_invalid_fields", {"event": [1]})

    def test_property_operations_on_events(self):
        self.assertInvalid(ev(user_properties={"$set": {"a": 1}, "b": 2}), "user_properties")
        self.assertInvalid(ev(user_properties={"$bogus": {"a": 1}}), "user_properties")
        self.assertInvalid(ev(user_properties={"$unset": {"a": 1}}), "user_properties")

    def test_all_problems_collected_and_nothing_ingested(self):
        events = [ev(0), ev(1, time=1.5), ev(2, event_type=DROP), ev(3, user_id="abc"),
                  ev(4, time="x", price="y"), ev(5)]
        status, resp = send(events)
        self.assertEqual(status, 400)
        self.assertEqual(resp, {
            "code": 400, "error": "Request missing required field",
            "events_with_missing_fields": {"event_type": [2]},
            "events_with_invalid_fields": {"price": [4], "time": [1, 4]},
            "events_with_invalid_id_lengths": {"user_id": [3]}})
        self.assertEqual(lines("events"), [])
        self.assertEqual(lines("users"), [])
        status, resp = send([ev(0, user_id="abc"), ev(1, time=1.5)])
        self.assertEqual(resp["error"], "Invalid field values on some events")

    def test_groupidentify_event_needs_groups_and_properties(self):
        self.assertRefused([ev(event_type="$groupidentify")], "events_with_missing_fields",
                           {"group_properties": [0], "groups": [0]})
        self.assertInvalid(ev(event_type="$groupidentify", groups={"org": "acme"},
                              group_properties={"$remove": {"a": 1}}), "group_properties")


class SilencedAndDedupTest(MockTestCase):
    def test_silenced_devices(self):
        self.assertEqual(control("POST", "config", {"silenced_devices": ["device-bad"]})[0], 200)
        status, resp = send([ev(0, device_id="device-ok"), ev(1, device_id="device-bad"),
                             ev(2, device_id="device-bad")])
        self.assertEqual((status, resp), (400, {
            "code": 400, "error": "Events silenced for device_id",
            "silenced_devices": ["device-bad"], "silenced_events": [1, 2]}))
        self.assertEqual(lines("events"), [])

    def test_dedup_by_insert_id_and_device(self):
        self.assertAccepted([ev(0, device_id="device-1", insert_id="a"),
                             ev(0, device_id="device-2", insert_id="a")])
        resp = self.assertAccepted([ev(0, device_id="device-1", insert_id="a"),
                                    ev(0, device_id="device-1", insert_id="b"),
                                    ev(0, device_id="device-1", insert_id="b")])
        self.assertEqual(resp["events_ingested"], 3)     # counted, but stored only once
        stored = [(e["device_id"], e["insert_id"]) for e in lines("events")]
        self.assertEqual(stored, [("device-1", "a"), ("device-2", "a"), ("device-1", "b")])
        self.assertEqual(stats(), {"requests": 2, "events_stored": 3, "duplicates_dropped": 2,
                                   "strings_truncated": 0, "groups_trimmed": 0})

    def test_dedup_by_user_without_device(self):
        self.assertAccepted([ev(1, insert_id="a"), ev(2, insert_id="a"), ev(1, insert_id="a")])
        self.assertEqual(len(lines("events")), 2)
        self.assertAccepted([ev(1)] * 2)                 # no insert_id: never deduplicated
        self.assertEqual(len(lines("events")), 4)

    def test_refused_request_does_not_mark_insert_ids(self):
        status, _ = send([ev(0, insert_id="a"), ev(1, time="x")])
        self.assertEqual(status, 400)
        self.assertAccepted([ev(0, insert_id="a")])
        self.assertEqual(stats()["duplicates_dropped"], 0)
        self.assertEqual(len(lines("events")), 1)


# ------------------------------------------------------------------------------------------
# Profiles: /identify, /groupidentify, and properties on events
# ------------------------------------------------------------------------------------------

def identify(*idents):
    return post_form("/identify", identification=list(idents))


def user(user_id):
    return next(p for p in lines("users") if p["user_id"] == user_id)


class ProfileTest(MockTestCase):
    UID = "user-0001"

    def props(self, *updates):
        for update in updates:
            self.assertEqual(identify({"user_id": self.UID, "user_properties": update}),
                             (200, "success"), update)
        return user(self.UID)["user_properties"]

    def test_set_and_set_once(self):
        self.assertEqual(self.props({"a": 1, "b": "x"}, {"$set": {"a": 2}},
                                    {"$setOnce": {"a": 3, "c": 4}}),
                         {"a": 2, "b": "x", "c": 4})

    def test_add(self):
        self.assertEqual(self.props({"$add": {"n": 2}}, {"$add": {"n": 1.5, "m": -1}}),
                         {"n": 3.5, "m": -1})
        status, text = identify({"user_id": self.UID, "user_properties": {"$add": {"n": "1"}}})
        self.assertEqual(status, 400)

    def test_add_on_non_number_refuses_the_whole_request(self):
        self.props({"s": "text"})
        status, text = identify({"user_id": self.UID, "user_properties": {"$set": {"x": 1}}},
                                {"user_id": self.UID, "user_properties": {"$add": {"s": 1}}})
        self.assertEqual(status, 400)
        self.assertEqual(user(self.UID)["user_properties"], {"s": "text"})   # all or nothing

    def test_append_prepend(self):
        self.assertEqual(self.props({"$set": {"s": "a"}}, {"$append": {"s": "b", "l": [1, 2]}},
                                    {"$prepend": {"s": ["y", "z"], "l": 0}}),
                         {"s": ["y", "z", "a", "b"], "l": [0, 1, 2]})

    def test_pre_and_post_insert_add_only_new_values(self):
        self.assertEqual(self.props({"$set": {"l": [1, 2]}}, {"$postInsert": {"l": [2, 3, 3]}},
                                    {"$preInsert": {"l": [0, 1, True]}}),
                         {"l": [0, True, 1, 2, 3]})

    def test_remove(self):
        self.assertEqual(self.props({"$set": {"l": [1, 2, 3, 2]}}, {"$remove": {"l": 2}},
                                    {"$remove": {"l": [1, 9], "absent": 1}}),
                         {"l": [3]})

    def test_unset_and_clear_all(self):
        self.assertEqual(self.props({"a": 1, "b": 2}, {"$unset": {"a": "-"}}), {"b": 2})
        self.assertEqual(self.props({"$clearAll": "-", "$set": {"c": 3}}), {"c": 3})
        for bad in ({"$unset": {"b": 1}}, {"$clearAll": True}):
            status, _ = identify({"user_id": self.UID, "user_properties": bad})
            self.assertEqual(status, 400, bad)

    def test_operation_order_in_one_object(self):
        self.props({"a": 1, "keep": 1, "l": [5]})
        result = self.props({"$unset": {"a": "-"}, "$setOnce": {"keep": 2, "new": 1},
                             "$add": {"n": 1}, "$append": {"l": 6}, "$remove": {"x": 1}})
        self.assertEqual(result, {"keep": 1, "new": 1, "n": 1, "l": [5, 6]})

    def test_mixing_and_repeated_properties_refused(self):
        status, text = identify({"user_id": self.UID, "user_properties": {"$set": {"a": 1},
                                                                          "b": 2}})
        self.assertEqual(status, 400)
        self.assertIn("cannot mix operations and plain properties", text)
        status, text = identify({"user_id": self.UID,
                                 "user_properties": {"$set": {"a": 1}, "$add": {"a": 1}}})
        self.assertEqual(status, 400)
        self.assertEqual(lines("users"), [])

    def test_device_profile_merges_into_user(self):
        self.assertEqual(identify({"device_id": "device-1", "user_properties": {"d": 1, "x": 0},
                                   "platform": "iOS"}), (200, "success"))
        self.assertEqual(lines("users"), [{"user_id": None, "device_ids": ["device-1"],
                                           "user_properties": {"d": 1, "x": 0}, "groups": {},
                                           "fields": {"platform": "iOS"}}])
        self.assertEqual(identify({"user_id": self.UID, "user_properties": {"u": 2, "x": 1}}),
                         (200, "success"))
        self.assertEqual(identify({"user_id": self.UID, "device_id": "device-1"}),
                         (200, "success"))
        self.assertEqual(lines("users"), [{"user_id": self.UID, "device_ids": ["device-1"],
                                           "user_properties": {"d": 1, "u": 2, "x": 1},
                                           "groups": {}, "fields": {"platform": "iOS"}}])
        # The device now resolves to the user, for events too.
        self.assertAccepted([ev(user_id=DROP, device_id="device-1",
                                user_properties={"from_device": True})])
        self.assertTrue(user(self.UID)["user_properties"]["from_device"])
        self.assertEqual(len(lines("users")), 1)

    def test_identify_fields_and_groups(self):
        self.assertEqual(identify({"user_id": self.UID, "groups": {"org": "acme"},
                                   "app_version": "1.2", "paying": "true", "country": "FR"}),
                         (200, "success"))
        self.assertEqual(identify({"user_id": self.UID, "groups": {"team": ["a", "b"]}}),
                         (200, "success"))
        profile = user(self.UID)
        self.assertEqual(profile["groups"], {"org": "acme", "team": ["a", "b"]})
        self.assertEqual(profile["fields"], {"app_version": "1.2", "country": "FR",
                                             "paying": "true"})

    def test_identify_refusals(self):
        cases = [({"user_properties": {"a": 1}}, "user_id or device_id is required"),
                 ({"user_id": "null"}, "invalid user_id"),
                 ({"device_id": "abc"}, "invalid id length for device_id"),
                 ({"user_id": self.UID, "event_type": "x"}, "unknown key event_type"),
                 ({"user_id": self.UID, "paying": True}, "paying must be a string"),
                 ({"user_id": self.UID, "groups": {"org": 1}}, "invalid groups"),
                 ({"user_id": self.UID, "user_properties": []}, "user_properties must be an object")]
        for ident, message in cases:
            status, text = identify({"user_id": "user-0002"}, ident)
            # One short line that never says which identification was refused.
            self.assertEqual((status, text), (400, "identification: " + message), ident)
        self.assertEqual(lines("users"), [])

    def test_form_request_level_errors(self):
        for path in ("/identify", "/groupidentify"):
            for key in (None, ""):
                self.assertEqual(post_form(path, api_key=key, identification={"user_id": self.UID}),
                                 (400, "missing_field"), (path, key))
            # The key is checked before the identification, and never echoed.
            self.assertEqual(post_form(path, api_key="wrong-key", identification={}),
                             (400, "invalid_api_key"))
            for raw in (None, "", "{", "[]", "[1]", '"x"', '{"a":1,"a":2}'):
                self.assertEqual(post_form(path, raw_identification=raw),
                                 (400, "missing_event"), (path, raw))
        repeated = urllib.parse.urlencode([("api_key", KEY), ("api_key", KEY),
                                           ("identification", "{}")]).encode()
        self.assertEqual(post_raw("/identify", repeated, "application/x-www-form-urlencoded"),
                         (400, b"invalid_api_key"))
        self.assertEqual(post_form("/identify", identification={"user_id": self.UID},
                                   event="x")[0], 400)
        body = urllib.parse.urlencode({"api_key": KEY, "identification": "{}"}).encode()
        status, _ = post_raw("/identify", body, "application/json")
        self.assertEqual(status, 400)

    def test_groupidentify(self):
        idents = [{"group_type": "org", "group_value": "beta", "group_properties": {"n": 1}},
                  {"group_type": "org", "group_value": "acme",
                   "group_properties": {"$set": {"plan": "pro"}, "$add": {"seats": 3}}}]
        self.assertEqual(post_form("/groupidentify", identification=idents), (200, "success"))
        self.assertEqual(post_form("/groupidentify", identification={
            "group_type": "org", "group_value": "acme",
            "group_properties": {"$append": {"tags": "x"}, "$setOnce": {"plan": "free"}}}),
            (200, "success"))
        self.assertEqual(lines("groups"), [
            {"group_type": "org", "group_value": "acme",
             "group_properties": {"plan": "pro", "seats": 3, "tags": ["x"]}},
            {"group_type": "org", "group_value": "beta", "group_properties": {"n": 1}}])

    def test_form_errors_are_short_plain_text_event_errors_json(self):
        # Amplitude's form endpoints answer errors in plain text, its event endpoints in JSON.
        form = urllib.parse.urlencode({"api_key": "secret-wrong-key",
                                       "identification": json.dumps({"user_id": self.UID})})
        for path in ("/identify", "/groupidentify"):
            for body, ctype in ((form.encode(), "application/x-www-form-urlencoded"),
                                (b"api_key=" + KEY.encode(), "application/x-www-form-urlencoded"),
                                (b"identification=%7B%7D", "application/x-www-form-urlencoded"),
                                (form.encode(), "application/json")):
                status, content_type, data = request("POST", path, body, {"Content-Type": ctype})
                self.assertEqual(status, 400, (path, body))
                self.assertTrue(content_type.startswith("text/plain"), (path, content_type))
                text = data.decode()
                self.assertLess(len(text), 100, text)
                self.assertNotIn("\n", text)
                self.assertNotIn("secret-wrong-key", text)
                with self.assertRaises(ValueError, msg=text):
                    json.loads(text)
            # A body the server cannot read is plain text there too.
            status, content_type, _ = request("POST", path, b"x", {
                "Content-Type": "application/x-www-form-urlencoded", "Content-Length": "x1"})
            self.assertEqual((status, content_type.split(";")[0]), (400, "text/plain"))
        for path in ("/2/httpapi", "/batch"):
            status, content_type, data = request("POST", path, json.dumps(
                {"api_key": "secret-wrong-key", "events": [ev()]}).encode(),
                {"Content-Type": "application/json"})
            self.assertEqual((status, content_type), (400, "application/json"))
            self.assertEqual(json.loads(data), {"code": 400,
                                                "error": "Invalid API key: secret-wrong-key"})
            status, content_type, data = request("POST", path, json.dumps(
                {"events": [ev()]}).encode(), {"Content-Type": "application/json"})
            self.assertEqual((status, content_type), (400, "application/json"))
            self.assertEqual(json.loads(data)["missing_field"], "api_key")
        self.assertEqual(lines("users"), [])

    def test_refused_identification_is_not_named(self):
        idents = [{"user_id": f"user-{i:04d}"} for i in range(5)] + [{"user_id": "null"}]
        self.assertEqual(post_form("/identify", identification=idents),
                         (400, "identification: invalid user_id"))
        groups = [{"group_type": "org", "group_value": "acme", "group_properties": {}},
                  {"group_type": "org", "group_value": "", "group_properties": {}}]
        self.assertEqual(post_form("/groupidentify", identification=groups),
                         (400, "identification: group_value must be a non-empty string"))
        self.assertEqual((lines("users"), lines("groups")), ([], []))

    def test_groupidentify_refusals(self):
        for ident in ({"group_value": "acme", "group_properties": {}},
                      {"group_type": "", "group_value": "acme", "group_properties": {}},
                      {"group_type": "org", "group_value": 5, "group_properties": {}},
                      {"group_type": "org", "group_value": "acme"},
                      {"group_type": "org", "group_value": "acme",
                       "group_properties": {"$remove": {"a": 1}}},
                      {"group_type": "org", "group_value": "acme",
                       "group_properties": {"$clearAll": "-"}},
                      {"group_type": "org", "group_value": "acme", "group_properties": {},
                       "user_id": "user-0001"}):
            self.assertEqual(post_form("/groupidentify", identification=ident)[0], 400, ident)
        self.assertEqual(lines("groups"), [])

    def test_event_user_properties(self):
        self.assertAccepted([ev(1, user_properties={"plan": "pro"}),
                             ev(1, user_properties={"$add": {"visits": 1}}),
                             ev(1, user_properties={"plan": "free"},
                                **{"$skip_user_properties_sync": True}),
                             ev(1, groups={"org": "acme"})])
        profile = user("user-0001")
        self.assertEqual(profile["user_properties"], {"plan": "pro", "visits": 1})
        self.assertEqual(profile["groups"], {})          # event groups: that event only

    def test_event_property_error_refuses_request(self):
        self.assertAccepted([ev(1, user_properties={"s": "x"})])
        self.assertRefused([ev(2), ev(1, user_properties={"$add": {"s": 1}})],
                           "events_with_invalid_fields", {"user_properties": [1]})
        self.assertEqual(len(lines("events")), 1)
        self.assertEqual([p["user_id"] for p in lines("users")], ["user-0001"])

    def test_identify_and_groupidentify_events(self):
        self.assertAccepted([
            ev(1, event_type="$identify", device_id="device-1",
               user_properties={"$set": {"a": 1}}, groups={"org": "acme"}),
            ev(2, event_type="$groupidentify", groups={"org": ["acme", "beta"]},
               group_properties={"$set": {"tier": "gold"}})])
        self.assertEqual(lines("users"), [{"user_id": "user-0001", "device_ids": ["device-1"],
                                           "user_properties": {"a": 1}, "groups": {"org": "acme"},
                                           "fields": {}}])
        self.assertEqual([(g["group_value"], g["group_properties"]) for g in lines("groups")],
                         [("acme", {"tier": "gold"}), ("beta", {"tier": "gold"})])
        self.assertEqual([e["event_type"] for e in lines("events")],
                         ["$identify", "$groupidentify"])


# ------------------------------------------------------------------------------------------
# What Amplitude ends up holding (issue 11): grouped fields, operations on events, skipped
# property syncs, reserved event types, truncation, group limits
# ------------------------------------------------------------------------------------------

class WhatAmplitudeHoldsTest(MockTestCase):
    UID = "user-0001"
    LOCATION = {"country": "FR", "region": "IDF", "city": "Paris", "dma": "none"}
    DEVICE = {"platform": "iOS", "os_name": "ios", "os_version": "17", "device_brand": "Apple",
              "device_manufacturer": "Apple", "device_model": "iPhone", "carrier": "Orange"}

    def fields(self):
        return user(self.UID)["fields"]

    def test_a_location_field_alone_resets_the_rest_of_the_location(self):
        self.assertEqual(identify({"user_id": self.UID, "language": "fr", "app_version": "1.0",
                                   **self.LOCATION, **self.DEVICE}), (200, "success"))
        self.assertEqual(self.fields(), {"language": "fr", "app_version": "1.0",
                                         **self.LOCATION, **self.DEVICE})
        self.assertEqual(identify({"user_id": self.UID, "country": "DE"}), (200, "success"))
        # Region, city and DMA are gone; the device group and ungrouped fields stay.
        self.assertEqual(self.fields(), {"language": "fr", "app_version": "1.0", "country": "DE",
                                         **self.DEVICE})

    def test_a_device_field_alone_resets_the_rest_of_the_device(self):
        self.assertEqual(identify({"user_id": self.UID, **self.LOCATION, **self.DEVICE}),
                         (200, "success"))
        self.assertEqual(identify({"user_id": self.UID, "os_version": "18", "language": "de"}),
                         (200, "success"))
        self.assertEqual(self.fields(), {**self.LOCATION, "os_version": "18", "language": "de"})

    def test_ungrouped_fields_and_properties_reset_nothing(self):
        self.assertEqual(identify({"user_id": self.UID, **self.LOCATION}), (200, "success"))
        self.assertEqual(identify({"user_id": self.UID, "language": "fr", "paying": "true",
                                   "user_properties": {"country": "Spain"}}), (200, "success"))
        profile = user(self.UID)
        self.assertEqual(profile["fields"], {**self.LOCATION, "language": "fr", "paying": "true"})
        # A user property called country is not the default Country field.
        self.assertEqual(profile["user_properties"], {"country": "Spain"})

    def test_operations_on_an_event_apply_on_top_of_identify(self):
        # The same increment through /identify and on an event counts twice.
        self.assertEqual(identify({"user_id": self.UID, "user_properties": {
            "$add": {"logins": 1}, "$append": {"tags": "x"}}}), (200, "success"))
        self.assertAccepted([ev(1, event_type="Properties Updated", user_properties={
            "$add": {"logins": 1}, "$append": {"tags": "x"}, "$set": {"plan": "pro"}})])
        self.assertEqual(user(self.UID)["user_properties"],
                         {"logins": 2, "tags": ["x", "x"], "plan": "pro"})
        # Only the idempotent part on the event: applied once.
        self.assertEqual(control("POST", "reset")[0], 200)
        self.assertEqual(identify({"user_id": self.UID, "user_properties": {
            "$set": {"plan": "pro"}, "$add": {"logins": 1}}}), (200, "success"))
        self.assertAccepted([ev(1, event_type="Properties Updated",
                                user_properties={"$set": {"plan": "pro"}})])
        self.assertEqual(user(self.UID)["user_properties"], {"logins": 1, "plan": "pro"})

    def test_skip_user_properties_sync_leaves_the_profile_alone(self):
        current = {"plan": "pro", "logins": 5}
        self.assertEqual(identify({"user_id": self.UID, "user_properties": current}),
                         (200, "success"))
        backfill = {"$skip_user_properties_sync": True}
        self.assertAccepted([ev(1, time=1600000000000, user_properties={"plan": "free"}, **backfill),
                             ev(1, time=1600000000001, user_properties={"$add": {"logins": 1}},
                                **backfill)], path="/batch")
        self.assertEqual(user(self.UID)["user_properties"], current)
        self.assertEqual(len(lines("events")), 2)        # the events themselves are kept
        # Without it, the historical value overwrites the current one.
        self.assertAccepted([ev(1, time=1600000000002, user_properties={"plan": "free"})],
                            path="/batch")
        self.assertEqual(user(self.UID)["user_properties"]["plan"], "free")

    def test_reserved_event_types_are_refused(self):
        for event_type in ("[Amplitude] Revenue", "[Amplitude] Revenue (Verified)",
                           "[Amplitude] Revenue (Unverified)", "[Amplitude] Start Session",
                           "[Amplitude] End Session", "[Amplitude] Merged User"):
            self.assertRefused([ev(0), ev(1, event_type=event_type)],
                               "events_with_invalid_fields", {"event_type": [1]})
        self.assertAccepted([ev(0, event_type="Revenue"), ev(1, event_type="[amplitude] revenue")])

    def test_long_strings_are_kept_truncated(self):
        long, limit = "a" * 1025, "b" * 1024
        self.assertAccepted([ev(1, event_properties={"bio": long, "ok": limit, "l": [long]},
                                user_properties={"$set": {"bio": long}}, city=long)])
        event = lines("events")[0]
        self.assertEqual(event["event_properties"], {"bio": "a" * 1024, "ok": limit,
                                                     "l": ["a" * 1024]})
        self.assertEqual(event["city"], "a" * 1024)
        self.assertEqual(user(self.UID)["user_properties"], {"bio": "a" * 1024})
        self.assertEqual(identify({"user_id": self.UID, "country": long,
                                   "user_properties": {"note": long}}), (200, "success"))
        profile = user(self.UID)
        self.assertEqual((profile["fields"]["country"], profile["user_properties"]["note"]),
                         ("a" * 1024, "a" * 1024))
        self.assertEqual(post_form("/groupidentify", identification={
            "group_type": "org", "group_value": "acme", "group_properties": {"about": long}}),
            (200, "success"))
        self.assertEqual(lines("groups")[0]["group_properties"], {"about": "a" * 1024})
        self.assertEqual(stats()["strings_truncated"], 7)
        # The request log keeps what was sent.
        self.assertEqual(lines("requests")[0]["events"][0]["city"], long)

    def test_groups_beyond_the_limits_are_dropped(self):
        many_types = {f"type{i}": "x" for i in range(7)}
        many_values = {"team": [f"t{i}" for i in range(12)]}
        self.assertAccepted([ev(1, groups=many_types), ev(2, groups=many_values),
                             ev(3, groups={"org": "acme"})])
        kept = [e["groups"] for e in lines("events")]
        self.assertEqual(kept, [{f"type{i}": "x" for i in range(5)},
                                {"team": [f"t{i}" for i in range(10)]}, {"org": "acme"}])
        self.assertEqual(identify({"user_id": self.UID, "groups": many_values}), (200, "success"))
        self.assertEqual(user(self.UID)["groups"], {"team": [f"t{i}" for i in range(10)]})
        self.assertEqual(stats()["groups_trimmed"], 3)


# ------------------------------------------------------------------------------------------
# Fault script
# ------------------------------------------------------------------------------------------

class FaultTest(MockTestCase):
    def test_status_default_bodies(self):
        faults({"action": "status", "status": 503}, {"action": "status", "status": 403},
               {"action": "status", "status": 500})
        self.assertEqual(send([ev()]), (503, {"code": 503, "error": "Service Unavailable"}))
        self.assertEqual(send([ev()]), (403, {"code": 403, "error": "Forbidden"}))
        self.assertEqual(send([ev()]), (500, {"code": 500, "error": "Internal Server Error"}))
        self.assertEqual(send([ev()])[0], 200)       # rules used up
        self.assertEqual(len(lines("events")), 1)
        self.assertEqual([r["fault"] for r in lines("requests")], ["status"] * 3 + [None])

    def test_status_html_body_from_load_balancer(self):
        faults({"action": "status", "status": 502, "content_type": "text/html"})
        status, ctype, data = request("POST", "/batch", json.dumps(
            {"api_key": KEY, "events": [ev()]}).encode(), {"Content-Type": "application/json"})
        self.assertEqual((status, ctype), (502, "text/html"))
        self.assertIn(b"<html>", data)
        faults({"action": "status", "status": 504, "body": "upstream timed out",
                "content_type": "text/plain"}, {"action": "status", "status": 500,
                                                "body": {"code": 500, "error": "custom"}})
        status, data = post_raw("/2/httpapi", b"{}")
        self.assertEqual((status, data), (504, b"upstream timed out"))
        self.assertEqual(send([ev()]), (500, {"code": 500, "error": "custom"}))

    def test_status_that_still_ingests(self):
        faults({"action": "status", "status": 500, "ingest": True})
        self.assertEqual(send([ev(insert_id="i1")])[0], 500)
        self.assertEqual(len(lines("events")), 1)
        self.assertEqual(send([ev(insert_id="i1")])[0], 200)    # the retry is deduplicated
        self.assertEqual(len(lines("events")), 1)
        self.assertEqual(stats()["duplicates_dropped"], 1)

    def test_times_skip_and_path(self):
        faults({"action": "status", "status": 500, "skip": 1},
               {"action": "status", "status": 503, "times": 2, "path": "/batch"})
        self.assertEqual([send([ev()])[0] for _ in range(3)], [200, 500, 200])
        self.assertEqual([send([ev()], "/batch")[0] for _ in range(3)], [503, 503, 200])
        control("DELETE", "faults")
        faults({"action": "status", "status": 503, "times": -1})
        self.assertEqual([send([ev()])[0] for _ in range(4)], [503] * 4)
        control("DELETE", "faults")
        self.assertEqual(send([ev()])[0], 200)

    def test_delay_with_pass(self):
        faults({"action": "pass", "delay_ms": 300})
        start = time.monotonic()
        self.assertEqual(send([ev()])[0], 200)
        self.assertGreaterEqual(time.monotonic() - start, 0.3)
        self.assertEqual(lines("requests")[0]["fault"], "pass")

    def test_delay_does_not_block_other_requests(self):
        faults({"action": "pass", "delay_ms": 1500, "path": "/batch"})
        slow = threading.Thread(target=send, args=([ev()], "/batch"))
        slow.start()
        time.sleep(0.1)
        start = time.monotonic()
        self.assertEqual(send([ev()])[0], 200)
        self.assertLess(time.monotonic() - start, 1.0)
        slow.join()
        self.assertEqual([r["path"] for r in lines("requests")], ["/batch", "/2/httpapi"])

    def test_probability_faults_a_seeded_share_of_requests(self):
        def statuses(seed):
            control("POST", "reset")
            faults({"action": "status", "status": 503, "times": -1, "probability": 0.25, "seed": seed})
            return [send([ev(i)])[0] for i in range(200)]
        first = statuses(7)
        self.assertEqual(first, statuses(7))                # the same seed replays the same run
        self.assertTrue(30 <= first.count(503) <= 70, first.count(503))
        self.assertEqual(set(first), {200, 503})

    def test_reset(self):
        faults({"action": "reset"})
        with self.assertRaises((ConnectionError, http.client.HTTPException)):
            send([ev()])
        self.assertEqual(lines("events"), [])
        record = lines("requests")[0]
        self.assertEqual((record["status"], record["fault"], record["response"]),
                         (None, "reset", None))
        self.assertEqual(send([ev()])[0], 200)

    def test_invalid(self):
        faults({"action": "invalid", "field": "user_id", "values": ["user-0002", "user-0003"]})
        self.assertEqual(send([ev(0)])[0], 200)            # no match: no use consumed
        self.assertEqual(send([ev(0), ev(2), ev(3)]), (400, {
            "code": 400, "error": "Invalid field values on some events",
            "events_with_invalid_fields": {"user_id": [1, 2]}}))
        self.assertEqual(len(lines("events")), 1)
        self.assertEqual(send([ev(2)])[0], 200)

    def test_throttle_users_devices_and_quota(self):
        faults({"action": "throttle", "users": ["user-0001"], "devices": ["device-9"],
                "quota_users": ["user-0005"], "quota_devices": ["device-7"]})
        self.assertEqual(send([ev(0)])[0], 200)
        status, resp = send([ev(0), ev(1), ev(1), ev(2, device_id="device-9"), ev(5),
                             ev(6, device_id="device-7")])
        self.assertEqual((status, resp), (429, {
            "code": 429, "error": "Too many requests for some devices and users",
            "eps_threshold": 30, "throttled_devices": {"device-9": 31},
            "throttled_users": {"user-0001": 32}, "throttled_events": [1, 2, 3, 4, 5],
            "exceeded_daily_quota_users": {"user-0005": 500200},
            "exceeded_daily_quota_devices": {"device-7": 500900}}))
        self.assertEqual(len(lines("events")), 1)

    def test_project_level_throttle(self):
        faults({"action": "throttle", "times": 2})
        status, resp = send([ev()], "/batch")
        self.assertEqual((status, resp["throttled_users"], resp["throttled_events"],
                          resp["eps_threshold"]), (429, {}, [], 1000))
        self.assertEqual(post_form("/identify", identification={"user_id": "user-0001"}),
                         (429, "Too many requests for some devices and users"))

    def test_throttle_identify_by_id(self):
        faults({"action": "throttle", "users": ["user-0001"], "path": "/identify"})
        self.assertEqual(identify({"user_id": "user-0002"}), (200, "success"))
        self.assertEqual(identify({"user_id": "user-0001"})[0], 429)
        self.assertEqual([p["user_id"] for p in lines("users")], ["user-0002"])

    def test_too_large(self):
        faults({"action": "too_large", "max_bytes": 300})
        self.assertEqual(send([ev()])[0], 200)
        self.assertEqual(send([ev(i) for i in range(10)]),
                         (413, {"code": 413, "error": "Payload too large"}))
        self.assertEqual(send([ev(i) for i in range(10)])[0], 200)

    def test_silence(self):
        faults({"action": "silence", "devices": ["device-1"]})
        self.assertEqual(send([ev(0, device_id="device-2")])[0], 200)
        self.assertEqual(send([ev(0, device_id="device-2"), ev(1, device_id="device-1")]),
                         (400, {"code": 400, "error": "Events silenced for device_id",
                                "silenced_devices": ["device-1"], "silenced_events": [1]}))

    def test_event_rules_need_a_valid_request(self):
        faults({"action": "throttle", "users": ["user-0000"]})
        self.assertEqual(send([ev()], key="bad-key")[1]["error"], "Invalid API key: bad-key")
        self.assertEqual(send([ev()])[0], 429)

    def test_bad_rules_refused(self):
        for rules in ({"action": "status"}, [{"action": "explode"}], [{"action": "status",
                      "stauts": 500}], [{"action": "too_large"}], [{"action": "reset",
                      "path": "/nope"}], [{"action": "reset", "ingest": True}]):
            status, resp = control("POST", "faults", rules)
            self.assertEqual(status, 400, rules)
        self.assertEqual(lines("faults"), [])


# ------------------------------------------------------------------------------------------
# Control API and output format
# ------------------------------------------------------------------------------------------

class ControlTest(MockTestCase):
    def test_requests_log(self):
        send([ev()], key="bad-key")
        post_form("/identify", identification={"user_id": "user-0001"})
        post_raw("/2/httpapi", b"{")
        records = lines("requests")
        self.assertEqual([r["seq"] for r in records], [1, 2, 3])
        self.assertEqual(set(records[0]), {"seq", "path", "connection", "content_type", "content_encoding",
                                           "body_bytes", "status", "fault", "api_key", "events",
                                           "identification", "response"})
        self.assertEqual((records[0]["status"], records[0]["api_key"], records[0]["events"]),
                         (400, "bad-key", [ev()]))
        self.assertEqual((records[1]["identification"], records[1]["response"],
                          records[1]["events"]), ([{"user_id": "user-0001"}], "success", None))
        self.assertEqual((records[2]["events"], records[2]["api_key"]), (None, None))
        control("GET", "stats")                          # control calls are not recorded
        self.assertEqual(stats()["requests"], 3)

    def test_json_lines_are_single_sorted_lines(self):
        self.assertAccepted([ev(event_properties={"z": "line\nbreak\u2028", "a": "\x01\x02é"},
                                user_properties={"b": 1, "a": 2})])
        _, ctype, data = request("GET", "/_mock/events")
        text = data.decode("utf-8")
        self.assertEqual(text.count("\n"), 1)
        self.assertNotIn("\x01", text)
        self.assertNotIn("\x02", text)
        self.assertIn("é", text)                          # not \u escaped
        event = json.loads(text)
        self.assertEqual(text, json.dumps(event, sort_keys=True, separators=(",", ":"),
                                          ensure_ascii=False) + "\n")
        self.assertEqual((event["$path"], event["$seq"]), ("/2/httpapi", 1))

    def test_output_is_deterministic(self):
        def run():
            control("POST", "reset")
            control("POST", "config", {"server_upload_time": 1700000000000})
            send([ev(i, insert_id=f"i{i}", user_properties={"n": i}) for i in range(5)], "/batch")
            identify({"user_id": "user-0009", "device_id": "device-1"})
            return [request("GET", f"/_mock/{n}")[2] for n in ("requests", "events", "users")]
        self.assertEqual(run(), run())
        self.assertEqual(lines("requests")[0]["response"]["server_upload_time"], 1700000000000)

    def test_config_api_keys_and_reset(self):
        control("POST", "config", {"api_keys": ["brand-new-key"]})
        self.assertEqual(send([ev()])[0], 400)
        self.assertEqual(send([ev()], key="brand-new-key")[0], 200)
        faults({"action": "status", "status": 503})
        control("POST", "reset")
        self.assertEqual(stats(), {"requests": 0, "events_stored": 0, "duplicates_dropped": 0,
                                   "strings_truncated": 0, "groups_trimmed": 0})
        self.assertEqual(lines("faults"), [])
        self.assertEqual(send([ev()])[0], 200)           # command-line keys are back
        self.assertEqual(send([ev()], key="brand-new-key")[0], 400)

    def test_bad_config_refused(self):
        self.assertEqual(control("POST", "config", {"api_key": ["x"]})[0], 400)
        self.assertEqual(control("POST", "config", {"api_keys": "x"})[0], 400)

    def test_users_sorted(self):
        identify({"device_id": "device-b"}, {"user_id": "user-b"}, {"device_id": "device-a"},
                 {"user_id": "user-a"})
        self.assertEqual([(p["user_id"], p["device_ids"]) for p in lines("users")],
                         [("user-a", []), ("user-b", []), (None, ["device-a"]),
                          (None, ["device-b"])])


if __name__ == "__main__":
    unittest.main()


# ------------------------------------------------------------------------------------------
# Per-ID rates and latency (POST /_mock/pacing, --enforce-id-rates, --response-delay-ms)
# ------------------------------------------------------------------------------------------

def pacing(**settings):
    status, body = control("POST", "pacing", settings)
    assert status == 200, body


class IdRateTest(MockTestCase):
    def test_off_by_default(self):
        self.assertAccepted([ev(1, insert_id=f"i-{n}") for n in range(1000)])

    def test_a_request_over_the_allowance_by_itself_is_throttled_every_time(self):
        pacing(id_rates=True)
        events = [ev(1, insert_id=f"i-{n}") for n in range(901)]   # 30/s x 30 s = 900
        for _ in range(2):
            status, resp = send(events)
            self.assertEqual(status, 429, resp)
            self.assertEqual(resp["throttled_users"], {"user-0001": 30 + 901})
            self.assertEqual(resp["throttled_events"], list(range(901)))
            self.assertEqual(resp["eps_threshold"], 30)
        self.assertEqual(stats()["events_stored"], 0)
        self.assertAccepted(events[:900])

    def test_the_ids_recent_events_count_with_the_request(self):
        pacing(id_rates=True)
        self.assertAccepted([ev(1, insert_id=f"a-{n}") for n in range(600)])
        mixed = [ev(2, insert_id="b-0"), ev(1, insert_id="a-600", device_id="device-x")] + \
                [ev(1, insert_id=f"a-{n}") for n in range(601, 901)]
        status, resp = send(mixed)
        self.assertEqual(status, 429, resp)
        # user-0001: 600 recent + 301 > 900; its device and user-0002 are within theirs.
        self.assertEqual((resp["throttled_users"], resp["throttled_devices"]),
                         ({"user-0001": 30 + 301}, {}))
        self.assertEqual(resp["throttled_events"], list(range(1, 302)))
        self.assertEqual(stats()["events_stored"], 600)     # nothing of the request ingested
        self.assertAccepted(mixed[:-1])                      # 600 + 300: exactly the allowance

    def test_devices_are_counted_on_their_own(self):
        pacing(id_rates=True)
        self.assertAccepted([ev(n, device_id="device-1", insert_id=f"i-{n}") for n in range(900)])
        status, resp = send([ev(5000, device_id="device-1", insert_id="last")])
        self.assertEqual((status, resp["throttled_devices"], resp["throttled_users"]),
                         (429, {"device-1": 31}, {}))

    def test_batch_allows_1000_per_second(self):
        pacing(id_rates=True)
        for chunk in range(15):
            self.assertAccepted([ev(1, insert_id=f"i-{chunk}-{n}") for n in range(2000)], "/batch")
        status, resp = send([ev(1, insert_id="one-more")], "/batch")
        self.assertEqual((status, resp["eps_threshold"], resp["throttled_users"]),
                         (429, 1000, {"user-0001": 1001}))

    def test_the_allowance_comes_back_after_the_window(self):
        pacing(id_rates=True, window_ms=300)
        allowance = 30 * 0.3    # 9 events per 300 ms
        self.assertAccepted([ev(1, insert_id=f"a-{n}") for n in range(int(allowance))])
        self.assertEqual(send([ev(1, insert_id="b")])[0], 429)
        time.sleep(0.35)
        self.assertAccepted([ev(1, insert_id="b")])

    def test_scripted_faults_still_apply_first(self):
        pacing(id_rates=True)
        faults({"action": "status", "status": 503})
        self.assertEqual(send([ev(1)])[0], 503)
        self.assertAccepted([ev(1)])

    def test_form_endpoints_are_not_rate_limited(self):
        pacing(id_rates=True)
        identification = [{"user_id": "user-0001", "user_properties": {"$set": {"n": n}}}
                          for n in range(1000)]
        self.assertEqual(post_form("/identify", identification=identification), (200, "success"))

    def test_reset_turns_it_off_and_bad_settings_are_refused(self):
        pacing(id_rates=True, window_ms=1000, response_delay_ms=5)
        control("POST", "reset")
        self.assertAccepted([ev(1, insert_id=f"i-{n}") for n in range(1000)])
        for bad in ({"id_rates": 1}, {"window_ms": 0}, {"response_delay_ms": -1}, {"speed": 2}):
            status, body = control("POST", "pacing", bad)
            self.assertEqual(status, 400, bad)


class ResponseDelayTest(MockTestCase):
    def test_answers_come_after_the_delay_and_requests_overlap(self):
        pacing(response_delay_ms=200)
        started = time.monotonic()
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(send([ev(i)])[0]))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        self.assertEqual(results, [200] * 4)
        self.assertGreaterEqual(elapsed, 0.2)
        self.assertLess(elapsed, 0.6)          # concurrent, not 4 x 200 ms
        started = time.monotonic()
        self.assertEqual(control("GET", "stats")[0], 200)
        self.assertLess(time.monotonic() - started, 0.15)  # the control API is not delayed

    def test_command_line_options(self):
        with tempfile.TemporaryDirectory() as d:
            proc, port = start_mock(d, "--enforce-id-rates", "--rate-window-ms", "1000",
                                    "--response-delay-ms", "100")
            try:
                body = json.dumps({"api_key": "mock-key-0123456789abcdef",
                                   "events": [ev(1, insert_id=f"i-{n}") for n in range(31)]}).encode()
                started = time.monotonic()
                status, _, data = request("POST", "/2/httpapi", body,
                                          {"Content-Type": "application/json"}, port=port)
                self.assertGreaterEqual(time.monotonic() - started, 0.1)
                self.assertEqual(status, 429, data)     # 31 > 30/s x 1 s
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=10)
            self.assertEqual(proc.returncode, 0)
