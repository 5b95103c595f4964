#!/usr/bin/env bash
# Saved syncs at scale (issue 14): ./bench/sync_bench.sh [ROWS] [RUNS]
#
# Times, beside `COPY (source) TO '/dev/null'` of the same rows, with the
# peak RSS of each case's backend (fresh session per case):
#   - the users sync (12 columns): one-shot amplitude_identify (the memory
#     reference), the first CALL run_sync and the run after it, 1% changed, nothing changed
#     (twice: the first cleans up after the 1% run), and a one-shot send of
#     the changed 1% alone (the 1% run's goal: <= unchanged + that send);
#   - the merge of the state's changes: a run that takes them past a tenth
#     of the entries (changing the users the 1% runs did not, up to 11%),
#     the unchanged run after it, and the one-shot send of that change;
#   - an event sync in watermark mode (cursor_column => 'id', lookback =>
#     '1000'): the first run, then a run after 1% new rows (rows_read shows
#     what it read).
# BENCH_EVENTS=0 leaves the event sync out (for a quick 10M-user memory run);
# BENCH_SMAPS=1 logs each case's largest private mappings at its peak.
# Writes the table to bench/sync_results.md. Builds and installs with the
# pg_config first on PATH: run it against an isolated PostgreSQL, e.g. the
# tree that `AMPLITUDE_SYNC_PG_KEEP=1 ./test/pg_versions.sh 17` keeps:
#   PATH=/tmp/amplitude_sync-pgv.XXXX/17/pg/config:$PATH ./bench/sync_bench.sh 1000000 3
# (never against a system PostgreSQL that others use: it installs into it).
set -uo pipefail
source "$(dirname "$0")/../test/harness.sh"
cd "$HARNESS_REPO"
trap harness_cleanup EXIT
ROWS=${1:-1000000}
RUNS=${2:-3}
OUT=${BENCH_OUT:-bench/sync_results.md}

harness_build_and_install || exit 1
harness_start_cluster "shared_buffers = '256MB'" "work_mem = '64MB'" "max_wal_size = '4GB'" \
    "synchronous_commit = off" || exit 1
harness_start_sink || exit 1
# BENCH_KEEP=1: the cluster stays up at the end (for perf); its directory is printed.
if [ -n "${BENCH_KEEP:-}" ]; then trap 'kill $SINK_PID 2>/dev/null' EXIT; else trap 'kill $SINK_PID 2>/dev/null; harness_cleanup' EXIT; fi

createdb bench
export PGDATABASE=bench
q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

log "generating $ROWS users and $ROWS events"
q -v rows="$ROWS" -v sink="$SINK" -v events="${BENCH_EVENTS:-1}" <<'SQL' || exit 1
CREATE EXTENSION amplitude_sync;
CREATE TABLE users AS
SELECT g AS id, 'user-' || g AS user_id, 'plan-' || g % 4 AS plan, g % 1000 AS logins,
       ((g % 100000) / 10.0)::numeric(12, 2) AS lifetime_value, g % 3 = 0 AS is_admin,
       timestamptz '2023-01-01 00:00:00+00' + (g % 365) * interval '1 day' AS signed_up_at,
       'country-' || g % 50 AS country, ARRAY['seg-' || g % 9] AS segments,
       md5(g::text) AS referrer, (g % 500) * 0.25::float8 AS score, 'team-' || g % 77 AS team
FROM generate_series(1, :rows) g;
CREATE TABLE events AS
SELECT g AS id, (ARRAY['Page Viewed', 'Signed Up', 'Logged In', 'Searched'])[1 + g % 4] AS event_type,
       'user-' || (g % 100000) AS user_id,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' AS created_at,
       'evt-' || g AS insert_id, md5(g::text) AS p_text, g % 1000 AS p_int, g % 2 = 0 AS p_bool,
       'plan-' || g % 4 AS p_plan
