#!/usr/bin/env bash
# The outbox's background worker, on a cluster of its own that preloads
# amplitude_sync (the pg_regress cluster does not): it delivers committed
# entries when woken by the commit (the naptime is set to a minute, so only
# the wake-up can deliver within seconds), waits out an outage of Amplitude
# and drains the backlog after it, loses and duplicates nothing across an
# immediate shutdown, and comes back after pg_terminate_backend.
#
# Needs the extension installed for the pg_config first on PATH (run by
# test/pg_versions.sh after the suite, with its assembled server). Exit 0
# when every check passed.
set -u
source "$(dirname "$0")/harness.sh"
trap harness_cleanup EXIT

PSQL="${PSQL_BINDIR:-$(pg_config --bindir)}/psql"
failed=0
fail() { echo "FAIL: $*"; failed=1; }
pass() { echo "ok: $*"; }
q() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }
mock_get() { curl -sS --fail-with-body "$AMPLITUDE_MOCK_URL$1"; }
mock_post() { curl -sS --fail-with-body -X POST -H 'Content-Type: application/json' --data-binary "$2" "$AMPLITUDE_MOCK_URL$1" >/dev/null; }
mock_delete_faults() { curl -sS --fail-with-body -X DELETE "$AMPLITUDE_MOCK_URL/_mock/faults" >/dev/null; }
stored_events() { mock_get /_mock/events | grep -c . ; }
# Waits up to $2 seconds until stored_events reaches $1; prints the seconds it took.
wait_for_events() {
    local want=$1 limit=$2 start now
    start=$(date +%s.%N)
    while :; do
        [ "$(stored_events)" -ge "$want" ] && break
        now=$(date +%s.%N)
        if awk -v s="$start" -v n="$now" -v l="$limit" 'BEGIN { exit !(n - s > l) }'; then return 1; fi
        sleep 0.05
    done
    now=$(date +%s.%N)
    awk -v s="$start" -v n="$now" 'BEGIN { printf "%.2f\n", n - s }'
}
wait_for_worker() {
    for _ in $(seq 1 200); do
        [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'amplitude_sync outbox'")" = 1 ] && return 0
        sleep 0.1
    done
    return 1
}
track() {  # track N events named $2, one transaction
    q "SELECT count(amplitude_sync.track('amp', pg_catalog.jsonb_build_object('event_type', '$2',
           'user_id', 'worker-user-' || g))) FROM generate_series(1, $1) g" >/dev/null
}
restart_cluster() {
    as_cluster_user "$(pg_config --bindir)/pg_ctl" -D "$HARNESS_DIR/data" -m immediate stop >/dev/null
    as_cluster_user "$(pg_config --bindir)/pg_ctl" -D "$HARNESS_DIR/data" -l "$HARNESS_DIR/server.log" -w start >/dev/null
}

key="mock-key-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
harness_start_cluster "shared_preload_libraries = 'amplitude_sync'" "amplitude_sync.outbox_naptime_ms = 60000" || exit 1
harness_start_mock --api-key "$key" || exit 1
q "CREATE EXTENSION amplitude_sync" || exit 1
q "CREATE SERVER amp FOREIGN DATA WRAPPER amplitude_sync
   OPTIONS (endpoint '$AMPLITUDE_MOCK_URL', retry_backoff_ms '10', max_attempts '2')" || exit 1
"$PSQL" -X -q -v ON_ERROR_STOP=1 -v key="$key" <<'SQL' || exit 1
SELECT format('CREATE USER MAPPING FOR CURRENT_USER SERVER amp OPTIONS (api_key %L)', :'key') \gexec
SQL

log "outbox worker: woken by the commit"
wait_for_worker || fail "the worker is not running"
track 10 "Woken"
if t=$(wait_for_events 10 5); then pass "10 events delivered ${t}s after the commit (naptime is 60 s)"
else fail "the commit did not wake the worker: $(stored_events) of 10 events after 5 s"; fi

log "outbox worker: an outage, then the backlog drains"
mock_post /_mock/faults '[{"action": "status", "status": 503, "times": -1}]'
track 5 "During Outage"
sleep 2
[ "$(stored_events)" = 10 ] && pass "nothing stored during the outage" || fail "events stored during the outage"
[ "$(q "SELECT count(*) FROM amplitude_sync.outbox")" = 5 ] && pass "5 entries wait in the outbox" \
    || fail "the outbox holds $(q "SELECT count(*) FROM amplitude_sync.outbox") entries, not 5"
[ "$(q "SELECT count(*) FROM amplitude_sync.sync_runs WHERE status = 'failed'")" -ge 1 ] \
    && pass "the failed flushes are in sync_runs" || fail "no failed run recorded"
mock_delete_faults
if t=$(wait_for_events 15 90); then pass "the backlog drained ${t}s after Amplitude came back"
else fail "$(stored_events) of 15 events after the outage"; fi

log "outbox worker: an immediate shutdown after commit"
mock_post /_mock/faults '[{"action": "status", "status": 503, "times": -1}]'
track 5 "Before Crash"
restart_cluster
mock_delete_faults
wait_for_worker || fail "the worker did not start again"
if t=$(wait_for_events 20 90); then pass "committed entries delivered after the restart (${t}s)"
else fail "$(stored_events) of 20 events after the restart"; fi

log "outbox worker: accepted, answer lost, worker terminated"
# Amplitude stores the batch but answers 500: the worker sends it again,
# and Amplitude drops it by insert_id.
mock_post /_mock/faults '[{"action": "status", "status": 500, "ingest": true}]'
track 3 "Answer Lost"
wait_for_events 23 30 >/dev/null || fail "$(stored_events) of 23 events after a lost answer"
q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'amplitude_sync outbox'" >/dev/null
sleep 0.5
track 2 "After Terminate"
if t=$(wait_for_events 25 30); then pass "the worker came back after pg_terminate_backend (${t}s)"
else fail "$(stored_events) of 25 events after terminate"; fi

log "outbox worker: every event once"
sleep 1
events=$(stored_events)
ids=$(mock_get /_mock/events | python3 -c 'import sys, json; print(len({json.loads(l)["insert_id"] for l in sys.stdin if l.strip()}))')
left=$(q "SELECT count(*) FROM amplitude_sync.outbox")
[ "$events" = 25 ] && [ "$ids" = 25 ] && [ "$left" = 0 ] && pass "25 events stored, 25 insert_ids, outbox empty" \
    || fail "$events events, $ids insert_ids, $left entries left"
if grep -q -- "$key" "$HARNESS_DIR/server.log"; then fail "the API key is in the server log"; fi
grep -E "PANIC|TRAP:|terminated by signal" "$HARNESS_DIR/server.log" && fail "a process crashed"

exit "$failed"
