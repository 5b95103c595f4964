#!/usr/bin/env bash
# Delivery at Amplitude's latency: ./bench/latency.sh [ROWS] [DELAY_MS]
#
# Against bench/sink.py answering every request after DELAY_MS (default 200,
# about Amplitude's real latency), times amplitude_send_events for ROWS events
# (default 1,000,000) of ROWS/10 users
#   - in time order (users interleaved) and ordered by user,
#   - on /2/httpapi and /batch,
#   - with max_concurrency 1, 4 and 16 (BENCH_SLOTS to choose),
# beside the ceiling max_concurrency x 2,000 events / latency. Then the
# heavy-user case against the mock with Amplitude's per-ID rates enforced
# (test/mock_amplitude.py --enforce-id-rates, its response delay DELAY_MS):
# HEAVY_USERS (10) users x HEAVY_EVENTS (5,000) events among LIGHT (100,000)
# light events, on /batch and, unless BENCH_HEAVY_HTTPAPI=0, on /2/httpapi
# (there it takes about HEAVY_EVENTS / 30 s by Amplitude's rule). It checks
# that the mock holds every event once, each user's in order, and that no 429
# came from the extension's own sending.
#
# It uses the PostgreSQL of the pg_config first in PATH and expects the
# extension installed there; BENCH_INSTALL=1 builds and installs it first
# (as bench/bench.sh does). To keep clear of a shared system PostgreSQL, run
# it against the tree test/pg_versions.sh keeps:
#   AMPLITUDE_SYNC_PG_KEEP=1 AMPLITUDE_SYNC_REGRESS=setup ./test/pg_versions.sh 17   # logs "keeping DIR"
#   PATH=DIR/17/pg/config:$PATH ./bench/latency.sh 200000
# The table goes to stdout and into bench/results.md (between latency markers).
set -uo pipefail
source "$(dirname "$0")/../test/harness.sh"
cd "$HARNESS_REPO"
ROWS=${1:-1000000}
DELAY_MS=${2:-200}
USERS=$((ROWS / 10))
HEAVY_USERS=${HEAVY_USERS:-10}
HEAVY_EVENTS=${HEAVY_EVENTS:-5000}
LIGHT=${LIGHT:-100000}
OUT=bench/results.md
SINK_PID=""
trap '[ -n "$SINK_PID" ] && kill $SINK_PID 2>/dev/null; harness_cleanup' EXIT

if [ "${BENCH_INSTALL:-0}" = 1 ]; then harness_build_and_install || exit 1; fi
[ -f "$(pg_config --sharedir)/extension/amplitude_sync.control" ] ||
    { echo "amplitude_sync is not installed for $(command -v pg_config) (BENCH_INSTALL=1 installs it)"; exit 1; }
harness_start_cluster "shared_buffers = '256MB'" "work_mem = '64MB'" "synchronous_commit = off" || exit 1
harness_start_sink "$DELAY_MS" || exit 1
harness_start_mock --api-key bench-key-0123456789 --enforce-id-rates --response-delay-ms "$DELAY_MS" || exit 1

q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
createdb bench
export PGDATABASE=bench
log "generating $ROWS events of $USERS users"
q -v rows="$ROWS" -v users="$USERS" -v sink="$SINK" -v mock="$AMPLITUDE_MOCK_URL" <<'SQL' || exit 1
CREATE EXTENSION amplitude_sync;
CREATE TABLE events AS
SELECT g AS id, 'Viewed' AS event_type, 'user-' || (g % :users) AS user_id,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' AS time, 'evt-' || g AS insert_id,
       g AS n, md5(g::text) AS p_text
FROM generate_series(1, :rows) g;
VACUUM ANALYZE events;
CREATE SERVER sink_1 FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'sink', max_concurrency '1');
CREATE SERVER sink_4 FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'sink', max_concurrency '4');
CREATE SERVER sink_16 FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'sink', max_concurrency '16');
CREATE SERVER mock FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'mock', max_concurrency '4');
CREATE USER MAPPING FOR CURRENT_USER SERVER sink_1 OPTIONS (api_key 'bench-key-0123456789');
CREATE USER MAPPING FOR CURRENT_USER SERVER sink_4 OPTIONS (api_key 'bench-key-0123456789');
CREATE USER MAPPING FOR CURRENT_USER SERVER sink_16 OPTIONS (api_key 'bench-key-0123456789');
CREATE USER MAPPING FOR CURRENT_USER SERVER mock OPTIONS (api_key 'bench-key-0123456789');
SQL

RESULTS="$HARNESS_DIR/latency.tsv"
: >"$RESULTS"
# One call; appends "order api slots secs requests pacing_s".
run_case() {
    local order=$1 api=$2 slots=$3 by
    [ "$order" = time ] && by="" || by="ORDER BY user_id, id"
    curl -s "$SINK/reset" >/dev/null
    q -At -F "$(printf '\t')" <<SQL >>"$RESULTS" || { echo "case $order $api $slots failed"; exit 1; }
SELECT clock_timestamp() AS t0 \gset
SELECT run_id, requests FROM amplitude_sync.amplitude_send_events('sink_$slots',
    \$q\$SELECT event_type, user_id, time, insert_id, n, p_text FROM events $by\$q\$,
    api => '$api') \gset
-- The run record is the call's own (a later statement sees it).
SELECT '$order', '$api', $slots, round(extract(epoch FROM clock_timestamp() - :'t0')::numeric, 2), :requests,
       round(pacing_seconds::numeric, 1) FROM amplitude_sync.sync_runs WHERE run_id = :run_id;
SQL
}
log "latency cases: ${DELAY_MS} ms answers"
for order in time user; do
    for api in httpapi batch; do
        for slots in ${BENCH_SLOTS:-1 4 16}; do run_case "$order" "$api" "$slots"; done
    done
