-- Delivery at Amplitude's speed: the mock enforces per-ID rates over a
-- window, as Amplitude documents them (30 events/s of one user or device on
-- /2/httpapi, 1,000 on /batch), and answers after a delay. The extension
-- paces each ID within its allowance (so no 429 comes from its own sending),
-- keeps every device's order, sends every event exactly once, and records how
-- long pacing held the run back. A 2 s window on both sides (mock window_ms,
-- server option rate_window_ms) keeps the test short: 60 events of one ID per
-- window on /2/httpapi.
SELECT url AS mock_url FROM mock_config \gset
SELECT mock_reset();
SELECT count(*) FROM mock_call('POST', '/_mock/pacing', '{"id_rates": true, "window_ms": 2000, "response_delay_ms": 50}');
CREATE SERVER amplitude_paced FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint :'mock_url', rate_window_ms '2000', throttle_pause_ms '300', retry_backoff_ms '1');
CALL create_test_mapping(current_user, 'amplitude_paced');

-- What the mock holds: every event once, each device's events in query order.
CREATE FUNCTION stored_per_device() RETURNS TABLE (device text, events bigint, distinct_n bigint, in_order bool)
LANGUAGE sql AS $$
    SELECT CASE WHEN device_id = 'device-heavy' THEN device_id ELSE 'light' END,
           count(*), count(DISTINCT n), bool_and(n > prev_n)
    FROM (SELECT e->>'device_id' AS device_id, (e->'event_properties'->>'n')::int AS n,
                 lag((e->'event_properties'->>'n')::int, 1, 0)
                     OVER (PARTITION BY e->>'device_id' ORDER BY ord) AS prev_n
          FROM mock_events() WITH ORDINALITY AS t(e, ord)) s
    GROUP BY 1 ORDER BY 1
$$;
-- 429s the mock's rate enforcement gave (injected faults are named).
CREATE FUNCTION rate_refusals() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM mock_requests() r WHERE r->>'status' = '429' AND r->>'fault' IS NULL
$$;

-- One heavy device (100 events) among 40 light ones (3 each), interleaved:
-- 60 of the heavy device go at once, the other 40 after the window; the
-- light devices do not wait for it.
\set VERBOSITY terse
SELECT status, rows_read, sent, rejected, not_sent FROM amplitude_sync.amplitude_send_events('amplitude_paced', $$
    SELECT 'Paced' AS event_type, CASE WHEN g % 11 < 5 THEN 'device-heavy' ELSE 'device-' || (g % 40) END AS device_id, g AS n
    FROM generate_series(1, 220) g ORDER BY g
$$);
\set VERBOSITY default
SELECT * FROM stored_per_device();
SELECT rate_refusals() AS rate_refusals;
SELECT pacing_seconds >= 1 AS paced, finished_at - started_at >= interval '2 s' AS waited_a_window
FROM amplitude_sync.sync_runs WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
-- The heavy device's rest went last, alone, after the light devices'.
SELECT (SELECT string_agg(DISTINCT e->>'device_id', ',') FROM jsonb_array_elements(r->'events') e) AS devices,
       jsonb_array_length(r->'events') AS events
FROM mock_requests() r ORDER BY (r->>'seq')::int DESC LIMIT 1;

-- The same rows on /batch (1,000 events per second and ID): nothing held back.
SELECT mock_reset();
SELECT count(*) FROM mock_call('POST', '/_mock/pacing', '{"id_rates": true, "window_ms": 2000, "response_delay_ms": 50}');
SELECT status, sent, requests FROM amplitude_sync.amplitude_send_events('amplitude_paced', $$
    SELECT 'Paced' AS event_type, CASE WHEN g % 11 < 5 THEN 'device-heavy' ELSE 'device-' || (g % 40) END AS device_id, g AS n
    FROM generate_series(1, 220) g ORDER BY g
$$, api => 'batch');
SELECT * FROM stored_per_device();
SELECT rate_refusals() AS rate_refusals;
SELECT pacing_seconds FROM amplitude_sync.sync_runs WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);

-- A 429 naming the heavy device pauses that device only (throttle_pause_ms),
-- then it resumes within its allowance: one injected 429, none of the
-- mock's own, everything stored once and in order.
SELECT mock_reset();
SELECT count(*) FROM mock_call('POST', '/_mock/pacing', '{"id_rates": true, "window_ms": 2000, "response_delay_ms": 50}');
SELECT mock_faults('[{"action": "throttle", "devices": ["device-heavy"]}]');
SET client_min_messages = warning;  -- whether pacing dominated depends on timing here
SELECT status, sent, rejected, not_sent FROM amplitude_sync.amplitude_send_events('amplitude_paced', $$
    SELECT 'Paced' AS event_type, CASE WHEN g % 11 < 5 THEN 'device-heavy' ELSE 'device-' || (g % 40) END AS device_id, g AS n
    FROM generate_series(1, 110) g ORDER BY g
$$);
RESET client_min_messages;
SELECT * FROM stored_per_device();
SELECT rate_refusals() AS rate_refusals,
       (SELECT count(*) FROM mock_requests() r WHERE r->>'fault' = 'throttle') AS injected;
-- The throttled request's other devices were resent at once, without it.
SELECT (SELECT count(*) FROM jsonb_array_elements(r->'events') e WHERE e->>'device_id' = 'device-heavy') AS heavy_events
FROM mock_requests() r WHERE r->>'status' = '200' ORDER BY (r->>'seq')::int LIMIT 1;

-- The project's cap (max_events_per_second): 250 events of 250 users at 100
-- per second take at least two seconds; no request carries more than the cap.
SELECT mock_reset();
CREATE SERVER amplitude_capped FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint :'mock_url', max_events_per_second '100');
CALL create_test_mapping(current_user, 'amplitude_capped');
SELECT status, sent FROM amplitude_sync.amplitude_send_events('amplitude_capped', $$
    SELECT 'Capped' AS event_type, 'user-' || lpad(g::text, 5, '0') AS user_id FROM generate_series(1, 250) g
$$);
SELECT count(*) AS stored, count(DISTINCT e->>'user_id') AS users FROM mock_events() e;
SELECT max(jsonb_array_length(r->'events')) <= 100 AS within_cap FROM mock_requests() r;
SELECT finished_at - started_at >= interval '2 s' AS spread_over_seconds, pacing_seconds > 0 AS paced
FROM amplitude_sync.sync_runs WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);

SELECT mock_reset();
DROP FUNCTION stored_per_device(), rate_refusals();
DROP SERVER amplitude_paced, amplitude_capped CASCADE;