FROM generate_series(1, CASE WHEN :events = 1 THEN :rows ELSE 0 END) g;
CREATE INDEX ON events (id);
VACUUM ANALYZE users, events;
CREATE SERVER sink FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'sink');
CREATE USER MAPPING FOR CURRENT_USER SERVER sink OPTIONS (api_key 'bench-key-0123456789');
SELECT name FROM amplitude_sync.create_sync('bench-users', 'sink', 'user', 'SELECT user_id, plan, logins, lifetime_value, is_admin, signed_up_at, country, segments, referrer, score, team FROM users') \gset
SQL
# (A version without watermark mode, for comparison, gets a plain append sync.)
q -c "SELECT name FROM amplitude_sync.create_sync('bench-events', 'sink', 'event',
    'SELECT id, event_type, user_id, created_at AS time, insert_id, p_text, p_int, p_bool, p_plan FROM events',
    cursor_column => 'id', lookback => '1000')" >/dev/null 2>&1 ||
q -c "SELECT name FROM amplitude_sync.create_sync('bench-events', 'sink', 'event',
    'SELECT id, event_type, user_id, created_at AS time, insert_id, p_text, p_int, p_bool, p_plan FROM events')" >/dev/null || exit 1

USERS_SOURCE="SELECT user_id, plan, logins, lifetime_value, is_admin, signed_up_at, country, segments, referrer, score, team FROM users"
EVENTS_SOURCE="SELECT id, event_type, user_id, created_at AS time, insert_id, p_text, p_int, p_bool, p_plan FROM events"
RESULTS="$HARNESS_DIR/results.tsv"
: >"$RESULTS"

