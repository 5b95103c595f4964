#!/usr/bin/env bash
# The benchmark, one command: ./bench/bench.sh [ROWS] [RUNS]
#
# Builds and installs the extension, starts a throwaway cluster and a fast
# local sink that answers like Amplitude (bench/sink.py), generates ROWS
# events (default 1,000,000: 100,000 users, 20 event types, 10 property
# columns of mixed types) and ROWS users with 10 properties, and times, side
# by side, the median of RUNS runs (default 3) of:
#   1. the lower bound: COPY (SELECT json_build_object(...same event...)) TO '/dev/null'
#   2. amplitude_send_events over /2/httpapi and over /batch
#   3. amplitude_identify over the users
#   4. CALL run_sync on the users after changing 1% of them, and after changing none
#      (beside SELECT count(*) over the same source)
#   5. the official Node SDK (@amplitude/analytics-node) reading the table with pg
# It prints one table (wall time, rows/s, ratio to the lower bound, peak
# backend memory, bytes sent, and where the extension's time went) and
# writes it to bench/results.md. BENCH_MEMORY=1 also compares peak memory of
# amplitude_send_events at 100,000 and 10,000,000 rows, and of amplitude_identify
# and CALL run_sync (first run, 10% changed, unchanged) at 100,000 and
# 10,000,000 users (BENCH_SYNC_ROWS to choose the sizes).
set -uo pipefail
source "$(dirname "$0")/../test/harness.sh"
cd "$HARNESS_REPO"
trap harness_cleanup EXIT
ROWS=${1:-1000000}
RUNS=${2:-3}
OUT=bench/results.md
NODE_ROWS=${BENCH_NODE_ROWS:-$ROWS}

harness_install_packages || exit 1
command -v node >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
harness_build_and_install || exit 1
harness_start_cluster "shared_buffers = '256MB'" "work_mem = '64MB'" "max_wal_size = '4GB'" \
    "synchronous_commit = off" || exit 1
harness_start_sink || exit 1
trap 'kill $SINK_PID 2>/dev/null; harness_cleanup' EXIT
(cd bench/node && npm install --silent --no-audit --no-fund >/dev/null 2>&1) || echo "npm install failed: the Node SDK case will be skipped"

createdb bench
export PGDATABASE=bench
q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

log "generating $ROWS events and $ROWS users"
q -v rows="$ROWS" <<'SQL' || exit 1
CREATE EXTENSION amplitude_sync;
CREATE TABLE events AS
SELECT g AS id,
       (ARRAY['Page Viewed', 'Signed Up', 'Logged In', 'Searched', 'Added To Cart', 'Removed From Cart',
              'Checkout Started', 'Order Completed', 'Refunded', 'Invited', 'Shared', 'Commented', 'Liked',
              'Followed', 'Upgraded', 'Downgraded', 'Exported', 'Imported', 'Settings Changed',
              'Logged Out'])[1 + g % 20] AS event_type,
       'user-' || (g % 100000) AS user_id,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' AS created_at,
       'evt-' || g AS insert_id,
       md5(g::text) AS p_text,
       g % 1000 AS p_int,
       ((g % 100000) / 100.0)::numeric(10, 2) AS p_numeric,
       g % 2 = 0 AS p_bool,
       timestamptz '2024-01-01 00:00:00+00' + (g % 86400) * interval '1 second' AS p_ts,
       jsonb_build_object('k', g % 7, 'v', 'x' || g % 11) AS p_json,
       ARRAY['tag-' || g % 5, 'tag-' || g % 3] AS p_tags,
       'plan-' || g % 4 AS p_plan,
       (g % 97) * 1.5::float8 AS p_float,
       'ref-' || g % 12345 AS p_ref
FROM generate_series(1, :rows) g;
CREATE TABLE users AS
SELECT g AS id, 'user-' || g AS user_id, 'plan-' || g % 4 AS plan, g % 1000 AS logins,
       ((g % 100000) / 10.0)::numeric(12, 2) AS lifetime_value, g % 3 = 0 AS is_admin,
       timestamptz '2023-01-01 00:00:00+00' + (g % 365) * interval '1 day' AS signed_up_at,
       'country-' || g % 50 AS country, ARRAY['seg-' || g % 9] AS segments,
       md5(g::text) AS referrer, (g % 500) * 0.25::float8 AS score, 'team-' || g % 77 AS team
