-- Amplitude's answers: only a confirmed 200 counts as sent; refused events
-- are recorded and the rest resent; 413 splits; 5xx, resets and HTML pages
-- are retried with the same insert_ids; a spent retry budget fails the run
-- with every unsent row recorded; an invalid key or 403 stops with an error.
SELECT url AS mock_url FROM mock_config \gset
SELECT mock_reset();

-- 400 naming two events: exactly those are rejected, the rest resent.
SELECT mock_faults('[{"action": "invalid", "field": "user_id", "values": ["user-00003", "user-00007"]}]');
SELECT status, rows_read, sent, rejected, not_sent, requests, retries
FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Purchase' AS event_type, 'user-' || lpad(g::text, 5, '0') AS user_id
    FROM generate_series(1, 10) g
$$);
SELECT row_number, outcome, field, reason, user_id FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs) ORDER BY row_number;
SELECT r->>'status' AS status, jsonb_array_length(r->'events') AS events FROM mock_requests() r ORDER BY (r->>'seq')::int;
SELECT count(*) AS stored FROM mock_events();

-- 413: the batch is halved until it fits.
SELECT mock_reset();
SELECT mock_faults('[{"action": "too_large", "max_bytes": 3000, "times": -1}]');
SELECT status, sent, rejected, requests, retries FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Split' AS event_type, 'user-' || lpad(g::text, 5, '0') AS user_id, repeat('z', 200) AS pad
    FROM generate_series(1, 40) g
$$);
SELECT r->>'status' AS status, count(*) AS requests, sum(jsonb_array_length(r->'events')) AS events
FROM mock_requests() r GROUP BY 1 ORDER BY 1;
SELECT count(*) AS stored, count(DISTINCT e->>'insert_id') AS distinct_ids FROM mock_events() e;

-- An event too large even alone is rejected with that reason.
SELECT mock_reset();
SELECT mock_faults('[{"action": "too_large", "max_bytes": 100, "times": -1}]');
SELECT status, sent, rejected, requests FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Too Big' AS event_type, 'user-' || lpad(g::text, 5, '0') AS user_id FROM generate_series(1, 2) g
$$);
SELECT row_number, outcome, reason FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs) ORDER BY row_number;

-- 5xx, a reset connection and a load balancer's HTML page are retried.
SELECT mock_reset();
SELECT mock_faults('[{"action": "status", "status": 500, "ingest": true},
                     {"action": "status", "status": 503},
                     {"action": "reset"},
                     {"action": "status", "status": 502, "content_type": "text/html", "body": "<html>Bad Gateway</html>"},
                     {"action": "status", "status": 504}]');
SELECT status, sent, rejected, not_sent, requests, retries FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Retry' AS event_type, 'user-' || lpad(g::text, 5, '0') AS user_id FROM generate_series(1, 3) g
$$);
SELECT r->>'status' AS status, r->>'fault' AS fault FROM mock_requests() r ORDER BY (r->>'seq')::int;
-- The 500 had stored the events already: the retry's same insert_ids kept one copy.
SELECT count(*) AS stored, (SELECT s->>'duplicates_dropped' FROM mock_call('GET', '/_mock/stats') s) AS duplicates_dropped
FROM mock_events();

-- A retry keeps a device's order: the second batch waits for the first.
SELECT mock_reset();
SELECT mock_faults('[{"action": "status", "status": 500, "times": 2}]');
SELECT sent, requests, retries FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Ordered' AS event_type, 'device-000' || (g % 2) AS device_id, g AS n
    FROM generate_series(1, 40) g ORDER BY g
$$, batch_size => 10);
SELECT device_id, count(*) AS events, bool_and(n > prev_n) AS in_query_order
FROM (SELECT e->>'device_id' AS device_id, (e->'event_properties'->>'n')::int AS n,
             lag((e->'event_properties'->>'n')::int, 1, 0) OVER (PARTITION BY e->>'device_id' ORDER BY ord) AS prev_n
      FROM mock_events() WITH ORDINALITY AS t(e, ord)) s
GROUP BY device_id ORDER BY device_id;

-- Retries are bounded: when the budget is spent the run fails, the function
-- still returns (so the record survives), and each unsent row is recorded.
SELECT mock_reset();
CREATE SERVER amplitude_flaky FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint :'mock_url', max_attempts '3', retry_backoff_ms '1');
CALL create_test_mapping(current_user, 'amplitude_flaky');
SELECT mock_faults('[{"action": "status", "status": 500, "times": -1}]');
\set VERBOSITY terse
SELECT status, rows_read, sent, rejected, not_sent, requests, retries
FROM amplitude_sync.amplitude_send_events('amplitude_flaky', $$
    SELECT 'Down' AS event_type, 'user-' || lpad(g::text, 5, '0') AS user_id FROM generate_series(1, 5) g
$$);
\set VERBOSITY default
SELECT status, rows_read = sent + rejected + not_sent AS balanced, error
FROM amplitude_sync.sync_runs WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
SELECT row_number, outcome, reason, insert_id IS NOT NULL AS has_insert_id FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs) ORDER BY row_number;
SELECT count(*) AS stored FROM mock_events();

-- An invalid API key stops the call with an error that never shows the key.
SELECT mock_reset();
CREATE SERVER amplitude_badkey FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'mock_url');
CREATE USER MAPPING FOR CURRENT_USER SERVER amplitude_badkey OPTIONS (api_key 'wrong-key-abcdef-SECRET');
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_badkey', $$
    SELECT 'Nope' AS event_type, 'user-' || lpad(g::text, 5, '0') AS user_id FROM generate_series(1, 3) g
$$);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS requests, bool_and(r->>'api_key' = 'wrong-key-abcdef-SECRET') AS mock_saw_key,
       bool_and(r->'response'->>'error' LIKE 'Invalid API key: wrong-key%') AS mock_echoed_it
FROM mock_requests() r;
SELECT http_status, response FROM amplitude_sync.send_test_event('amplitude_badkey');

-- A request missing a field, and a 403 from Amplitude's firewall, also stop.
SELECT mock_faults('[{"action": "status", "status": 400, "body": {"code": 400, "error": "Request missing required field", "missing_field": "api_key"}}]');
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$SELECT 'e' AS event_type, 'user-00001' AS user_id$$);
\echo :LAST_ERROR_SQLSTATE
SELECT mock_faults('[{"action": "status", "status": 403}]');
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$SELECT 'e' AS event_type, 'user-00001' AS user_id$$);
\echo :LAST_ERROR_SQLSTATE

-- A 200 without Amplitude's confirmation is not counted as sent.
SELECT mock_reset();
SELECT mock_faults('[{"action": "status", "status": 200, "content_type": "text/html", "body": "<html>ok</html>"}]');
SELECT status, sent, requests, retries FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'Confirmed' AS event_type, 'user-00001' AS user_id$$);
SELECT r->>'status' AS status, r->>'fault' AS fault FROM mock_requests() r ORDER BY (r->>'seq')::int;

DROP SERVER amplitude_flaky, amplitude_badkey CASCADE;