# One case in a fresh session; appends "case secs peak_kb rows_read sent
# wal_bytes peak_anon_kb cpu_ticks" (wal_bytes: the WAL the cluster wrote
# meanwhile; the bench is alone on it). VmHWM counts the shared buffers the
# backend touched (up to shared_buffers); the peak of RssAnon, sampled every 20 ms from outside, is
# the backend's private memory alone.
run_case() {
    local name=$1 prepare=$2 sql=$3 app="bench-$RANDOM$RANDOM" line
    (
        pid=""
        for _ in $(seq 1 400); do
            pid=$(psql -X -At -c "SELECT pid FROM pg_stat_activity WHERE application_name = '$app'" 2>/dev/null)
            [ -n "$pid" ] && break
            sleep 0.02
        done
        max=0
        while [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; do
            a=$(awk '/^RssAnon/ {print $2}' "/proc/$pid/status" 2>/dev/null)
            if [ -n "$a" ] && [ "$a" -gt "$max" ]; then
                max=$a
                # BENCH_SMAPS=1: where the peak is (the mappings at the highest sample).
                [ -n "${BENCH_SMAPS:-}" ] && cp "/proc/$pid/smaps" "$HARNESS_DIR/smaps.$app" 2>/dev/null
            fi
            sleep 0.02
        done
        echo "$max" >"$HARNESS_DIR/anon.$app"
    ) &
    local sampler=$!
    line=$(PGAPPNAME=$app q -At -F "$(printf '\t')" -v name="$name" <<SQL
$prepare
SELECT clock_timestamp() AS t0, pg_current_wal_insert_lsn() AS lsn0,
       (SELECT s[12]::int8 + s[13]::int8 FROM string_to_array(split_part(pg_read_file('/proc/' || pg_backend_pid() || '/stat'), ') ', 2), ' ') s) AS cpu0 \gset
\o /dev/null
$sql;
\o
SELECT :'name', round(extract(epoch FROM clock_timestamp() - :'t0')::numeric, 3),
       (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'), 'VmHWM:\s+(\d+)'))[1],
       COALESCE((SELECT rows_read FROM amplitude_sync.sync_runs
                 WHERE started_at >= :'t0' ORDER BY run_id DESC LIMIT 1), 0),
       COALESCE((SELECT sent FROM amplitude_sync.sync_runs
                 WHERE started_at >= :'t0' ORDER BY run_id DESC LIMIT 1), 0),
       pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :'lsn0'),
       (SELECT s[12]::int8 + s[13]::int8 FROM string_to_array(split_part(pg_read_file('/proc/' || pg_backend_pid() || '/stat'), ') ', 2), ' ') s) - :cpu0
SQL
) || { echo "case $name failed"; kill $sampler 2>/dev/null; exit 1; }
    wait $sampler
    if [ -s "$HARNESS_DIR/smaps.$app" ]; then
        echo "$name: largest private mappings at the peak (kB)"
        awk '/^[0-9a-f]+-[0-9a-f]+ / {m = $0} /^Anonymous:/ {if ($2 >= 1024) print "  " $2, m}' \
            "$HARNESS_DIR/smaps.$app" | sort -rn | head -6
    fi
    # (The backend's CPU time in clock ticks is the line's last field.)
    local cpu=${line##*$'\t'}
    printf '%s\t%s\t%s\n' "${line%$'\t'*}" "$(cat "$HARNESS_DIR/anon.$app")" "$cpu" >>"$RESULTS"
}

log "running"
run_case "u0 COPY (users source) TO /dev/null" "" "COPY ($USERS_SOURCE) TO '/dev/null'"
run_case "u1 amplitude_identify users (one-shot)" "" \
    "SELECT status FROM amplitude_sync.amplitude_identify('sink', \$q\$$USERS_SOURCE\$q\$)"
run_case "u2 run_sync users, first run" "" "CALL amplitude_sync.run_sync('bench-users')"
# The first run's state rows are read for the first time by the next run,
# which sets their hint bits (and writes back the whole state as pages are
# evicted): on a schedule, the runs after it do not pay that again.
run_case "u2b run_sync users, unchanged after the first run" "" "CALL amplitude_sync.run_sync('bench-users')"
EVENTS=${BENCH_EVENTS:-1}
if [ "$EVENTS" = 1 ]; then
    run_case "e0 COPY (events source) TO /dev/null" "" "COPY ($EVENTS_SOURCE) TO '/dev/null'"
    run_case "e1 run_sync events (watermark), first run" "" "CALL amplitude_sync.run_sync('bench-events')"
fi
for run in $(seq 1 "$RUNS"); do
    run_case "u0 COPY (users source) TO /dev/null" "" "COPY ($USERS_SOURCE) TO '/dev/null'"
    # (The VACUUM does the UPDATE's cleanup, page pruning and hint bits,
    # which would otherwise fall on whatever reads the table first: the run
    # would pay for the UPDATE, and u4 after it would not. In a session of
    # its own: its memory is not the run's.)
    # The CHECKPOINTs: on a schedule (every 15 minutes, against the default
    # checkpoint_timeout of 5) a checkpoint comes between two runs, and the
    # first change to each page after it writes the whole page to the WAL.
    q -c "UPDATE users SET logins = logins + 1 WHERE id % 100 = $run" -c "VACUUM users" -c "CHECKPOINT" || exit 1
    run_case "u3 run_sync users, 1% changed" "" "CALL amplitude_sync.run_sync('bench-users')"
    q -c "CHECKPOINT" || exit 1
    run_case "u4 run_sync users, unchanged" "" "CALL amplitude_sync.run_sync('bench-users')"
    # u4 prunes the row versions u3's state writes left (the first reader
    # of a page does, and logs it after a checkpoint); a second unchanged
    # run has nothing left to clean: a run that has nothing to do.
    q -c "CHECKPOINT" || exit 1
    run_case "u4b run_sync users, unchanged again" "" "CALL amplitude_sync.run_sync('bench-users')"
    # What sending that 1% costs on its own: the target for u3 is u4b + u5.
    run_case "u5 amplitude_identify of the 1% changed (one-shot)" "" \
        "SELECT status FROM amplitude_sync.amplitude_identify('sink', \$q\$$USERS_SOURCE WHERE id % 100 = $run\$q\$)"
    [ "$EVENTS" = 1 ] || continue
    run_case "e2 run_sync events (watermark), 1% new rows" \
        "INSERT INTO events SELECT g, 'Page Viewed', 'user-' || (g % 100000), timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', 'evt-' || g, md5(g::text), g % 1000, g % 2 = 0, 'plan-' || g % 4 FROM generate_series((SELECT max(id) + 1 FROM events), (SELECT max(id) FROM events) + $ROWS / 100) g;" \
        "CALL amplitude_sync.run_sync('bench-events')"
    run_case "e0 COPY (events source) TO /dev/null" "" "COPY ($EVENTS_SOURCE) TO '/dev/null'"
done
# The merge: the runs above left their changes in state_changes (1% of
# the users each); one run that takes them past a tenth of the entries
# merges them into state_entries after it (a run at 1% a run does so every
# tenth run), and the next run is the first to read the merged entries.
if [ "$RUNS" -lt 10 ]; then
    q -c "UPDATE users SET logins = logins + 1 WHERE id % 100 BETWEEN $((RUNS + 1)) AND 11" -c "VACUUM users" \
      -c "CHECKPOINT" || exit 1
    run_case "u6 run_sync users, $((11 - RUNS))% changed, merge due" "" "CALL amplitude_sync.run_sync('bench-users')"
    q -c "CHECKPOINT" || exit 1
    run_case "u7 run_sync users, unchanged after the merge" "" "CALL amplitude_sync.run_sync('bench-users')"
    run_case "u8 amplitude_identify of the $((11 - RUNS))% (one-shot)" "" \
        "SELECT status FROM amplitude_sync.amplitude_identify('sink', \$q\$$USERS_SOURCE WHERE id % 100 BETWEEN $((RUNS + 1)) AND 11\$q\$)"
fi
q -At -c "SELECT 'state tables after the merge: ' || (SELECT count(*) FROM amplitude_sync.state_entries) || ' entries, ' || (SELECT count(*) FROM amplitude_sync.state_changes) || ' changes'" >&2
q -At -c "SELECT 'ledger entries: ' || count(*) FROM amplitude_sync.sync_state st JOIN amplitude_sync.syncs s USING (sync_id) WHERE s.name = 'bench-events'" >"$HARNESS_DIR/ledger.txt"

[ -n "${BENCH_KEEP:-}" ] && log "keeping the cluster: PGHOST=$PGHOST PGPORT=$PGPORT PGDATABASE=bench"
log "results"
/usr/bin/python3 - "$RESULTS" "$ROWS" "$RUNS" "$OUT" "$(cat "$HARNESS_DIR/ledger.txt")" "$(pg_config --version)" "$EVENTS" <<'PY'
import statistics, subprocess, sys, platform, datetime
path, rows, runs, out, ledger, pgv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
events = sys.argv[7] == "1"
cases = {}
for line in open(path):
    parts = line.rstrip("\n").split("\t")
    if len(parts) < 5:
        continue
    name, secs, peak, read, sent, wal, anon, ticks = parts[:8]
    cases.setdefault(name, []).append((float(secs), int(peak or 0), int(read or 0), int(sent or 0), int(anon or 0),
                                       int(ticks or 0) / 100.0, float(wal or 0)))
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
copy = {k: statistics.median(c[0] for c in cases[n]) for k, n in
        (("u", "u0 COPY (users source) TO /dev/null"), ("e", "e0 COPY (events source) TO /dev/null")) if n in cases}
copy_cpu = {k: statistics.median(c[5] for c in cases[n]) for k, n in
            (("u", "u0 COPY (users source) TO /dev/null"), ("e", "e0 COPY (events source) TO /dev/null")) if n in cases}
what = f"{rows:,} users and {rows:,} events (+1% per watermark run)" if events else f"{rows:,} users (no event sync)"
lines = [f"Saved syncs, {datetime.date.today()}: {what}, "
         f"median of {runs} runs for the repeated cases, on {cpu} "
         f"({subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, shared), "
         f"{pgv}, work_mem 64MB, {platform.system()} {platform.release()}. " + (f"{ledger} after the last watermark run. " if events else "") +
         "Wall times vary with the other work on the machine; the backend's CPU time (utime + stime) varies less.",
         "",
         "| case | wall s | source rows/s | × COPY (wall) | backend CPU s | × COPY (CPU) | peak RSS MB (VmHWM) | peak private MB (RssAnon) | WAL MB | rows_read | sent |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for name in sorted(cases):
    r = cases[name]
    secs = statistics.median(x[0] for x in r)
    peak = max(x[1] for x in r) / 1024
    read = int(statistics.median(x[2] for x in r))
    sent = int(statistics.median(x[3] for x in r))
    anon = max(x[4] for x in r) / 1024
    cpu_s = statistics.median(x[5] for x in r)
    wal = statistics.median(x[6] for x in r) / 1e6
    ratio = secs / copy[name[0]]
    cpu_ratio = cpu_s / copy_cpu[name[0]] if copy_cpu[name[0]] else 0
    lines.append(f"| {name} | {secs:.2f} | {rows / secs:,.0f} | {ratio:.2f} | {cpu_s:.2f} | {cpu_ratio:.2f} | {peak:.0f} | {anon:.0f} | {wal:,.0f} | {read:,} | {sent:,} |")
text = "\n".join(lines) + "\n"
print(text)
open(out, "w").write(text)
PY