FROM generate_series(1, :rows) g;
VACUUM ANALYZE events, users;
SQL
q -v sink="$SINK" <<'SQL' || exit 1
CREATE SERVER sink FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'sink');
CREATE USER MAPPING FOR CURRENT_USER SERVER sink OPTIONS (api_key 'bench-key-0123456789');
SELECT name FROM amplitude_sync.create_sync('bench-users', 'sink', 'user', 'SELECT * FROM users') \gset
SQL

EVENT_QUERY="SELECT event_type, user_id, created_at AS time, insert_id, p_text, p_int, p_numeric, p_bool,
    p_ts, p_json, p_tags, p_plan, p_float, p_ref FROM events"
LOWER_BOUND="COPY (SELECT json_build_object('event_type', event_type, 'user_id', user_id,
    'time', (extract(epoch FROM created_at) * 1000)::bigint, 'insert_id', insert_id,
    'event_properties', json_build_object('p_text', p_text, 'p_int', p_int, 'p_numeric', p_numeric,
    'p_bool', p_bool, 'p_ts', p_ts, 'p_json', p_json, 'p_tags', p_tags, 'p_plan', p_plan,
    'p_float', p_float, 'p_ref', p_ref)) FROM events) TO '/dev/null'"

RESULTS="$HARNESS_DIR/results.tsv"
: >"$RESULTS"

