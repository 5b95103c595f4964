#!/usr/bin/env bash
# Soak test (make soak; not part of the default CI run): 100,000 events sent
# while about 20% of the requests fail at random (500 after storing, 503,
# HTML 502, connection resets, 413). Every event must arrive exactly once, in
# each device's order, with nothing rejected or left unsent.
set -uo pipefail
source "$(dirname "$0")/harness.sh"
cd "$HARNESS_REPO"
trap harness_cleanup EXIT
EVENTS=${SOAK_EVENTS:-100000}
SEED=${SOAK_SEED:-$RANDOM}

harness_install_packages || exit 1
harness_build_and_install || exit 1
harness_start_cluster || exit 1
KEY="soak-key-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
harness_start_mock --api-key "$KEY" || exit 1

log "soak: $EVENTS events, ~20% of requests faulted (seed $SEED)"
curl -sS -X POST "$AMPLITUDE_MOCK_URL/_mock/faults" -H 'Content-Type: application/json' --data-binary @- <<JSON >/dev/null
[{"action": "status", "status": 500, "ingest": true, "times": -1, "probability": 0.05, "seed": $SEED},
 {"action": "status", "status": 503, "times": -1, "probability": 0.05, "seed": $((SEED + 1))},
 {"action": "reset", "times": -1, "probability": 0.04, "seed": $((SEED + 2))},
 {"action": "status", "status": 502, "content_type": "text/html", "body": "<html>Bad Gateway</html>",
  "times": -1, "probability": 0.03, "seed": $((SEED + 3))},
 {"action": "too_large", "max_bytes": 300000, "times": -1, "probability": 0.05, "seed": $((SEED + 4))}]
JSON

createdb soak
psql -X -q -v ON_ERROR_STOP=1 -d soak -v key="$KEY" -v url="$AMPLITUDE_MOCK_URL" -v events="$EVENTS" <<'SQL' || exit 1
CREATE EXTENSION amplitude_sync;
CREATE SERVER amplitude FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint :'url', retry_backoff_ms '5', max_attempts '30');
CREATE USER MAPPING FOR CURRENT_USER SERVER amplitude OPTIONS (api_key :'key');
\timing on
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude', format($$
    SELECT 'Soak' AS event_type, 'device-' || lpad((g %% 1000)::text, 5, '0') AS device_id,
           'soak-' || g AS insert_id, g AS n, repeat('p', 100) AS padding
    FROM generate_series(1, %s) g ORDER BY g$$, :events)) \gset run_
\timing off
\echo run :run_run_id: :run_status, :run_rows_read read, :run_sent sent, :run_rejected rejected, :run_not_sent not sent, :run_requests requests, :run_retries retries

CREATE TABLE arrived (ord bigserial, line text);
SELECT format('COPY arrived (line) FROM PROGRAM %L WITH (FORMAT csv, QUOTE e''\x01'', DELIMITER e''\x02'')',
              'curl -sS ' || :'url' || '/_mock/events') \gexec
CREATE TABLE faults (line text);
SELECT format('COPY faults FROM PROGRAM %L WITH (FORMAT csv, QUOTE e''\x01'', DELIMITER e''\x02'')',
              'curl -sS ' || :'url' || '/_mock/requests') \gexec
SELECT count(*) AS requests, count(*) FILTER (WHERE line::jsonb->>'fault' IS NOT NULL) AS faulted,
       round(100.0 * count(*) FILTER (WHERE line::jsonb->>'fault' IS NOT NULL) / count(*), 1) AS faulted_pct
FROM faults;
CREATE TABLE checks AS
SELECT (SELECT count(*) FROM arrived) AS stored,
       (SELECT count(DISTINCT line::jsonb->>'insert_id') FROM arrived) AS distinct_ids,
       (SELECT count(*) FROM (SELECT (line::jsonb->'event_properties'->>'n')::int AS n,
                                     lag((line::jsonb->'event_properties'->>'n')::int) OVER (
                                         PARTITION BY line::jsonb->>'device_id' ORDER BY ord) AS prev
                              FROM arrived) s
        WHERE n < prev) AS out_of_order;
TABLE checks;
SELECT :'run_status' = 'succeeded' AND :run_sent = :events AND :run_rejected = 0 AND :run_not_sent = 0
       AND stored = :events AND distinct_ids = :events AND out_of_order = 0
       AND (SELECT count(*) FILTER (WHERE line::jsonb->>'fault' IS NOT NULL) FROM faults) > 0 AS soak_passed
FROM checks \gset
\if :soak_passed
\echo SOAK PASSED: every event arrived exactly once and in order
\else
\echo SOAK FAILED
\quit 1
\endif
SQL
rc=$?
[ $rc = 0 ] && log "soak passed" || log "SOAK FAILED"
exit $rc
