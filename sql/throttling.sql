-- 429 Too Many Requests: rows of IDs over the daily quota are rejected, the
-- throttled IDs wait while every other row is resent at once (and later
-- batches without those IDs go on), and a project-wide 429 pauses the batch.
SELECT url AS mock_url FROM mock_config \gset
SELECT mock_reset();
-- One slot (one lane): the batches are the query's rows in order, so the
-- first request (the one the fault throttles) holds user-00002 and user-00004.
CREATE SERVER amplitude_throttled FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint :'mock_url', throttle_pause_ms '300', retry_backoff_ms '1', max_concurrency '1');
CALL create_test_mapping(current_user, 'amplitude_throttled');

SELECT mock_faults('[{"action": "throttle", "users": ["user-00002"], "quota_users": ["user-00004"]}]');
SELECT status, rows_read, sent, rejected, not_sent, requests, retries
FROM amplitude_sync.amplitude_send_events('amplitude_throttled', $$
    SELECT 'Clicked' AS event_type, 'user-' || lpad(g::text, 5, '0') AS user_id, g AS n
    FROM generate_series(1, 15) g ORDER BY g
$$, batch_size => 5);
SELECT row_number, outcome, reason, user_id FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
-- The first request was throttled; user-00002 went last, alone, after the
-- pause; the batches of other users did not wait for it.
SELECT r->>'status' AS status, r->>'fault' AS fault,
       (SELECT string_agg(e->>'user_id', ',' ORDER BY e->>'user_id') FROM jsonb_array_elements(r->'events') e) AS users
FROM mock_requests() r WHERE r->'events' @> '[{"user_id": "user-00002"}]' ORDER BY (r->>'seq')::int;
SELECT (SELECT string_agg(e->>'user_id', ',') FROM jsonb_array_elements(r->'events') e) AS last_request_users
FROM mock_requests() r ORDER BY (r->>'seq')::int DESC LIMIT 1;
SELECT count(*) AS stored, count(*) FILTER (WHERE e->>'user_id' = 'user-00004') AS over_quota_stored
FROM mock_events() e;

-- A project-wide 429 (no IDs named): the batch waits, then goes through.
SELECT mock_reset();
SELECT mock_faults('[{"action": "throttle"}]');
SELECT status, sent, requests, retries FROM amplitude_sync.amplitude_send_events('amplitude_throttled', $$
    SELECT 'Clicked' AS event_type, 'user-' || lpad(g::text, 5, '0') AS user_id FROM generate_series(1, 3) g
$$);
SELECT r->>'status' AS status, jsonb_array_length(r->'events') AS events FROM mock_requests() r ORDER BY (r->>'seq')::int;

-- Throttled for longer than the retry budget: not sent, run failed, no loop.
SELECT mock_reset();
CREATE SERVER amplitude_budget FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint :'mock_url', throttle_pause_ms '100', max_retry_seconds '0');
CALL create_test_mapping(current_user, 'amplitude_budget');
SELECT mock_faults('[{"action": "throttle", "devices": ["device-00001"], "times": -1}]');
\set VERBOSITY terse
SELECT status, sent, rejected, not_sent, requests FROM amplitude_sync.amplitude_send_events('amplitude_budget', $$
    SELECT 'Tapped' AS event_type, 'device-00001' AS device_id
$$);
\set VERBOSITY default
SELECT outcome, reason FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
DROP SERVER amplitude_throttled, amplitude_budget CASCADE;
