-- Batching under Amplitude's limits: at most 2000 events and under 1 MB per
-- /2/httpapi request, 20 MB on /batch; a smaller batch_size on request; and
-- one device's events arrive in the query's order even with several
-- requests in flight.
SELECT mock_reset();

-- 5,000 rows arrive as 3 requests of at most 2,000 events.
SELECT status, rows_read, sent, requests, retries FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Batch Test' AS event_type, 'user-' || g AS user_id, g AS n
    FROM generate_series(1, 5000) g
$$);
SELECT r->>'path' AS path, r->>'status' AS status, jsonb_array_length(r->'events') AS events
FROM mock_requests() r ORDER BY events DESC, path;
SELECT count(*) AS stored, count(DISTINCT e->>'user_id') AS users FROM mock_events() e;

-- Rows of ~100 kB: a request stays under 1 MB, so the set is split by size.
SELECT mock_reset();
SELECT status, rows_read, sent, requests FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Big Row' AS event_type, 'user-big-' || g AS user_id, repeat('x', 100000) AS blob
    FROM generate_series(1, 20) g
$$);
SELECT count(*) AS requests, max((r->>'body_bytes')::int) < 1000000 AS all_under_1mb,
       sum(jsonb_array_length(r->'events')) AS events, bool_and(r->>'status' = '200') AS all_accepted
FROM mock_requests() r;

-- The same rows through /batch (backfills): one request, up to 20 MB.
SELECT mock_reset();
SELECT status, sent, requests FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Big Row' AS event_type, 'user-big-' || g AS user_id, repeat('x', 100000) AS blob
    FROM generate_series(1, 20) g
$$, api => 'batch');
SELECT r->>'path' AS path, jsonb_array_length(r->'events') AS events, (r->>'body_bytes')::int > 2000000 AS over_2mb
FROM mock_requests() r;

-- Backfilling history through /batch: a query without a decision on
-- skip_user_properties_sync gets the NOTICE above; with true, historical
-- events leave users' current properties alone (Amplitude's backfill guide),
-- with false they overwrite them (Amplitude's default), silently.
SELECT mock_reset();
SELECT status, sent FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Plan Changed' AS event_type, 'user-now-1' AS user_id, '{"plan": "enterprise"}'::jsonb AS user_properties
$$);
SELECT status, sent FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Plan Changed' AS event_type, 'user-now-1' AS user_id, '{"plan": "free"}'::jsonb AS user_properties,
           timestamptz '2021-01-01' AS time, true AS skip_user_properties_sync
$$, api => 'batch');
SELECT u->'user_properties'->>'plan' AS plan_after_backfill FROM mock_users() u WHERE u->>'user_id' = 'user-now-1';
SELECT e->>'$path' AS path, e->>'$skip_user_properties_sync' AS skip_sync
FROM mock_events() e WHERE e->>'user_id' = 'user-now-1' ORDER BY (e->>'$seq')::int;
SELECT status, sent FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Plan Changed' AS event_type, 'user-now-1' AS user_id, '{"plan": "free"}'::jsonb AS user_properties,
           timestamptz '2021-01-01' AS time, false AS skip_user_properties_sync
$$, api => 'batch');
SELECT u->'user_properties'->>'plan' AS plan_after_overwrite FROM mock_users() u WHERE u->>'user_id' = 'user-now-1';

-- batch_size lowers the events per request.
SELECT mock_reset();
SELECT sent, requests FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Small Batches' AS event_type, 'user-' || g AS user_id FROM generate_series(1, 250) g
$$, batch_size => 100);
SELECT jsonb_array_length(r->'events') AS events FROM mock_requests() r ORDER BY 1 DESC;

-- Connections are kept alive for the run: 30 requests, at most
-- max_concurrency (4) connections.
SELECT mock_reset();
SELECT sent, requests FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Keep Alive' AS event_type, 'user-' || g AS user_id FROM generate_series(1, 3000) g
$$, batch_size => 100);
SELECT count(*) AS requests, count(DISTINCT r->>'connection') BETWEEN 1 AND 4 AS connections_reused
FROM mock_requests() r;

-- Three devices' events interleaved, 100 per request, several requests in
-- flight: each device's events are stored in the query's order. (900 events
-- per device: what /2/httpapi takes of one ID within its 30 s window; more
-- would be paced, see pacing.sql.)
SELECT mock_reset();
SELECT sent, requests FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Tap' AS event_type, 'device-' || (g % 3) AS device_id, g AS n
    FROM generate_series(1, 2700) g ORDER BY g
$$, batch_size => 100);
SELECT device_id, count(*) AS events, bool_and(n > prev_n) AS in_query_order
FROM (SELECT e->>'device_id' AS device_id, (e->'event_properties'->>'n')::int AS n,
             lag((e->'event_properties'->>'n')::int, 1, 0) OVER (PARTITION BY e->>'device_id' ORDER BY ord) AS prev_n
      FROM mock_events() WITH ORDINALITY AS t(e, ord)) s
GROUP BY device_id ORDER BY device_id;