# Runs one SQL case in a fresh session; appends "case secs peak_kb bytes read encode send".
run_case() {
    local name=$1 prepare=$2 sql=$3
    curl -s "$SINK/reset" >/dev/null
    q -At -F "$(printf '\t')" -v name="$name" <<SQL >>"$RESULTS" || { echo "case $name failed"; exit 1; }
$prepare
SELECT clock_timestamp() AS t0 \gset
\o /dev/null
$sql;
\o
SELECT :'name', round(extract(epoch FROM clock_timestamp() - :'t0')::numeric, 3),
       (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'), 'VmHWM:\s+(\d+)'))[1],
       COALESCE((SELECT bytes_sent FROM amplitude_sync.sync_runs
                 WHERE started_at >= :'t0' ORDER BY run_id DESC LIMIT 1), 0),
       COALESCE((SELECT round(read_seconds::numeric, 2) || '/' || round(encode_seconds::numeric, 2) || '/' ||
                        round(send_seconds::numeric, 2)
                 FROM amplitude_sync.sync_runs WHERE started_at >= :'t0' ORDER BY run_id DESC LIMIT 1), '')
SQL
}

log "running each case $RUNS times"
for run in $(seq 1 "$RUNS"); do
    run_case "1 lower bound: COPY json_build_object" "" "$LOWER_BOUND"
    run_case "0 COPY events TO /dev/null" "" "COPY events TO '/dev/null'"
    run_case "2a amplitude_send_events /2/httpapi" "" \
        "SELECT status FROM amplitude_sync.amplitude_send_events('sink', \$q\$$EVENT_QUERY\$q\$)"
    run_case "2b amplitude_send_events /batch" "" \
        "SELECT status FROM amplitude_sync.amplitude_send_events('sink', \$q\$$EVENT_QUERY\$q\$, api => 'batch')"
    run_case "3 amplitude_identify users" "" \
        "SELECT status FROM amplitude_sync.amplitude_identify('sink', 'SELECT user_id, plan, logins, lifetime_value, is_admin, signed_up_at, country, segments, referrer, score, team FROM users')"
    # The sync's first run (not timed), then 1% changed, then nothing changed.
    [ "$run" = 1 ] && run_case "4 run_sync users, first run" "" "CALL amplitude_sync.run_sync('bench-users')"
    run_case "4a run_sync users, 1% changed" \
        "UPDATE users SET logins = logins + 1 WHERE id % 100 = $run;" "CALL amplitude_sync.run_sync('bench-users')"
    run_case "4b run_sync users, nothing changed" "" "CALL amplitude_sync.run_sync('bench-users')"
    run_case "4c SELECT count(*) FROM (source) s" "" "SELECT count(*) FROM (SELECT * FROM users) s"
    if [ -d bench/node/node_modules ]; then
        curl -s "$SINK/reset" >/dev/null
        start=$(date +%s.%N)
        node_out=$(cd bench/node && node send_events.mjs "$SINK" 2000 2>/dev/null | tail -1)
        end=$(date +%s.%N)
        stats=$(curl -s "$SINK/stats")
        printf '%s\t%s\t%s\t%s\t%s\n' "5 Node SDK (flushQueueSize 2000)" \
            "$(/usr/bin/python3 -c "print(round($end - $start, 3))")" \
            "$(echo "$node_out" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["peak_rss_kb"])' 2>/dev/null || echo 0)" \
            "$(echo "$stats" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')" \
            "delivered $(echo "$stats" | /usr/bin/python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["events"], "of", s["events"] + s["events_refused"])')" \
            >>"$RESULTS"
    fi
done
SINK_CPU=$(curl -s "$SINK/stats" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["cpu_seconds"])')

if [ "${BENCH_MEMORY:-0}" = 1 ]; then
    log "memory: amplitude_send_events at 100,000 and 10,000,000 rows"
    for n in 100000 10000000; do
        # work_mem is lowered so generate_series' own result store spills to
        # disk instead of counting in the backend's memory.
        run_case "6 amplitude_send_events, $n rows (memory)" "SET work_mem = '1MB';" \
            "SELECT status FROM amplitude_sync.amplitude_send_events('sink', 'SELECT ''e'' AS event_type, ''user-'' || g % 100000 AS user_id, g AS n, md5(g::text) AS t FROM generate_series(1, $n) g')"
    done
    # Saved syncs: peak backend memory of the first run, a run with 10%
    # changed and an unchanged run, beside the one-shot call of the same rows.
    for n in ${BENCH_SYNC_ROWS:-100000 10000000}; do
        # The sync first: its source view depends on the table.
        q -c "SELECT amplitude_sync.drop_sync(name) FROM amplitude_sync.syncs WHERE name = 'mem-users'" >/dev/null
        q -c "DROP TABLE IF EXISTS mem_users" -c "CREATE TABLE mem_users AS SELECT 'user-' || g AS user_id, g AS n, md5(g::text) AS t FROM generate_series(1, $n) g" >/dev/null || exit 1
        q -c "SELECT name FROM amplitude_sync.create_sync('mem-users', 'sink', 'user', 'mem_users')" >/dev/null || exit 1
        run_case "7a amplitude_identify, $n users (memory)" "" \
            "SELECT status FROM amplitude_sync.amplitude_identify('sink', 'TABLE mem_users')"
        run_case "7b run_sync first run, $n users (memory)" "" "CALL amplitude_sync.run_sync('mem-users')"
        run_case "7c run_sync 10% changed, $n users (memory)" "UPDATE mem_users SET n = n + 1 WHERE n % 10 = 0;" \
            "CALL amplitude_sync.run_sync('mem-users')"
        run_case "7d run_sync unchanged, $n users (memory)" "" "CALL amplitude_sync.run_sync('mem-users')"
    done
fi

log "results"
/usr/bin/python3 - "$RESULTS" "$ROWS" "$RUNS" "$SINK_CPU" "$OUT" <<'PY'
import statistics, subprocess, sys, platform, datetime
path, rows, runs, sink_cpu, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
cases = {}
for line in open(path):
    parts = line.rstrip("\n").split("\t")
    if len(parts) < 5:
        continue
    name, secs, peak, sent, extra = parts[:5]
    cases.setdefault(name, []).append((float(secs), int(peak or 0), int(sent or 0), extra))
lower = statistics.median(s for s, *_ in cases.get("1 lower bound: COPY json_build_object", [(1, 0, 0, "")]))
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
lines = [f"Benchmark of {datetime.date.today()}: {rows:,} rows, median of {runs} runs, on {cpu} "
         f"({subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores), "
         f"PostgreSQL 15, {platform.system()} {platform.release()}. Sink CPU over the whole benchmark: {sink_cpu} s.",
         "",
         "| case | wall s | rows/s | × lower bound | peak RSS MB | MB sent | read/encode/send s |",
         "|---|---:|---:|---:|---:|---:|---|"]
for name in sorted(cases):
    runs_ = cases[name]
    secs = statistics.median(r[0] for r in runs_)
    peak = max(r[1] for r in runs_) / 1024
    sent = statistics.median(r[2] for r in runs_) / 1e6
    extra = runs_[len(runs_) // 2][3]
    lines.append(f"| {name} | {secs:.2f} | {rows / secs:,.0f} | {secs / lower:.2f} | {peak:.0f} | {sent:.1f} | {extra} |")
text = "\n".join(lines) + "\n"
print(text)
# The latency section (bench/latency.sh) stays.
import re
try:
    kept = re.search(r"<!-- latency: bench/latency.sh -->.*?<!-- /latency -->\n?", open(out).read(), re.S)
except FileNotFoundError:
    kept = None
open(out, "w").write(text + ("\n" + kept.group(0) if kept else ""))
PY
