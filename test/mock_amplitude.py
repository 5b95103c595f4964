#!/usr/bin/env python3
"""A strict mock of Amplitude's ingestion API, for amplitude_sync's tests.

What it is
    A local stand-in for https://api2.amplitude.com (the real service cannot be reached from the
    test machines). It serves the four ingestion endpoints -- POST /2/httpapi, /batch (JSON events),
    /identify and /groupidentify (form-encoded identifications) -- and refuses everything the real
    Amplitude refuses, plus a few things where Amplitude's documentation is vague (see "Decisions"
    below): a test that passes against this mock should not be refused by Amplitude.
    It also records every request and keeps the ingested events, user profiles and group profiles,
    so tests can check what reached the wire. Python 3.11 standard library only.

How tests use it
    python3 test/mock_amplitude.py --port 0 --port-file /tmp/amp.port [--api-key KEY]... [--log F] &
    PORT=$(cat /tmp/amp.port)        # written atomically once the server listens
    ... point amplitude_sync at http://127.0.0.1:$PORT ...
    psql: COPY t FROM PROGRAM 'curl -s http://127.0.0.1:PORT/_mock/events'
          WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02');
    kill -TERM <pid>                 # exits cleanly
    In-process (Python tests): server = make_server(); threading.Thread(target=server.serve_forever)

Control API (never recorded as requests)
    POST   /_mock/faults    JSON array of fault rules, appended (see FaultRule)
    DELETE /_mock/faults    remove all fault rules
    GET    /_mock/faults    JSON Lines: the rules with their remaining uses
    POST   /_mock/config    {"api_keys": [...]} | {"silenced_devices": [...]}
                            | {"server_upload_time": MS or null}  (fixes the time in 200 answers)
    POST   /_mock/pacing    {"id_rates": true|false, "window_ms": MS, "response_delay_ms": MS}
                            (any subset; see "Per-ID rates and latency" below; reset restores
                            the command line's --enforce-id-rates/--rate-window-ms/--response-delay-ms)
    POST   /_mock/reset     forget requests, events, profiles, groups, faults, counters, config
                            (API keys go back to those from the command line)
    GET    /_mock/requests  JSON Lines: every request to an ingestion path, in arrival order
                            ("connection" numbers the TCP connection it came on)
    GET    /_mock/events    JSON Lines: stored (deduplicated) events plus "$path" and "$seq"
    GET    /_mock/bodies    JSON Lines: {"seq": n, "body": the request body text exactly as sent}
    GET    /_mock/users     JSON Lines: user profiles (device-only profiles have user_id null)
    GET    /_mock/groups    JSON Lines: group profiles
    GET    /_mock/stats     {"requests": n, "events_stored": n, "duplicates_dropped": n,
                             "strings_truncated": n, "groups_trimmed": n}
    Every JSON Lines object is one compact line with sorted keys, so output is deterministic.

Decisions where the contract is uncertain (the mock chooses the stricter reading)
    * JSON bodies: NaN/Infinity, numbers that overflow to infinity, duplicate object keys, lone
      UTF-16 surrogates, a byte-order mark and invalid UTF-8 are all "Invalid JSON request body".
    * A wrong/missing Content-Type or an unsupported Content-Encoding is a 400 (JSON or text).
    * JSON null for user_id/device_id counts as absent; null anywhere else at the top level of an
      event is an invalid value (omit the key instead).
    * time must be >= 0, session_id >= -1, all four integer fields within int64.
    * insert_id must be 1..128 characters; plan and ingestion_metadata only take their documented
      string keys; groups map a non-empty type to a non-empty string or a non-empty list of
      non-empty strings. Beyond 5 group types or 10 values per type, Amplitude keeps the first ones
      and ignores the rest (stats: groups_trimmed counts the events/identifications concerned).
    * Reserved event types ("[Amplitude] Revenue", ...) are invalid event_type values.
    * Property operations: an unknown "$..." key is refused; the same property in two operations
      of one object is refused; $add on an existing non-number value is refused (400).
    * 400 bodies carry only the index maps that have entries.
    * Per-event profile effects: every stored event (except $groupidentify) creates/links the user
      profile; user_properties, operations included ($add on an event adds, like /identify), are
      applied unless "$skip_user_properties_sync" is true.
    * /identify: country, region, city and dma are one location group, and platform, os_name,
      os_version, device_brand, device_manufacturer, device_model and carrier one device group:
      an identification that sends a field of a group clears the fields of that group it leaves
      out from the profile's "fields".
    * /identify and /groupidentify refuse unknown form fields, repeated form fields and unknown keys
      in an identification; "paying" must be a string.
    * Errors on /identify and /groupidentify are short plain text, never JSON, and never name the
      refused identification (the first problem found, as "identification: ..."). A wrong or
      repeated api_key is `invalid_api_key` (the key is never echoed); a missing or empty one is
      `missing_field` (the doc names no text for it; the JSON endpoints call it missing_field);
      a missing or malformed identification is `missing_event`. /2/httpapi and /batch answer
      JSON: {"code":400,"error":"Invalid API key: <key>"}, "missing_field": "api_key", ...
    * Strings longer than 1024 characters are accepted and stored truncated to 1024 characters
      (stats: strings_truncated): string fields and strings anywhere in event_properties,
      user_properties and group_properties. IDs, event_type, insert_id, group names and keys are
      kept as sent.
    * Order on /2/httpapi and /batch: Content-Type, empty body, gzip/JSON, api_key, events, key
      validity, options, size (bytes as received, then event count), then the per-event checks,
      then silenced devices, then deduplication and profile updates (all or nothing).

Per-ID rates and latency (off unless asked for)
    * With id_rates on, /2/httpapi and /batch throttle each user_id and device_id as Amplitude
      documents it: a request is refused with 429 when, for one of its IDs, the request's events
      plus the ID's events ingested in the last window (30 s) exceed EPS_THRESHOLD x window
      (900 per 30 s on /2/httpapi, 30,000 on /batch). The 429 body is the documented one, naming
      every ID over its allowance (eps_threshold + the ID's events in the request) and the indices
      of their events; nothing in the request is ingested, and refused events do not count.
      Checked after the request-level and per-event checks, after scripted faults.
    * response_delay_ms: every answer on an ingestion path is sent that long after the request
      was processed (the real service answers in about 200 ms); other requests go on meanwhile.

Fault-script semantics chosen here
    * Fault rules are looked at after the request is read and parsed but before any validation:
      status, reset, pass, too_large and a project-level throttle match any request (even an
      invalid one); invalid, silence and per-ID throttle rules only match requests that pass the
      request-level checks, since Amplitude authenticates before it inspects events.
    * skip: while a rule's skip count lasts, a matching request is answered normally and no later
      rule is consulted.
    * delay_ms: the request is processed first (when the action processes it: pass, status with
      ingest) and the answer is sent after the delay -- the "client timed out but Amplitude stored
      it" case. With reset, the connection is reset after the delay.
    * Throttle counts: throttled_users/devices report eps_threshold + the number of the ID's
      events in the request (so 31 for one event on /2/httpapi, like the doc's example);
      exceeded_daily_quota_* report 500200 (users) / 500900 (devices).
"""

import argparse
import collections
import copy
import itertools
import json
import math
import random
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
import urllib.parse
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# --------------------------------------------------------------------------------------------
# The contract, copied from shared/amplitude-api.md (the mock must not read that file).
# --------------------------------------------------------------------------------------------

DEFAULT_API_KEY = "mock-key-0123456789abcdef"

EVENT_PATHS = ("/2/httpapi", "/batch")
# The form endpoints' request-level refusals: short plain text, never JSON, never the key.
FORM_INVALID_API_KEY = "invalid_api_key"
FORM_MISSING_EVENT = "missing_event"      # identification missing or malformed
FORM_MISSING_FIELD = "missing_field"      # api_key missing or empty
IDENTIFY_PATH = "/identify"
GROUPIDENTIFY_PATH = "/groupidentify"
FORM_PATHS = (IDENTIFY_PATH, GROUPIDENTIFY_PATH)
INGESTION_PATHS = EVENT_PATHS + FORM_PATHS