done

# Heavy users against Amplitude's per-ID rates (the mock).
HEAVY_RESULTS="$HARNESS_DIR/heavy.tsv"
: >"$HEAVY_RESULTS"
heavy_case() {
    local api=$1
    curl -s -X POST "$AMPLITUDE_MOCK_URL/_mock/reset" >/dev/null
    log "heavy users on /$api: $HEAVY_USERS x $HEAVY_EVENTS among $LIGHT light events"
    q -At -F "$(printf '\t')" -v heavy_users="$HEAVY_USERS" -v heavy_events="$HEAVY_EVENTS" -v light="$LIGHT" \
        <<SQL >>"$HEAVY_RESULTS" || { echo "heavy case $api failed"; exit 1; }
SELECT clock_timestamp() AS t0 \gset
CREATE TEMP TABLE heavy AS
SELECT row_number() OVER (ORDER BY k) AS n, user_id FROM (
    SELECT g::float8 / (:heavy_users * :heavy_events) AS k, 'heavy-' || (g % :heavy_users) AS user_id
    FROM generate_series(1, :heavy_users * :heavy_events) g
    UNION ALL
    SELECT g::float8 / :light, 'light-' || (g % (:light / 5)) FROM generate_series(1, :light) g) s;
SELECT run_id, status, sent, not_sent, requests FROM amplitude_sync.amplitude_send_events('mock',
    \$q\$SELECT 'Heavy' AS event_type, user_id, n, 'h-' || n AS insert_id FROM heavy ORDER BY n\$q\$,
    api => '$api') \gset
SELECT '$api', round(extract(epoch FROM clock_timestamp() - :'t0')::numeric, 1), :'status', :sent, :not_sent,
       :requests, round(pacing_seconds::numeric, 1) FROM amplitude_sync.sync_runs WHERE run_id = :run_id;
SQL
    # What the mock holds: each event once, each user's in order; 429s it gave.
    curl -s "$AMPLITUDE_MOCK_URL/_mock/events" >"$HARNESS_DIR/events.jsonl"
    curl -s "$AMPLITUDE_MOCK_URL/_mock/requests" >"$HARNESS_DIR/requests.jsonl"
    /usr/bin/python3 - "$HARNESS_DIR/events.jsonl" "$HARNESS_DIR/requests.jsonl" <<'PY' | sed 's/^/    /' >>"$HEAVY_RESULTS"
import json, sys
seen, last, out_of_order = {}, {}, 0
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    e = json.loads(line)
    n = e["event_properties"]["n"]
    seen[n] = seen.get(n, 0) + 1
    if n < last.get(e["user_id"], 0):
        out_of_order += 1
    last[e["user_id"]] = n
refused = sum(1 for line in open(sys.argv[2]) if line.strip() and json.loads(line).get("status") == 429)
print(f"stored {len(seen)} distinct, {sum(1 for c in seen.values() if c > 1)} twice, "
      f"{out_of_order} out of order, {refused} x 429 from the mock")
PY
}
heavy_case batch
[ "${BENCH_HEAVY_HTTPAPI:-1}" = 1 ] && heavy_case httpapi

log "results"
cat "$HEAVY_RESULTS"
[ -n "${BENCH_KEEP:-}" ] && cp "$RESULTS" "$HEAVY_RESULTS" "$BENCH_KEEP"/
/usr/bin/python3 - "$RESULTS" "$HEAVY_RESULTS" "$ROWS" "$DELAY_MS" "$OUT" <<'PY'
import datetime, platform, re, subprocess, sys
path, heavy_path, rows, delay, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
pg = subprocess.run(["pg_config", "--version"], capture_output=True, text=True).stdout.strip()
lines = [f"Latency benchmark of {datetime.date.today()} (`bench/latency.sh {rows} {delay}`): {rows:,} events of "
         f"{rows // 10:,} users, the sink answering after {delay} ms, on {cpu} "
         f"({subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores), {pg}.",
         "",
         "| order | api | max_concurrency | wall s | events/s | ceiling (slots × 2,000 / latency) | % of ceiling | requests |",
         "|---|---|---:|---:|---:|---:|---:|---:|"]
for line in open(path):
    order, api, slots, secs, requests, pacing = line.rstrip("\n").split("\t")
    slots, secs = int(slots), float(secs)
    ceiling = slots * 2000 / (delay / 1000)
    rate = rows / secs
    lines.append(f"| {order} | {api} | {slots} | {secs:.2f} | {rate:,.0f} | {ceiling:,.0f} | {100 * rate / ceiling:.0f}% | {requests} |")
lines += ["", "Heavy users against the mock's per-ID rates (its answers also after the delay):", "",
          "| api | wall s | status | sent | not sent | requests | pacing s | what the mock holds |",
          "|---|---:|---|---:|---:|---:|---:|---|"]
row = None
for line in open(heavy_path).read().splitlines():
    fields = line.split("\t")
    if len(fields) == 7:
        row = fields
    elif line.startswith("    ") and row:
        api, secs, status, sent, not_sent, requests, pacing = row
        lines.append(f"| {api} | {secs} | {status} | {sent} | {not_sent} | {requests} | {pacing} | {line.strip()} |")
        row = None
text = "\n".join(lines) + "\n"
print(text)
begin, end = "<!-- latency: bench/latency.sh -->", "<!-- /latency -->"
try:
    current = open(out).read()
except FileNotFoundError:
    current = ""
section = f"{begin}\n{text}{end}\n"
if begin in current:
    current = re.sub(re.escape(begin) + ".*?" + re.escape(end) + "\n?", lambda m: section, current, flags=re.S)
else:
    current = current.rstrip("\n") + ("\n\n" if current else "") + section
open(out, "w").write(current)
PY
