#!/usr/bin/env bash
# The outbox under a writing workload: pgbench inserts into a table, with and
# without a capture, on a throwaway cluster that preloads amplitude_sync (so
# the background worker delivers), against the local sink (bench/sink.py,
# SINK_LATENCY=1). Reports:
#   - the writing workload's TPS without capture and with capture (unthrottled);
#   - at a steady rate (BENCH_RATE inserts/s, default 1000, for BENCH_SECONDS,
#     default 30): p50/p99/max delay from the row's event time (set by the
#     trigger, just before the commit) to the sink's answer, per event.
# Writes bench/outbox_results.md.
#
# Needs the extension built and installed for the pg_config first on PATH
# (./bench/bench.sh installs it into the system's PostgreSQL; test/pg_versions.sh
# with AMPLITUDE_SYNC_PG_KEEP=1 leaves an assembled tree whose config/ directory
# can go first on PATH) and pgbench (PGBENCH, default the one on PATH or
# PostgreSQL 15's).
set -u
cd "$(dirname "$0")/.."
source test/harness.sh

RATE=${BENCH_RATE:-1000}
DURATION=${BENCH_SECONDS:-30}
CLIENTS=${BENCH_CLIENTS:-4}
PGBENCH=${PGBENCH:-$(command -v pgbench || echo /usr/lib/postgresql/15/bin/pgbench)}
PSQL=${PSQL:-$(command -v psql || echo /usr/lib/postgresql/15/bin/psql)}
OUT=bench/outbox_results.md

trap 'kill $SINK_PID 2>/dev/null; harness_cleanup' EXIT
harness_start_cluster "shared_preload_libraries = 'amplitude_sync'" "shared_buffers = '256MB'" \
    "max_connections = 50" || exit 1
SINK_LATENCY=1 harness_start_sink || exit 1

q() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
q -v sink="$SINK" <<'SQL' || exit 1
CREATE EXTENSION amplitude_sync;
CREATE SERVER sink FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'sink');
CREATE USER MAPPING FOR CURRENT_USER SERVER sink OPTIONS (api_key 'bench-key-0123456789');
CREATE TABLE bench_plain (id bigserial PRIMARY KEY, user_id text NOT NULL, amount numeric NOT NULL,
                          created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE bench_orders (LIKE bench_plain INCLUDING ALL);
SELECT amplitude_sync.capture('bench_orders', 'sink', 'event', $$'Order Placed' AS event_type,
    new.user_id, 'order-' || new.id AS insert_id, new.amount AS revenue$$);
SQL
printf "INSERT INTO bench_plain (user_id, amount) VALUES ('user-' || (random() * 100000)::int, random() * 100);\n" \
    >"$HARNESS_DIR/plain.sql"
printf "INSERT INTO bench_orders (user_id, amount) VALUES ('user-' || (random() * 100000)::int, random() * 100);\n" \
    >"$HARNESS_DIR/captured.sql"

tps() { sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1; }
wait_drained() {
    for _ in $(seq 1 1800); do
        [ "$(q -c 'SELECT count(*) FROM amplitude_sync.outbox')" = 0 ] && return 0
        sleep 0.1
    done
    return 1
}

log "unthrottled, no capture ($CLIENTS clients, ${DURATION}s)"
plain=$(nice "$PGBENCH" -n -c "$CLIENTS" -j 2 -T "$DURATION" -f "$HARNESS_DIR/plain.sql" 2>&1 | tps)
echo "tps $plain"
log "unthrottled, captured"
captured=$(nice "$PGBENCH" -n -c "$CLIENTS" -j 2 -T "$DURATION" -f "$HARNESS_DIR/captured.sql" 2>&1 | tps)
echo "tps $captured"
wait_drained || echo "the outbox did not drain within 3 minutes"
# The same with delivery held back (the sink unreachable, one attempt per
# flush: the worker mostly pauses), to tell the trigger's cost from the
# worker's and the sink's share of this machine's cores.
log "unthrottled, captured, delivery held back"
q -c "ALTER SERVER sink OPTIONS (SET endpoint 'http://127.0.0.1:9', ADD max_attempts '1')" >/dev/null
held=$(nice "$PGBENCH" -n -c "$CLIENTS" -j 2 -T "$DURATION" -f "$HARNESS_DIR/captured.sql" 2>&1 | tps)
echo "tps $held"
q -c "ALTER SERVER sink OPTIONS (SET endpoint '$SINK', DROP max_attempts)" >/dev/null
wait_drained || echo "the outbox did not drain within 3 minutes"

log "steady $RATE inserts/s into the captured table for ${DURATION}s"
curl -sS "$SINK/reset" >/dev/null
q -c "TRUNCATE bench_orders" >/dev/null
steady=$(nice "$PGBENCH" -n -c "$CLIENTS" -j 2 -T "$DURATION" -R "$RATE" -f "$HARNESS_DIR/captured.sql" 2>&1)
steady_tps=$(echo "$steady" | tps)
lag=$(echo "$steady" | sed -n 's/^rate limit schedule lag: avg \([0-9.]*\) .*/\1/p')
drained=yes
wait_drained || drained=no
latency=$(curl -sS "$SINK/latency")
echo "tps $steady_tps, $latency, drained: $drained"
runs=$(q -c "SELECT count(*) FROM amplitude_sync.sync_runs WHERE function_name = 'flush_outbox'")
failed=$(q -c "SELECT count(*) FROM amplitude_sync.sync_runs WHERE function_name = 'flush_outbox' AND status <> 'succeeded'")
inserted=$(q -c "SELECT count(*) FROM bench_orders")
delivered=$(echo "$latency" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')

python3 - "$OUT" "$plain" "$captured" "$held" "$RATE" "$DURATION" "$CLIENTS" "$steady_tps" "$latency" "$drained" \
    "$runs" "$failed" "$inserted" "$delivered" "${lag:-}" <<'PY'
import datetime, json, os, platform, sys
(out, plain, captured, held, rate, duration, clients, steady_tps, latency, drained, runs, failed, inserted,
 delivered, lag) = sys.argv[1:]
lat = json.loads(latency)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
cost = (1 - float(captured) / float(plain)) * 100 if plain and captured else float("nan")
lines = [
    f"Outbox benchmark of {datetime.date.today()}: {cpu} ({os.cpu_count()} cores), "
    f"{platform.system()} {platform.release()}, pgbench {clients} clients, {duration} s per case, "
    "one-row INSERT transactions, fsync off (the throwaway cluster's setting).",
    "",
    "| case | result |",
    "|---|---|",
    f"| TPS, plain table (unthrottled) | {float(plain):,.0f} |",
    f"| TPS, captured table (unthrottled, worker draining) | {float(captured):,.0f} |",
    f"| capture's cost in TPS | {cost:.1f}% (target ≤ 10%) |",
    f"| TPS, captured table, delivery held back (the trigger alone) | {float(held):,.0f} "
    f"({(1 - float(held) / float(plain)) * 100:.1f}% below plain) |",
    f"| steady rate asked / achieved | {rate}/s / {float(steady_tps):,.0f}/s (pgbench schedule lag avg {lag or '?'} ms) |",
    f"| commit → sink answer, p50 / p99 / max | {lat['p50_ms']:.0f} / {lat['p99_ms']:.0f} / {lat['max_ms']:.0f} ms (target p99 ≤ 2000 ms) |",
    f"| rows inserted / events delivered | {inserted} / {delivered}; outbox drained: {drained} |",
    f"| flush runs recorded (not succeeded) | {runs} ({failed}) |",
]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