MAX_EVENTS_PER_REQUEST = 2000
MAX_IDENTIFICATIONS = 1024
MAX_GROUP_PROPERTIES = 1024
MAX_PROPERTY_DEPTH = 40          # the property object itself is depth 1
MAX_INSERT_ID_LENGTH = 128
MAX_GROUP_TYPES = 5              # kept per event; the rest is ignored
MAX_GROUP_VALUES = 10            # kept per group type; the rest is ignored
MAX_STRING_LENGTH = 1024         # longer strings are truncated
RESERVED_EVENT_TYPES = frozenset({
    "[Amplitude] Start Session", "[Amplitude] End Session", "[Amplitude] Revenue",
    "[Amplitude] Revenue (Verified)", "[Amplitude] Revenue (Unverified)", "[Amplitude] Merged User",
})
DEFAULT_MIN_ID_LENGTH = 5
EPS_THRESHOLD = {"/2/httpapi": 30, "/batch": 1000}
RATE_WINDOW_MS = 30000           # per-ID rates are averaged over about 30 s
DAILY_QUOTA_USER_COUNT = 500200  # the values Amplitude's example 429 reports
DAILY_QUOTA_DEVICE_COUNT = 500900

# Guards for the mock itself (not Amplitude limits): refuse absurd bodies before reading them.
MAX_DECLARED_BODY = 64 * 1024 * 1024
MAX_DECOMPRESSED_BODY = 256 * 1024 * 1024

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def body_too_large(path, nbytes):
    """Byte-size limits apply to the body as received (before gzip decoding)."""
    if path == "/2/httpapi":
        return nbytes >= 1_000_000       # "< 1 MB"
    if path == "/batch":
        return nbytes > 20_000_000       # "<= 20 MB"
    return nbytes > 1_000_000            # identify / groupidentify: "1 MB per request"


# IDs Amplitude refuses, compared case-insensitively (and, stricter, ignoring outer whitespace).
REFUSED_IDS = frozenset({
    "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", "",
    "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
})

ID_FIELDS = ("user_id", "device_id")
EVENT_INT_FIELDS = {"time": 0, "event_id": INT64_MIN, "session_id": -1, "quantity": INT64_MIN}
EVENT_NUMBER_FIELDS = ("price", "revenue", "location_lat", "location_lng")
EVENT_OBJECT_FIELDS = ("event_properties", "user_properties", "group_properties", "groups",
                       "plan", "ingestion_metadata")
EVENT_STRING_FIELDS = (
    "insert_id", "platform", "os_name", "os_version", "device_brand", "device_manufacturer",
    "device_model", "carrier", "country", "region", "city", "dma", "language", "app_version",
    "productId", "revenueType", "currency", "ip", "idfa", "idfv", "adid", "android_id",
    "android_app_set_id", "user_agent", "partner_id", "library",
)
EVENT_BOOL_FIELDS = ("$skip_user_properties_sync",)
KNOWN_EVENT_FIELDS = frozenset(
    ("event_type",) + ID_FIELDS + tuple(EVENT_INT_FIELDS) + EVENT_NUMBER_FIELDS
    + EVENT_OBJECT_FIELDS + EVENT_STRING_FIELDS + EVENT_BOOL_FIELDS)
PLAN_KEYS = frozenset({"branch", "source", "version"})
INGESTION_METADATA_KEYS = frozenset({"source_name", "source_version"})

IDENTIFY_FIELDS = ("app_version", "platform", "os_name", "os_version", "device_brand",
                   "device_manufacturer", "device_model", "carrier", "country", "region", "city",
                   "dma", "language", "paying", "start_version")
KNOWN_IDENTIFY_KEYS = frozenset(ID_FIELDS + ("user_properties", "groups") + IDENTIFY_FIELDS)
# Identify fields Amplitude updates together: sending one resets the others left out.
IDENTIFY_FIELD_GROUPS = (("country", "region", "city", "dma"),
                         ("platform", "os_name", "os_version", "device_brand",
                          "device_manufacturer", "device_model", "carrier"))
PROPERTY_OBJECTS = ("event_properties", "user_properties", "group_properties")
KNOWN_GROUPIDENTIFY_KEYS = frozenset({"group_type", "group_value", "group_properties"})

# Order in which the operations of one user_properties object are applied. The doc lists
# $clearAll last but it only makes sense as "start from an empty profile", so it goes first;
# removals ($unset) come before writes so that a key can be reset and then set once; $setOnce
# before $set so that a $set in the same call wins; then the arithmetic and list operations,
# $remove last so it removes whatever the list operations added.
USER_OPS_ORDER = ("$clearAll", "$unset", "$setOnce", "$set", "$add", "$append", "$prepend",
                  "$preInsert", "$postInsert", "$remove")
USER_OPS = frozenset(USER_OPS_ORDER)
GROUP_OPS = frozenset({"$set", "$setOnce", "$add", "$append", "$prepend", "$unset"})


# --------------------------------------------------------------------------------------------
# Small helpers: replies, JSON, content types, gzip.
# --------------------------------------------------------------------------------------------

class Reply:
    """An HTTP answer: status, content type, body bytes, and what /_mock/requests shows."""

    def __init__(self, status, content_type, body, logged):
        self.status = status
        self.content_type = content_type
        self.body = body
        self.logged = logged


def json_reply(status, obj):
    # Insertion order (code first, like Amplitude); /_mock/requests re-dumps with sorted keys.
    return Reply(status, "application/json", json.dumps(obj, separators=(",", ":")).encode(), obj)


def text_reply(status, text, content_type="text/plain; charset=utf-8"):
    return Reply(status, content_type, text.encode("utf-8"), text)


def json_line(obj):
    """One deterministic JSON Lines record (control characters are escaped by json)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def canonical(value):
    """A comparison key where 1, 1.0 and true differ (Python's == would mix them up)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class BadJSON(ValueError):
    pass


def _refuse_constant(name):
    raise BadJSON(f"non-standard JSON constant {name}")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise BadJSON(f"number out of range: {text}")
    return value


def _unique_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise BadJSON(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def loads_strict(data):
    """Parse UTF-8 JSON bytes the way a strict server would, or raise BadJSON."""
    try:
        text = data.decode("utf-8")
        value = json.loads(text, parse_float=_finite_float, parse_constant=_refuse_constant,
                           object_pairs_hook=_unique_keys)
        # Lone surrogates ("\ud800") parse in Python but are not Unicode text.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:   # JSONDecodeError and UnicodeError are ValueErrors
        raise BadJSON(str(exc)) from None
    return value


def media_type(header):
    """Split a Content-Type header into (lower-case type, {param: lower-case value})."""
    if not header:
        return "", {}
    parts = header.split(";")
    params = {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        params[key.strip().lower()] = value.strip().strip('"').lower()
    return parts[0].strip().lower(), params


def content_type_is(header, expected):
    mtype, params = media_type(header)
    return mtype == expected and params.get("charset", "utf-8") in ("utf-8", "utf8")


class UnsupportedEncoding(Exception):
    pass


class DecodedTooLarge(Exception):
    pass


def decode_content(raw, content_encoding):
    """Undo Content-Encoding (identity or gzip). Raises UnsupportedEncoding, DecodedTooLarge or
    ValueError (corrupt gzip)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return raw
    if encoding not in ("gzip", "x-gzip"):
        raise UnsupportedEncoding(content_encoding)
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = decoder.decompress(raw, MAX_DECOMPRESSED_BODY + 1)
    except zlib.error as exc:
        raise ValueError(f"corrupt gzip body: {exc}") from None
    if len(data) > MAX_DECOMPRESSED_BODY:
        raise DecodedTooLarge()
    if not decoder.eof or decoder.unused_data:
        raise ValueError("truncated gzip body or trailing bytes")
    return data


# --------------------------------------------------------------------------------------------
# Field checks shared by events and identifications.
# --------------------------------------------------------------------------------------------

def is_json_int(value):
    return (isinstance(value, int) and not isinstance(value, bool)
            and INT64_MIN <= value <= INT64_MAX)


def is_json_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def too_deep(value, allowed=MAX_PROPERTY_DEPTH):
    """True if containers nest deeper than `allowed` (a bare object/array is depth 1)."""
    if not isinstance(value, (dict, list)):
        return False
    if allowed <= 0:
        return True
    children = value.values() if isinstance(value, dict) else value
    return any(too_deep(child, allowed - 1) for child in children)


def id_problem(value, min_length):
    """None if a present user_id/device_id is acceptable, else "invalid" or "length"."""
    if not isinstance(value, str):
        return "invalid"
    if value.strip().lower() in REFUSED_IDS:
        return "invalid"
    if len(value) < min_length:
        return "length"
    return None


def _non_empty_string(value):
    return isinstance(value, str) and value != ""


def groups_ok(groups):
    """groups: {group type: value or [values]} (the limits trim, see kept_groups)."""
    if not isinstance(groups, dict):
        return False
    for group_type, value in groups.items():
        if group_type == "":
            return False
        values = value if isinstance(value, list) else [value]
        if not values:
            return False
        if not all(_non_empty_string(v) for v in values):
            return False
    return True


def group_pairs(groups):
    """Yield (group type, group value) for every membership in a valid groups object."""
    for group_type in sorted(groups):
        value = groups[group_type]
        for group_value in (value if isinstance(value, list) else [value]):
            yield group_type, group_value


def kept_groups(groups, counts):
    """What Amplitude keeps of a valid groups object: the first 5 types, 10 values each."""
    kept = {}
    for group_type, value in list(groups.items())[:MAX_GROUP_TYPES]:
        kept[group_type] = value[:MAX_GROUP_VALUES] if isinstance(value, list) else value
    if kept != groups:
        counts["groups_trimmed"] += 1
    return kept


def _truncated(value, counts):
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            counts["strings_truncated"] += 1
            return value[:MAX_STRING_LENGTH]
        return value
    if isinstance(value, list):
        return [_truncated(v, counts) for v in value]
    if isinstance(value, dict):
        return {k: _truncated(v, counts) for k, v in value.items()}
    return value


def as_kept(item, string_fields, counts):
    """A copy of a valid event or identification as Amplitude keeps it: long strings truncated,
    groups beyond the limits dropped. counts gathers what changed."""
    kept = dict(item)
    for field in string_fields + PROPERTY_OBJECTS:
        if field in kept:
            kept[field] = _truncated(kept[field], counts)
    if isinstance(kept.get("groups"), dict):
        kept["groups"] = kept_groups(kept["groups"], counts)
    return kept


TRUNCATED_EVENT_FIELDS = tuple(f for f in EVENT_STRING_FIELDS if f != "insert_id")


def string_map_ok(value, allowed_keys):
    return (isinstance(value, dict) and set(value) <= allowed_keys
            and all(isinstance(v, str) for v in value.values()))


class PropertyError(ValueError):
    """A user/group property update Amplitude would refuse."""


def property_ops(props, allowed_ops):
    """Normalise a user_properties/group_properties object into {operation: argument}.

    A plain object means $set. Raises PropertyError for anything Amplitude refuses: mixing plain
    keys with operations, unknown operations, malformed arguments.
    """
    if not isinstance(props, dict):
        raise PropertyError("properties must be an object")
    operations = [key for key in props if key.startswith("$")]
    if not operations:
        return {"$set": props}
    if len(operations) != len(props):
        raise PropertyError("cannot mix operations and plain properties")
    touched = set()
    for op, arg in props.items():
        if op not in allowed_ops:
            raise PropertyError(f"unsupported operation {op}")
        if op == "$clearAll":
            if arg != "-":
                raise PropertyError('$clearAll takes the value "-"')
            continue
        if not isinstance(arg, dict):
            raise PropertyError(f"{op} takes an object")
        if op == "$unset" and any(v != "-" for v in arg.values()):
            raise PropertyError('$unset values must be "-"')
        if op == "$add" and not all(is_json_number(v) for v in arg.values()):
            raise PropertyError("$add values must be numbers")
        for key in arg:
            if key in touched:
                raise PropertyError(f"property {key!r} is used in more than one operation")
            touched.add(key)
    return props


def count_properties(ops):
    return sum(len(arg) for arg in ops.values() if isinstance(arg, dict))


def _as_list(value):
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def apply_ops(props, ops):
    """Apply normalised operations to a profile's property dict in USER_OPS_ORDER."""
    for op in USER_OPS_ORDER:
        if op not in ops:
            continue
        arg = ops[op]
        if op == "$clearAll":
            props.clear()
            continue
        for key, value in arg.items():
            _apply_one(props, op, key, copy.deepcopy(value))


def _apply_one(props, op, key, value):
    if op == "$unset":
        props.pop(key, None)
    elif op == "$setOnce":
        props.setdefault(key, value)
    elif op == "$set":
        props[key] = value
    elif op == "$add":
        current = props.get(key, 0)
        if not is_json_number(current):
            raise PropertyError(f"$add on non-numeric property {key!r}")
        props[key] = current + value
    elif op in ("$append", "$prepend", "$preInsert", "$postInsert"):
        current = _as_list(props.get(key))
        values = _as_list(value) if isinstance(value, list) else [value]
        if op in ("$preInsert", "$postInsert"):
            values = _new_values(current, values)
        props[key] = values + current if op in ("$prepend", "$preInsert") else current + values
    elif op == "$remove":
        if key in props:
            drop = {canonical(v) for v in (value if isinstance(value, list) else [value])}
            props[key] = [v for v in _as_list(props[key]) if canonical(v) not in drop]


def _new_values(current, values):
    """The values not already in the list (nor repeated), for $preInsert/$postInsert."""
    seen = {canonical(v) for v in current}
    fresh = []
    for value in values:
        if canonical(value) not in seen:
            seen.add(canonical(value))
            fresh.append(value)
    return fresh


# --------------------------------------------------------------------------------------------
# Event validation (/2/httpapi, /batch).
# --------------------------------------------------------------------------------------------

class EventProblems:
    """Collects problems over all events of a request, as Amplitude's 400 index maps."""

    def __init__(self):
        self.missing = {}
        self.invalid = {}
        self.id_length = {}

    def add(self, table, field, index):
        table.setdefault(field, set()).add(index)

    def __bool__(self):
        return bool(self.missing or self.invalid or self.id_length)

    def reply(self):
        if self.missing:
            error = "Request missing required field"
        elif self.invalid:
            error = "Invalid field values on some events"
        else:
            error = "Invalid id length for user_id or device_id"
        body = {"code": 400, "error": error}
        for name, table in (("events_with_missing_fields", self.missing),
                            ("events_with_invalid_fields", self.invalid),
                            ("events_with_invalid_id_lengths", self.id_length)):
            if table:
                body[name] = {field: sorted(table[field]) for field in sorted(table)}
        return json_reply(400, body)


def check_event(index, event, min_id_length, problems):
    if not isinstance(event, dict):
        problems.add(problems.invalid, "event", index)
        return
    for key in event:
        if key not in KNOWN_EVENT_FIELDS:
            # Strict: Amplitude drops unknown keys silently, which loses data.
            problems.add(problems.invalid, key, index)
    _check_event_type(index, event, problems)
    _check_event_ids(index, event, min_id_length, problems)
    _check_event_scalars(index, event, problems)
    _check_event_objects(index, event, problems)


def _check_event_type(index, event, problems):
    event_type = event.get("event_type")
    if event_type is None:
        problems.add(problems.missing, "event_type", index)
    elif (not isinstance(event_type, str) or not event_type.strip()
          or event_type in RESERVED_EVENT_TYPES):
        problems.add(problems.invalid, "event_type", index)


def _check_event_ids(index, event, min_id_length, problems):
    present = [f for f in ID_FIELDS if event.get(f) is not None]
    if not present:
        # Amplitude reports it under user_id; device_id too, so either key finds it.
        problems.add(problems.missing, "user_id", index)
        problems.add(problems.missing, "device_id", index)
    for field in present:
        problem = id_problem(event[field], min_id_length)
        if problem == "invalid":
            problems.add(problems.invalid, field, index)
        elif problem == "length":
            problems.add(problems.id_length, field, index)


def _check_event_scalars(index, event, problems):
    for field, minimum in EVENT_INT_FIELDS.items():
        if field in event and not (is_json_int(event[field]) and event[field] >= minimum):
            problems.add(problems.invalid, field, index)
    for field in EVENT_NUMBER_FIELDS:
        if field in event and not is_json_number(event[field]):
            problems.add(problems.invalid, field, index)
    for field in EVENT_STRING_FIELDS:
        if field in event and not isinstance(event[field], str):
            problems.add(problems.invalid, field, index)
    for field in EVENT_BOOL_FIELDS:
        if field in event and not isinstance(event[field], bool):
            problems.add(problems.invalid, field, index)
    insert_id = event.get("insert_id")
    if isinstance(insert_id, str) and not 1 <= len(insert_id) <= MAX_INSERT_ID_LENGTH:
        problems.add(problems.invalid, "insert_id", index)


def _check_event_objects(index, event, problems):
    is_group_identify = event.get("event_type") == "$groupidentify"
    if is_group_identify:
        for field in ("groups", "group_properties"):
            if event.get(field) is None:
                problems.add(problems.missing, field, index)
    for field in EVENT_OBJECT_FIELDS:
        if field in event and not _event_object_ok(field, event[field], is_group_identify):
            problems.add(problems.invalid, field, index)


def _event_object_ok(field, value, is_group_identify):
    if not isinstance(value, dict) or too_deep(value):
        return False
    if field == "plan":
        return string_map_ok(value, PLAN_KEYS)
    if field == "ingestion_metadata":
        return string_map_ok(value, INGESTION_METADATA_KEYS)
    if field == "groups":
        return groups_ok(value)
    try:
        if field == "user_properties":
            property_ops(value, USER_OPS)
        elif field == "group_properties" and is_group_identify:
            ops = property_ops(value, GROUP_OPS)
            return count_properties(ops) <= MAX_GROUP_PROPERTIES
    except PropertyError:
        return False
    return True


def validate_events(events, min_id_length):
    """None if every event is acceptable, else the 400 reply listing every problem."""
    problems = EventProblems()
    for index, event in enumerate(events):
        check_event(index, event, min_id_length, problems)
    return problems.reply() if problems else None


# --------------------------------------------------------------------------------------------
# Identification validation (/identify, /groupidentify): problems are short text lines.
# --------------------------------------------------------------------------------------------

def identify_problems(ident):
    problems = []
    where = "identification"
    for key in sorted(set(ident) - KNOWN_IDENTIFY_KEYS):
        problems.append(f"{where}: unknown key {key}")
    present = [f for f in ID_FIELDS if ident.get(f) is not None]
    if not present:
        problems.append(f"{where}: user_id or device_id is required")
    for field in present:
        problem = id_problem(ident[field], DEFAULT_MIN_ID_LENGTH)
        if problem == "invalid":
            problems.append(f"{where}: invalid {field}")
        elif problem == "length":
            problems.append(f"{where}: invalid id length for {field}")
    if "user_properties" in ident:
        problems.extend(_properties_problems(where, "user_properties", ident["user_properties"],
                                             USER_OPS))
    if "groups" in ident and not (groups_ok(ident["groups"]) and not too_deep(ident["groups"])):
        problems.append(f"{where}: invalid groups")
    for field in IDENTIFY_FIELDS:
        if field in ident and not isinstance(ident[field], str):
            problems.append(f"{where}: {field} must be a string")
    return problems


def groupidentify_problems(ident):
    problems = []
    where = "identification"
    for key in sorted(set(ident) - KNOWN_GROUPIDENTIFY_KEYS):
        problems.append(f"{where}: unknown key {key}")
    for field in ("group_type", "group_value"):
        if not _non_empty_string(ident.get(field)):
            problems.append(f"{where}: {field} must be a non-empty string")
    if "group_properties" not in ident:
        problems.append(f"{where}: group_properties is required")
    else:
        problems.extend(_properties_problems(where, "group_properties", ident["group_properties"],
                                             GROUP_OPS))
    return problems


def _properties_problems(where, field, props, allowed_ops):
    if not isinstance(props, dict):
        return [f"{where}: {field} must be an object"]
    if too_deep(props):
        return [f"{where}: {field} nested deeper than {MAX_PROPERTY_DEPTH}"]
    try:
        ops = property_ops(props, allowed_ops)
    except PropertyError as exc:
        return [f"{where}: {field}: {exc}"]
    if allowed_ops is GROUP_OPS and count_properties(ops) > MAX_GROUP_PROPERTIES:
        return [f"{where}: more than {MAX_GROUP_PROPERTIES} group properties"]
    return []


# --------------------------------------------------------------------------------------------
# Parsing a request into what the fault rules and the processing need.
# --------------------------------------------------------------------------------------------

class EventRequest:
    """A parsed /2/httpapi or /batch request. `error` is set when the request fails as a whole."""

    def __init__(self, path, body_bytes):
        self.path = path
        self.body_bytes = body_bytes
        self.api_key = None
        self.events = None
        self.identifications = None
        self.min_id_length = DEFAULT_MIN_ID_LENGTH
        self.error = None

    @property
    def items(self):
        return self.events

    def fail(self, status, error, **extra):
        self.error = json_reply(status, {"code": status, "error": error, **extra})
        return self


def parse_event_request(path, content_type, content_encoding, raw, api_keys):
    """Request-level checks, in Amplitude's order; per-event checks come later."""
    req = EventRequest(path, len(raw))
    if not content_type_is(content_type, "application/json"):
        return req.fail(400, "Invalid Content-Type: expected application/json")
    if not raw:
        return req.fail(400, "Missing request body")
    try:
        data = decode_content(raw, content_encoding)
    except UnsupportedEncoding:
        return req.fail(400, f"Unsupported Content-Encoding: {content_encoding}")
    except DecodedTooLarge:
        return req.fail(413, "Payload too large")
    except ValueError:
        return req.fail(400, "Invalid JSON request body")
    if not data:
        return req.fail(400, "Missing request body")
    try:
        body = loads_strict(data)
    except BadJSON:
        return req.fail(400, "Invalid JSON request body")
    if not isinstance(body, dict):
        return req.fail(400, "Invalid JSON request body")
    req.api_key = body.get("api_key")
    req.events = body.get("events")
    if req.api_key is None or req.api_key == "":
        return req.fail(400, "Request missing required field", missing_field="api_key")
    if not isinstance(req.events, list) or not req.events:
        return req.fail(400, "Request missing required field", missing_field="events")
    if not (isinstance(req.api_key, str) and req.api_key in api_keys):
        shown = req.api_key if isinstance(req.api_key, str) else json.dumps(req.api_key)
        return req.fail(400, f"Invalid API key: {shown}")
    options = body.get("options", {})
    if not _options_ok(options):
        return req.fail(400, "Invalid options: only min_id_length (a positive integer) is allowed")
    req.min_id_length = options.get("min_id_length", DEFAULT_MIN_ID_LENGTH)
    if body_too_large(path, len(raw)) or len(req.events) > MAX_EVENTS_PER_REQUEST:
        return req.fail(413, "Payload too large")
    return req


def _options_ok(options):
    if not isinstance(options, dict) or set(options) - {"min_id_length"}:
        return False
    value = options.get("min_id_length", DEFAULT_MIN_ID_LENGTH)
    return is_json_int(value) and value >= 1


class FormRequest:
    """A parsed /identify or /groupidentify request."""

    def __init__(self, path, body_bytes):
        self.path = path
        self.body_bytes = body_bytes
        self.api_key = None
        self.events = None
        self.identifications = None
        self.error = None

    @property
    def items(self):
        return self.identifications

    def fail(self, status, text):
        self.error = text_reply(status, text)
        return self


def parse_form_request(path, content_type, content_encoding, raw, api_keys):
    req = FormRequest(path, len(raw))
    if not content_type_is(content_type, "application/x-www-form-urlencoded"):
        return req.fail(400, "invalid content type: expected application/x-www-form-urlencoded")
    try:
        data = decode_content(raw, content_encoding)
        pairs = urllib.parse.parse_qsl(data.decode("ascii"), keep_blank_values=True,
                                       encoding="utf-8", errors="strict")
    except UnsupportedEncoding:
        return req.fail(400, f"unsupported Content-Encoding: {content_encoding}")
    except DecodedTooLarge:
        return req.fail(413, "Payload too large")
    except ValueError:      # corrupt gzip, raw non-ASCII bytes, percent-encoded invalid UTF-8
        return req.fail(400, "invalid form body: expected URL-encoded UTF-8")
    fields = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    api_keys_sent = fields.get("api_key", [])
    if len(api_keys_sent) == 1:
        req.api_key = api_keys_sent[0]
    if not api_keys_sent or req.api_key == "":
        return req.fail(400, FORM_MISSING_FIELD)
    if len(api_keys_sent) != 1 or req.api_key not in api_keys:
        return req.fail(400, FORM_INVALID_API_KEY)       # never echoes the key
    req.identifications = _parse_identification(fields.get("identification", []))
    if req.identifications is None:
        return req.fail(400, FORM_MISSING_EVENT)
    unknown = sorted(set(fields) - {"api_key", "identification"})
    if unknown:
        return req.fail(400, f"unknown form field: {unknown[0]}")
    if len(req.identifications) > MAX_IDENTIFICATIONS or body_too_large(path, len(raw)):
        return req.fail(413, "Payload too large")
    return req


def _parse_identification(values):
    """The identification field as a non-empty list of objects, or None (missing_event)."""
    if len(values) != 1:
        return None
    try:
        parsed = loads_strict(values[0].encode("utf-8"))
    except BadJSON:
        return None
    if isinstance(parsed, dict):
        return [parsed]
    if isinstance(parsed, list) and parsed and all(isinstance(i, dict) for i in parsed):
        return parsed
    return None


# --------------------------------------------------------------------------------------------
# Fault rules (POST /_mock/faults).
# --------------------------------------------------------------------------------------------

FAULT_ACTIONS = ("status", "reset", "invalid", "throttle", "too_large", "silence", "pass")
FAULT_KEYS = {
    "action", "path", "skip", "times", "delay_ms", "probability", "seed",
    "status", "body", "content_type", "ingest",          # status
    "field", "values",                                    # invalid
    "users", "devices", "quota_users", "quota_devices",   # throttle (devices also for silence)
    "max_bytes",                                          # too_large
}


class FaultError(ValueError):
    pass


def _list_of_strings(spec, key):
    value = spec.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FaultError(f"{key} must be a list of strings")
    return frozenset(value)


def _int_option(spec, key, default, minimum):
    value = spec.get(key, default)
    if not is_json_int(value) or value < minimum:
        raise FaultError(f"{key} must be an integer >= {minimum}")
    return value


class FaultRule:
    """One scripted misbehaviour.

    Rules are checked in order for each ingestion request. The first rule that matches and has
    uses left is applied. While its `skip` count lasts, a matching request is let through
    normally (no later rule is consulted), so [{"status":500,"skip":1}, {"status":503}] gives
    OK, 500, 503.
    """

    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise FaultError("each fault rule must be an object")
        unknown = set(spec) - FAULT_KEYS
        if unknown:
            raise FaultError(f"unknown fault rule keys: {sorted(unknown)}")
        self.spec = spec
        self.action = spec.get("action")
        if self.action not in FAULT_ACTIONS:
            raise FaultError(f"action must be one of {list(FAULT_ACTIONS)}")
        self.path = spec.get("path")
        if self.path is not None and self.path not in INGESTION_PATHS:
            raise FaultError(f"path must be one of {list(INGESTION_PATHS)}")
        self.skip_left = _int_option(spec, "skip", 0, 0)
        self.uses_left = _int_option(spec, "times", 1, -1)   # -1 = unlimited
        self.delay_ms = _int_option(spec, "delay_ms", 0, 0)
        self.ingest = spec.get("ingest", False)
        if not isinstance(self.ingest, bool) or (self.ingest and self.action != "status"):
            raise FaultError("ingest must be a boolean and only goes with action status")
        # For soak tests: the rule matches only this fraction of the requests it
        # would match, drawn from a seeded generator so a run can be replayed.
        self.probability = spec.get("probability", 1)
        if not isinstance(self.probability, (int, float)) or not 0 < self.probability <= 1:
            raise FaultError("probability must be a number in (0, 1]")
        self._rng = random.Random(_int_option(spec, "seed", 0, 0))
        self._parse_action_fields(spec)

    def _parse_action_fields(self, spec):
        if self.action == "status":
            self.status = _int_option(spec, "status", 500, 200)
            if self.status > 599:
                raise FaultError("status must be 200..599")
            self.content_type = spec.get("content_type", "application/json")
            if not isinstance(self.content_type, str):
                raise FaultError("content_type must be a string")
        elif self.action == "invalid":
            if not isinstance(spec.get("field"), str) or not isinstance(spec.get("values"), list):
                raise FaultError("invalid needs field (string) and values (list)")
            self.field = spec["field"]
            self.values = {canonical(v) for v in spec["values"]}
        elif self.action == "throttle":
            self.users = _list_of_strings(spec, "users")
            self.devices = _list_of_strings(spec, "devices")
            self.quota_users = _list_of_strings(spec, "quota_users")
            self.quota_devices = _list_of_strings(spec, "quota_devices")
        elif self.action == "too_large":
            self.max_bytes = _int_option(spec, "max_bytes", None, 0)
        elif self.action == "silence":
            self.devices = _list_of_strings(spec, "devices")

    def describe(self):
        return {**self.spec, "uses_left": self.uses_left, "skip_left": self.skip_left}

    def outcome(self, req):
        """None if this rule does not match the request; else the fault's reply (None for the
        reply-less actions pass and reset, and for status with ingest, answered later)."""
        if self.path is not None and self.path != req.path:
            return None
        handler = getattr(self, "_outcome_" + self.action)
        outcome = handler(req)
        if outcome is not None and self.probability < 1 and self._rng.random() >= self.probability:
            return None
        return outcome

    # Rules that look at events/identifications only match requests that passed the
    # request-level checks (body, API key, size): Amplitude authenticates before it throttles.

    def _outcome_pass(self, req):
        return NO_REPLY

    def _outcome_reset(self, req):
        return NO_REPLY

    def _outcome_status(self, req):
        return self.status_reply(req.path)

    def _outcome_too_large(self, req):
        if req.body_bytes <= self.max_bytes:
            return None
        if req.path in FORM_PATHS:
            return text_reply(413, "Payload too large")
        return json_reply(413, {"code": 413, "error": "Payload too large"})

    def _outcome_invalid(self, req):
        if req.error is not None:
            return None
        hits = [i for i, item in enumerate(req.items)
                if isinstance(item, dict) and self.field in item
                and canonical(item[self.field]) in self.values]
        if not hits:
            return None
        if req.path in FORM_PATHS:
            return text_reply(400, f"invalid field values: {self.field}")
        return json_reply(400, {"code": 400, "error": "Invalid field values on some events",
                                "events_with_invalid_fields": {self.field: hits}})

    def _outcome_silence(self, req):
        if req.error is not None or req.events is None:
            return None
        return silenced_reply(req.events, self.devices)

    def _outcome_throttle(self, req):
        project_level = not (self.users or self.devices or self.quota_users or self.quota_devices)
        if project_level:
            return throttle_reply(req.path, {}, {}, [], {}, {})
        if req.error is not None:
            return None
        return self._id_throttle(req)

    def _id_throttle(self, req):
        users, devices, quota_users, quota_devices, indices = {}, {}, {}, {}, []
        for index, item in enumerate(req.items):
            uid, did = _string_id(item, "user_id"), _string_id(item, "device_id")
            hit = False
            if uid in self.users:
                users[uid] = users.get(uid, EPS_THRESHOLD.get(req.path, 30)) + 1
                hit = True
            if did in self.devices:
                devices[did] = devices.get(did, EPS_THRESHOLD.get(req.path, 30)) + 1
                hit = True
            if uid in self.quota_users:
                quota_users[uid] = DAILY_QUOTA_USER_COUNT
                hit = True
            if did in self.quota_devices:
                quota_devices[did] = DAILY_QUOTA_DEVICE_COUNT
                hit = True
            if hit:
                indices.append(index)
        if not indices:
            return None
        return throttle_reply(req.path, users, devices, indices, quota_users, quota_devices)

    def status_reply(self, path):
        body = self.spec.get("body")
        if body is None:
            body = default_status_body(self.status, self.content_type, path)
        elif not isinstance(body, str):
            body = json.dumps(body, separators=(",", ":"))
        logged = body
        if self.content_type.lower().startswith("application/json"):
            try:
                logged = json.loads(body)
            except ValueError:
                pass
        return Reply(self.status, self.content_type, body.encode("utf-8"), logged)


NO_REPLY = Reply(0, "", b"", None)   # marker: the rule matched but answers no body itself


def _string_id(item, field):
    value = item.get(field) if isinstance(item, dict) else None
    return value if isinstance(value, str) else None


def default_status_body(status, content_type, path):
    """The body a scripted status answers with when the rule gives none."""
    phrase = _phrase(status)
    if content_type.lower().startswith("text/html"):
        return (f"<html><head><title>{status} {phrase}</title></head><body><center>"
                f"<h1>{status} {phrase}</h1></center></body></html>\n")
    if not content_type.lower().startswith("application/json"):
        return phrase
    if status == 429:       # the doc's project-level throttle body, with this path's threshold
        event_path = path if path in EVENT_PATHS else EVENT_PATHS[0]
        return json.dumps(throttle_reply(event_path, {}, {}, [], {}, {}).logged,
                          separators=(",", ":"))
    return json.dumps({"code": status, "error": phrase}, separators=(",", ":"))


def _phrase(status):
    if status == 413:
        return "Payload too large"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def throttle_reply(path, users, devices, indices, quota_users, quota_devices):
    if path in FORM_PATHS:
        return text_reply(429, "Too many requests for some devices and users")
    return json_reply(429, {
        "code": 429, "error": "Too many requests for some devices and users",
        "eps_threshold": EPS_THRESHOLD.get(path, 30),
        "throttled_devices": devices, "throttled_users": users, "throttled_events": indices,
        "exceeded_daily_quota_users": quota_users, "exceeded_daily_quota_devices": quota_devices,
    })


def silenced_reply(events, silenced):
    """The 400 for events whose device_id is silenced, or None if none is."""
    indices = [i for i, e in enumerate(events) if _string_id(e, "device_id") in silenced]
    if not indices:
        return None
    devices = sorted({events[i]["device_id"] for i in indices})
    return json_reply(400, {"code": 400, "error": "Events silenced for device_id",
                            "silenced_devices": devices, "silenced_events": indices})


# --------------------------------------------------------------------------------------------
# Profiles with all-or-nothing updates.
# --------------------------------------------------------------------------------------------

_GONE = object()


class Overlay:
    """Copy-on-write view of a dict: a request's changes are kept aside and either committed or
    dropped, so a 400 never leaves half-applied profile updates behind."""

    def __init__(self, base):
        self.base = base
        self.changes = {}

    def get(self, key):
        if key in self.changes:
            value = self.changes[key]
            return None if value is _GONE else value
        value = self.base.get(key)
        if value is None:
            return None
        value = copy.deepcopy(value)
        self.changes[key] = value
        return value

    def put(self, key, value):
        self.changes[key] = value

    def delete(self, key):
        self.changes[key] = _GONE

    def commit(self):
        for key, value in self.changes.items():
            if value is _GONE:
                self.base.pop(key, None)
            else:
                self.base[key] = value


def new_user_profile(user_id, device_ids):
    return {"user_id": user_id, "device_ids": device_ids, "user_properties": {}, "groups": {},
            "fields": {}}


class ProfileTx:
    """Profile changes of one request. Users are keyed ("u", user_id) or, for device-only
    profiles, ("d", device_id); device_owner maps a device to the profile it resolves to."""

    def __init__(self, state):
        self.users = Overlay(state.users)
        self.owner = Overlay(state.device_owner)
        self.groups = Overlay(state.groups)

    def commit(self):
        self.users.commit()
        self.owner.commit()
        self.groups.commit()

    def user_profile(self, user_id, device_id):
        if user_id is None:
            return self._device_profile(device_id)
        key = ("u", user_id)
        profile = self.users.get(key)
        if profile is None:
            profile = new_user_profile(user_id, [])
            self.users.put(key, profile)
        if device_id is not None:
            self._link_device(key, profile, device_id)
        return profile

    def _device_profile(self, device_id):
        key = self.owner.get(device_id)     # the user it was linked to last, if any
        if key is None:
            key = ("d", device_id)
            self.users.put(key, new_user_profile(None, [device_id]))
            self.owner.put(device_id, key)
        return self.users.get(key)

    def _link_device(self, key, profile, device_id):
        owner = self.owner.get(device_id)
        if owner is not None and owner[0] == "d":
            # The device had its own profile: fold it into the user's (user values win).
            device_profile = self.users.get(owner)
            for section in ("user_properties", "groups", "fields"):
                profile[section] = {**device_profile[section], **profile[section]}
            self.users.delete(owner)
        if device_id not in profile["device_ids"]:
            profile["device_ids"].append(device_id)
        self.owner.put(device_id, key)

    def group_profile(self, group_type, group_value):
        key = (group_type, group_value)
        group = self.groups.get(key)
        if group is None:
            group = {"group_type": group_type, "group_value": group_value, "group_properties": {}}
            self.groups.put(key, group)
        return group


def apply_event(tx, event):
    """Profile effects of one accepted event. Raises PropertyError(field)."""
    event_type = event["event_type"]
    if event_type == "$groupidentify":
        ops = property_ops(event["group_properties"], GROUP_OPS)
        for group_type, group_value in group_pairs(event["groups"]):
            _apply_or_fail(tx.group_profile(group_type, group_value)["group_properties"], ops,
                           "group_properties")
        return
    profile = tx.user_profile(event.get("user_id"), event.get("device_id"))
    skip_sync = event.get("$skip_user_properties_sync") is True and event_type != "$identify"
    if "user_properties" in event and not skip_sync:
        _apply_or_fail(profile["user_properties"], property_ops(event["user_properties"], USER_OPS),
                       "user_properties")
    if event_type == "$identify" and "groups" in event:
        # Groups on an ordinary event count for that event only; $identify makes them last.
        profile["groups"].update(copy.deepcopy(event["groups"]))


def _apply_or_fail(props, ops, field):
    try:
        apply_ops(props, ops)
    except PropertyError as exc:
        raise PropertyError(field) from exc


def apply_identification(tx, path, ident):
    """Profile effects of one /identify or /groupidentify identification."""
    if path == GROUPIDENTIFY_PATH:
        group = tx.group_profile(ident["group_type"], ident["group_value"])
        apply_ops(group["group_properties"], property_ops(ident["group_properties"], GROUP_OPS))
        return
    profile = tx.user_profile(ident.get("user_id"), ident.get("device_id"))
    if "user_properties" in ident:
        apply_ops(profile["user_properties"], property_ops(ident["user_properties"], USER_OPS))
    if "groups" in ident:
        profile["groups"].update(copy.deepcopy(ident["groups"]))
    for field in IDENTIFY_FIELDS:
        if field in ident:
            profile["fields"][field] = ident[field]
    for group in IDENTIFY_FIELD_GROUPS:
        if any(field in ident for field in group):
            for field in group:
                if field not in ident:
                    profile["fields"].pop(field, None)


def dedup_key(event):
    """Amplitude drops an event whose insert_id it has seen for the same device (or user)."""
    insert_id = event.get("insert_id")
    if insert_id is None:
        return None
    if event.get("device_id") is not None:
        return ("device", event["device_id"], insert_id)
    return ("user", event.get("user_id"), insert_id)


# --------------------------------------------------------------------------------------------
# The mock's state. One lock guards all of it.
# --------------------------------------------------------------------------------------------

class MockState:
    def __init__(self, api_keys, pacing=None):
        self.lock = threading.Lock()
        self.cli_api_keys = frozenset(api_keys)
        self.cli_pacing = dict(pacing or {})
        self.reset()

    def reset(self):
        self.api_keys = set(self.cli_api_keys)
        self.silenced_devices = set()
        self.server_upload_time = None
        self.requests = []
        self.bodies = []        # raw request bodies (decompressed), by seq - 1
        self.connection_numbers = {}
        self.events = []
        self.seen_insert_ids = set()
        self.users = {}
        self.device_owner = {}
        self.groups = {}
        self.faults = []
        self.duplicates_dropped = 0
        self.kept_counts = {"strings_truncated": 0, "groups_trimmed": 0}
        self.reset_pacing()

    # -- request log --

    def open_record(self, path, headers, body_bytes, connection=None):
        with self.lock:
            record = {
                "seq": len(self.requests) + 1, "path": path,
                # Connections numbered 1, 2, ... in order of first use since the reset.
                "connection": self.connection_numbers.setdefault(
                    connection, len(self.connection_numbers) + 1),
                "content_type": headers.get("Content-Type"),
                "content_encoding": headers.get("Content-Encoding"),
                "body_bytes": body_bytes, "status": None, "fault": None, "api_key": None,
                "events": None, "identification": None, "response": None,
            }
            self.requests.append(record)
            self.bodies.append({"seq": record["seq"], "body": None})
            return record

    def keep_body(self, record, raw, content_encoding):
        """Keeps the body text as sent, so tests can check exact bytes (numbers
        beyond a double's precision, key order) that parsed JSON would lose."""
        try:
            text = decode_content(raw, content_encoding).decode("utf-8", errors="replace")
        except Exception:  # a corrupt gzip body: keep nothing
            text = None
        with self.lock:
            self.bodies[record["seq"] - 1]["body"] = text

    def close_record(self, record, req, reply, fault):
        with self.lock:
            if req is not None:
                record["api_key"] = req.api_key
                record["events"] = req.events
                record["identification"] = req.identifications
            record["fault"] = fault
            if reply is not None:
                record["status"] = reply.status
                record["response"] = reply.logged

    # -- faults --

    def take_fault(self, req):
        """The (rule, outcome) to apply to this request, or None. Consumes one use."""
        with self.lock:
            for rule in self.faults:
                if rule.uses_left == 0:
                    continue
                outcome = rule.outcome(req)
                if outcome is None:
                    continue
                if rule.skip_left > 0:
                    rule.skip_left -= 1
                    return None
                if rule.uses_left > 0:
                    rule.uses_left -= 1
                return rule, outcome
        return None

    # -- ingestion --

    def upload_time(self):
        if self.server_upload_time is not None:
            return self.server_upload_time
        return int(time.time() * 1000)

    def ingest_events(self, req, seq):
        """Validate and store the events of a request that passed the request-level checks."""
        refusal = validate_events(req.events, req.min_id_length)
        if refusal is not None:
            return refusal
        with self.lock:
            refusal = silenced_reply(req.events, self.silenced_devices)
            if refusal is not None:
                return refusal
            refusal = self.id_rate_refusal(req)
            if refusal is not None:
                return refusal
            reply = self._store_events(req, seq)
            if reply.status == 200:
                self.count_id_rates(req)
            return reply

    def _store_events(self, req, seq):
        tx = ProfileTx(self)
        stored, duplicates, seen_now = [], 0, set()
        failures = EventProblems()
        counts = dict.fromkeys(self.kept_counts, 0)
        for index, event in enumerate(req.events):
            key = dedup_key(event)
            if key is not None and (key in self.seen_insert_ids or key in seen_now):
                duplicates += 1       # counted in events_ingested, silently not stored
                continue
            event = as_kept(event, TRUNCATED_EVENT_FIELDS, counts)
            try:
                apply_event(tx, event)
            except PropertyError as exc:
                failures.add(failures.invalid, str(exc), index)
                continue
            if key is not None:
                seen_now.add(key)
            stored.append(event)
        if failures:
            return failures.reply()
        tx.commit()
        self.seen_insert_ids |= seen_now
        self.duplicates_dropped += duplicates
        self._count_kept(counts)
        self.events.extend({**event, "$path": req.path, "$seq": seq} for event in stored)
        return json_reply(200, {"code": 200, "events_ingested": len(req.events),
                                "payload_size_bytes": req.body_bytes,
                                "server_upload_time": self.upload_time()})

    def ingest_identifications(self, req):
        check = groupidentify_problems if req.path == GROUPIDENTIFY_PATH else identify_problems
        # One short line that never names the identification (Amplitude's bodies don't):
        # the first problem found.
        problems = [p for ident in req.identifications for p in check(ident)]
        if problems:
            return text_reply(400, problems[0])
        with self.lock:
            tx = ProfileTx(self)
            counts = dict.fromkeys(self.kept_counts, 0)
            for ident in req.identifications:
                try:
                    apply_identification(tx, req.path, as_kept(ident, IDENTIFY_FIELDS, counts))
                except PropertyError as exc:
                    return text_reply(400, f"identification: {exc}")
            tx.commit()
            self._count_kept(counts)
        return text_reply(200, "success")

    def _count_kept(self, counts):
        for name, n in counts.items():
            self.kept_counts[name] += n

    def process(self, req, seq):
        if req.error is not None:
            return req.error
        if req.path in EVENT_PATHS:
            return self.ingest_events(req, seq)
        return self.ingest_identifications(req)

    # -- per-ID rates and latency (callers hold the lock) --

    def reset_pacing(self):
        self.id_rates = bool(self.cli_pacing.get("id_rates", False))
        self.rate_window_ms = int(self.cli_pacing.get("window_ms", RATE_WINDOW_MS))
        self.response_delay_ms = int(self.cli_pacing.get("response_delay_ms", 0))
        self.id_history = {}    # ("user"|"device", path, id) -> deque of (monotonic s, count)

    def _recent(self, key, now):
        history = self.id_history.get(key)
        if not history:
            return 0
        window = self.rate_window_ms / 1000.0
        while history and now - history[0][0] >= window:
            history.popleft()
        return sum(count for _, count in history)

    def _request_ids(self, req):
        """(kind, id) -> indices of the request's events carrying it."""
        ids = {}
        for index, event in enumerate(req.events):
            for kind in ("user", "device"):
                value = _string_id(event, f"{kind}_id")
                if value is not None:
                    ids.setdefault((kind, value), []).append(index)
        return ids

    def id_rate_refusal(self, req):
        """The documented 429 naming the IDs over their allowance, or None."""
        if not self.id_rates or req.path not in EPS_THRESHOLD:
            return None
        threshold = EPS_THRESHOLD[req.path]
        allowance = threshold * self.rate_window_ms / 1000.0
        now = time.monotonic()
        over = {"user": {}, "device": {}}
        indices = set()
        for (kind, value), where in self._request_ids(req).items():
            if self._recent((kind, req.path, value), now) + len(where) > allowance:
                over[kind][value] = threshold + len(where)
                indices.update(where)
        if not indices:
            return None
        return throttle_reply(req.path, over["user"], over["device"], sorted(indices), {}, {})

    def count_id_rates(self, req):
        if not self.id_rates or req.path not in EPS_THRESHOLD:
            return
        now = time.monotonic()
        for (kind, value), where in self._request_ids(req).items():
            self.id_history.setdefault((kind, req.path, value), collections.deque()).append(
                (now, len(where)))

    def configure_pacing(self, config):
        if not isinstance(config, dict):
            raise FaultError("pacing must be an object")
        unknown = set(config) - {"id_rates", "window_ms", "response_delay_ms"}
        if unknown:
            raise FaultError(f"unknown pacing keys: {sorted(unknown)}")
        if "id_rates" in config and not isinstance(config["id_rates"], bool):
            raise FaultError("id_rates must be true or false")
        for key in ("window_ms", "response_delay_ms"):
            if key in config and not (is_json_int(config[key]) and 0 <= config[key] <= 600000):
                raise FaultError(f"{key} must be an integer from 0 to 600000")
        if config.get("window_ms") == 0:
            raise FaultError("window_ms must be positive")
        with self.lock:
            if "id_rates" in config:
                self.id_rates = config["id_rates"]
            if "window_ms" in config:
                self.rate_window_ms = config["window_ms"]
            if "response_delay_ms" in config:
                self.response_delay_ms = config["response_delay_ms"]

    # -- control API views (callers hold no lock) --

    def lines(self, what):
        with self.lock:
            if what == "requests":
                rows = self.requests
            elif what == "events":
                rows = self.events
            elif what == "bodies":
                rows = self.bodies
            elif what == "users":
                rows = sorted(self.users.values(), key=lambda p: (
                    p["user_id"] is None, p["user_id"] or p["device_ids"][0]))
            elif what == "groups":
                rows = [self.groups[key] for key in sorted(self.groups)]
            else:
                rows = [rule.describe() for rule in self.faults]
            return "".join(json_line(row) for row in rows)

    def stats(self):
        with self.lock:
            return {"requests": len(self.requests), "events_stored": len(self.events),
                    "duplicates_dropped": self.duplicates_dropped, **self.kept_counts}

    def configure(self, config):
        if not isinstance(config, dict):
            raise FaultError("config must be an object")
        unknown = set(config) - {"api_keys", "silenced_devices", "server_upload_time"}
        if unknown:
            raise FaultError(f"unknown config keys: {sorted(unknown)}")
        api_keys = _list_of_strings(config, "api_keys") if "api_keys" in config else None
        silenced = (_list_of_strings(config, "silenced_devices")
                    if "silenced_devices" in config else None)
        upload_time = config.get("server_upload_time")
        if upload_time is not None and not is_json_int(upload_time):
            raise FaultError("server_upload_time must be an integer or null")
        with self.lock:
            if api_keys is not None:
                self.api_keys = set(api_keys)
            if silenced is not None:
                self.silenced_devices = set(silenced)
            if "server_upload_time" in config:
                self.server_upload_time = upload_time

    def add_faults(self, specs):
        if not isinstance(specs, list):
            raise FaultError("faults must be a JSON array of rules")
        rules = [FaultRule(spec) for spec in specs]
        with self.lock:
            self.faults.extend(rules)
            return len(self.faults)


# --------------------------------------------------------------------------------------------
# HTTP.
# --------------------------------------------------------------------------------------------

class BodyReadError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class MockHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MockAmplitude/1.0"
    disable_nagle_algorithm = True
    timeout = 60                          # close idle keep-alive connections, like a load balancer
    _connections = itertools.count(1)

    def setup(self):
        super().setup()
        # Numbered per TCP connection, so tests can see keep-alive reuse.
        self.connection_id = next(self._connections)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_OPTIONS(self):
        self._dispatch("OPTIONS")

    @property
    def state(self):
        return self.server.state

    def _dispatch(self, method):
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path in INGESTION_PATHS:
                self._ingest(method, path)
            elif path.startswith("/_mock/"):
                self._control(method, path)
            else:
                self._read_body_or_close()
                self._send(not_found())
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:          # a bug in the mock: say so loudly, don't hang the client
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            self._send(json_reply(500, {"code": 500, "error": f"mock internal error: {exc!r}"}))

    # -- ingestion --

    def _ingest(self, method, path):
        try:
            raw = self._read_body()
        except BodyReadError as exc:
            self.close_connection = True     # the stream position is unknown now
            record = self.state.open_record(path, self.headers, 0, self.connection_id)
            if path in FORM_PATHS:
                reply = text_reply(exc.status, str(exc))
            else:
                reply = json_reply(exc.status, {"code": exc.status, "error": str(exc)})
            self.state.close_record(record, None, reply, None)
            return self._send(reply)
        record = self.state.open_record(path, self.headers, len(raw), self.connection_id)
        self.state.keep_body(record, raw, self.headers.get("Content-Encoding"))
        if method != "POST":
            reply = not_found()
            self.state.close_record(record, None, reply, None)
            return self._send(reply)
        req = self._parse(path, raw)
        fault = self.state.take_fault(req)
        reply, fault_name = self._answer(req, record["seq"], fault)
        if fault is not None and fault[0].delay_ms:
            time.sleep(fault[0].delay_ms / 1000.0)    # outside the lock: other requests go on
        self._response_delay()
        self.state.close_record(record, req, reply, fault_name)
        if reply is None:
            return self._reset_connection()
        self._send(reply)

    def _response_delay(self):
        """Network latency of the real service, outside the lock."""
        with self.state.lock:
            delay_ms = self.state.response_delay_ms
        if delay_ms:
            time.sleep(delay_ms / 1000.0)

    def _parse(self, path, raw):
        with self.state.lock:
            api_keys = frozenset(self.state.api_keys)
        parse = parse_event_request if path in EVENT_PATHS else parse_form_request
        return parse(path, self.headers.get("Content-Type"), self.headers.get("Content-Encoding"),
                     raw, api_keys)

    def _answer(self, req, seq, fault):
        """(reply or None for a connection reset, name of the fault applied or None)."""
        if fault is None:
            return self.state.process(req, seq), None
        rule, outcome = fault
        if rule.action == "pass":
            return self.state.process(req, seq), rule.action
        if rule.action == "reset":
            return None, rule.action
        if rule.action == "status" and rule.ingest:
            self.state.process(req, seq)       # stored, then the client is told it failed
        return outcome, rule.action

    def _reset_connection(self):
        """Drop the connection with a TCP RST instead of an answer."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    # -- control API --

    def _control(self, method, path):
        raw = self._read_body_or_close()
        route = (method, path)
        state = self.state
        if route in (("GET", "/_mock/requests"), ("GET", "/_mock/events"), ("GET", "/_mock/bodies"),
                     ("GET", "/_mock/users"), ("GET", "/_mock/groups"), ("GET", "/_mock/faults")):
            return self._send(text_reply(200, state.lines(path.rsplit("/", 1)[1]),
                                         "application/x-ndjson; charset=utf-8"))
        if route == ("GET", "/_mock/stats"):
            return self._send(json_reply(200, state.stats()))
        if route == ("POST", "/_mock/reset"):
            with state.lock:
                state.reset()
            return self._send(json_reply(200, {"code": 200}))
        if route == ("DELETE", "/_mock/faults"):
            with state.lock:
                state.faults = []
            return self._send(json_reply(200, {"code": 200, "faults": 0}))
        if route == ("POST", "/_mock/pacing"):
            return self._send(self._control_pacing(raw))
        if route in (("POST", "/_mock/faults"), ("POST", "/_mock/config")):
            return self._send(self._control_update(path, raw))
        self._send(not_found())

    def _control_update(self, path, raw):
        try:
            payload = loads_strict(raw)
            if path == "/_mock/faults":
                return json_reply(200, {"code": 200, "faults": self.state.add_faults(payload)})
            self.state.configure(payload)
            return json_reply(200, {"code": 200})
        except (BadJSON, FaultError) as exc:
            return json_reply(400, {"code": 400, "error": str(exc)})

    def _control_pacing(self, raw):
        try:
            self.state.configure_pacing(loads_strict(raw))
            return json_reply(200, {"code": 200})
        except (BadJSON, FaultError) as exc:
            return json_reply(400, {"code": 400, "error": str(exc)})

    # -- plumbing --

    def _read_body(self):
        """The request body as received (Content-Length or chunked)."""
        transfer_encoding = self.headers.get("Transfer-Encoding")
        if transfer_encoding is not None:
            if transfer_encoding.strip().lower() != "chunked":
                raise BodyReadError(400, "Unsupported Transfer-Encoding")
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.strip().isdigit():
            raise BodyReadError(400, "Invalid Content-Length")
        length = int(length)
        if length > MAX_DECLARED_BODY:
            raise BodyReadError(413, "Payload too large")
        body = self.rfile.read(length)
        if len(body) != length:
            raise BodyReadError(400, "Truncated request body")
        return body

    def _read_chunked(self):
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BodyReadError(400, "Invalid chunked body") from None
            if size == 0:
                break
            total += size
            if total > MAX_DECLARED_BODY:
                raise BodyReadError(413, "Payload too large")
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise BodyReadError(400, "Invalid chunked body")
            chunks.append(chunk)
        while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
            pass                                  # trailers: ignored
        return b"".join(chunks)

    def _read_body_or_close(self):
        try:
            return self._read_body()
        except BodyReadError:
            self.close_connection = True
            return b""

    def _send(self, reply):
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":      # HEAD: same headers, no body
                self.wfile.write(reply.body)
        except (ConnectionError, TimeoutError):
            self.close_connection = True      # the client gave up (e.g. its timeout): fine

    def log_message(self, format, *args):
        log = self.server.log_file
        if log is not None:
            with self.server.log_lock:
                log.write(f"{self.log_date_time_string()} {self.address_string()} "
                          f"{format % args}\n")
                log.flush()


def not_found():
    return json_reply(404, {"code": 404, "error": "Not Found"})


class MockServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, state, log_file=None):
        self.state = state
        self.log_file = log_file
        self.log_lock = threading.Lock()
        super().__init__(address, MockHandler)

    def server_bind(self):
        # HTTPServer.server_bind does a reverse DNS look-up (getfqdn) that can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], OSError):
            return                                # clients hanging up are not our problem
        super().handle_error(request, client_address)


def make_server(host="127.0.0.1", port=0, api_keys=(DEFAULT_API_KEY,), log_file=None, pacing=None):
    """Create (but don't start) a mock server; its port is server.server_address[1].
    pacing: {"id_rates", "window_ms", "response_delay_ms"} as /_mock/pacing takes them."""
    return MockServer((host, port), MockState(api_keys, pacing), log_file)


def write_port_file(path, port):
    """Atomically, so a reader polling for the file never sees it half written."""
    temp = f"{path}.tmp.{os.getpid()}"
    with open(temp, "w") as out:
        out.write(f"{port}\n")
    os.replace(temp, path)


def add_pacing_arguments(parser):
    parser.add_argument("--enforce-id-rates", action="store_true",
                        help="throttle each user_id/device_id over its documented rate (429)")
    parser.add_argument("--rate-window-ms", type=int, default=RATE_WINDOW_MS,
                        help=f"the window of --enforce-id-rates (default {RATE_WINDOW_MS})")
    parser.add_argument("--response-delay-ms", type=int, default=0,
                        help="answer ingestion requests this long after processing them")


def pacing_from_arguments(args):
    if args.rate_window_ms <= 0 or args.response_delay_ms < 0:
        raise SystemExit("--rate-window-ms must be positive and --response-delay-ms not negative")
    return {"id_rates": args.enforce_id_rates, "window_ms": args.rate_window_ms,
            "response_delay_ms": args.response_delay_ms}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Strict mock of Amplitude's ingestion API.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the chosen port here once listening")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-key", action="append", dest="api_keys",
                        help=f"a valid API key (repeatable; default {DEFAULT_API_KEY})")
    parser.add_argument("--log", help="append one line per request to this file")
    add_pacing_arguments(parser)
    args = parser.parse_args(argv)

    log_file = open(args.log, "a", encoding="utf-8") if args.log else None
    server = make_server(args.host, args.port, args.api_keys or [DEFAULT_API_KEY], log_file,
                         pacing_from_arguments(args))

    def stop(signum, frame):
        # shutdown() waits for serve_forever to return, so it cannot run in this (main) thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:
        write_port_file(args.port_file, server.server_address[1])
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if log_file is not None:
            log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
