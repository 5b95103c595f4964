-- Users and devices (amplitude_identify) through /identify: keys, the
-- identify-level fields, every other column a property under an operation,
-- NULL handling both ways, batches of at most 1,024, the profile Amplitude
-- ends up with, and the synthetic "properties updated" event.
SELECT url AS mock_url FROM mock_config \gset
SELECT mock_reset();
-- Like every sending function, EXECUTE must be granted.
SET ROLE regress_amp_sender;
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'user-00001' AS user_id$$);
SELECT * FROM amplitude_sync.amplitude_group_identify('amplitude_mock', $$SELECT 'c' AS group_type, 'v' AS group_value$$);
RESET ROLE;

-- Users: plain columns are $set; identify-level fields go top level; groups
-- sets membership.
SELECT status, rows_read, sent, rejected, not_sent, requests FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT 'user-00001' AS user_id, 'pro' AS plan, 120.50 AS ltv, ARRAY['beta', 'admin'] AS tags,
           '2024-05-01 10:00:00+00'::timestamptz AS signed_up_at, 'FR' AS country, 'iOS' AS platform,
           '{"company": "acme-corp"}'::jsonb AS groups
    UNION ALL
    SELECT 'user-00002', 'free', 0, NULL, NULL, 'US', NULL, NULL
$$);
SELECT r->>'path' AS path, r->>'content_type' AS content_type, r->>'status' AS status,
       jsonb_array_length(r->'identification') AS identifications
FROM mock_requests() r;
SELECT jsonb_pretty(r->'identification') FROM mock_requests() r;
SELECT jsonb_pretty(u) FROM mock_users() u;

-- Amplitude's own fields are asked for by name (amplitude_country, ...);
-- a plain country column is a user property (above). Amplitude updates the
-- location fields as a group: sending one resets the others, which is said.
SELECT mock_reset();
SELECT sent FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT 'user-geo01' AS user_id, 'FR' AS amplitude_country, 'Paris' AS amplitude_city,
           'Ile-de-France' AS amplitude_region, 'n/a' AS amplitude_dma$$);
SELECT sent FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT 'user-geo01' AS user_id, 'DE' AS amplitude_country$$);
SELECT u->'fields'->>'country' AS country, u->'fields'->>'city' AS city, u->'fields'->>'region' AS region FROM mock_users() u
WHERE u->>'user_id' = 'user-geo01';
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'user-geo01' AS user_id, 'x' AS amplitude_county$$);

-- The properties event carries only what is safe to apply twice: each
-- increment reaches the profile once.
SELECT mock_reset();
SELECT sent FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT 'user-inc01' AS user_id, 1 AS logins, ARRAY['x'] AS tags, 'pro' AS plan$$,
    operations => '{"logins": "$add", "tags": "$append"}', properties_event => 'Properties Updated');
SELECT u->'user_properties' AS profile FROM mock_users() u WHERE u->>'user_id' = 'user-inc01';
SELECT e->'user_properties' AS event_properties FROM mock_events() e WHERE e->>'user_id' = 'user-inc01';

-- Every operation, and NULLs left out (the default) or unset.
SELECT mock_reset();
SELECT sent FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT 'user-ops01' AS user_id, 1 AS visits, ARRAY['a'] AS tags, 'first' AS first_seen,
           ARRAY['x'] AS queue, ARRAY['p'] AS pre, ARRAY['q'] AS post, ARRAY['r', 's'] AS removed,
           'gone soon' AS nickname
$$);
SELECT sent FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT 'user-ops01' AS user_id, 2 AS visits, ARRAY['b'] AS tags, 'second' AS first_seen,
           ARRAY['w'] AS queue, ARRAY['p', 'o'] AS pre, ARRAY['q', 'z'] AS post, ARRAY['r'] AS removed,
           NULL::text AS nickname
$$, operations => '{"visits": "$add", "tags": "$append", "first_seen": "$setOnce", "queue": "$prepend",
                    "pre": "$preInsert", "post": "$postInsert", "removed": "$remove"}');
SELECT u->'user_properties' AS after_operations_nulls_skipped FROM mock_users() u;
SELECT sent FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT 'user-ops01' AS user_id, NULL::text AS nickname, NULL::int AS visits
$$, nulls => 'unset');
SELECT u->'user_properties' AS after_unset FROM mock_users() u;
SELECT (SELECT r2->'identification'->0 FROM mock_requests() r2 ORDER BY (r2->>'seq')::int DESC LIMIT 1) AS unset_identification;

-- A user_properties jsonb column is merged in (plain keys are $set, operation
-- objects keep their operation); a non-NULL column wins over the same key.
SELECT mock_reset();
SELECT sent FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT 'user-merge1' AS user_id, 'column' AS source,
           '{"source": "jsonb", "color": "blue", "$add": {"score": 5}}'::jsonb AS user_properties
$$);
SELECT r->'identification'->0 AS identification FROM mock_requests() r;
SELECT u->'user_properties' AS profile FROM mock_users() u;

-- Devices: keyed by device_id; a user_id column links the device to the
-- user (one profile); a device alone has a profile of its own.
SELECT mock_reset();
SELECT sent, rejected FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT * FROM (VALUES ('device-00001', 'user-00001', 'iPhone 15'),
                          ('device-00002', NULL, 'Pixel 8')) t(device_id, user_id, model_name)
$$, object => 'device');
SELECT u->>'user_id' AS user_id, u->'device_ids' AS device_ids, u->'user_properties' AS props
FROM mock_users() u ORDER BY 1 NULLS LAST;

-- 3,000 users arrive in requests of at most 1,024.
SELECT mock_reset();
SELECT status, rows_read, sent, requests FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT 'user-' || lpad(g::text, 5, '0') AS user_id, g % 7 AS cohort FROM generate_series(1, 3000) g
$$);
SELECT jsonb_array_length(r->'identification') AS identifications, (r->>'body_bytes')::int < 1000000 AS under_1mb
FROM mock_requests() r ORDER BY 1 DESC;
SELECT count(*) AS profiles FROM mock_users();

-- The "properties updated" event: one event per user whose properties were
-- sent, carrying the same user_properties, so they show at once.
SELECT mock_reset();
SELECT status, sent, requests FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT 'user-' || lpad(g::text, 5, '0') AS user_id, 'pro' AS plan FROM generate_series(1, 3) g
$$, properties_event => 'Properties Updated');
SELECT r->>'path' AS path, count(*) AS requests FROM mock_requests() r GROUP BY 1 ORDER BY 1;
SELECT e->>'event_type' AS event_type, e->>'user_id' AS user_id, e->'user_properties' AS user_properties,
       e->>'insert_id' ~ '^as-[0-9a-f]{32}$' AS deterministic_insert_id
FROM mock_events() e ORDER BY 2;
-- Sent again: the same insert_ids, so Amplitude keeps one event per user.
SELECT sent FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT 'user-' || lpad(g::text, 5, '0') AS user_id, 'pro' AS plan FROM generate_series(1, 3) g
$$, properties_event => 'Properties Updated');
SELECT count(*) AS events_stored FROM mock_events();

-- Rows Amplitude would refuse are rejected locally, with the reason.
SELECT mock_reset();
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT * FROM (VALUES (1, 'user-00001', 1), (2, NULL, 2), (3, 'abc', 3), (4, 'null', 4),
                          (5, 'undefined', 5), (6, '', 6)) t(n, user_id, score) ORDER BY n
$$);
SELECT row_number, field, reason, user_id FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs) ORDER BY row_number;
SELECT count(*) AS profiles FROM mock_users();

-- Mistakes are errors before anything is sent.
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'x' AS plan$$);
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'user-00001' AS user_id$$, object => 'device');
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'user-00001' AS user_id$$, object => 'org');
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'user-00001' AS user_id, 'a' AS plan$$,
    operations => '{"plan": "$add"}');
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'user-00001' AS user_id, 'a' AS plan$$,
    operations => '{"plan": "$increment"}');
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'user-00001' AS user_id, 'a' AS plan$$,
    operations => '{"planet": "$set"}');
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'user-00001' AS user_id, 'a' AS plan$$,
    operations => '["plan"]');
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'user-00001' AS user_id$$, nulls => 'maybe');
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'user-00001' AS user_id, 'a' AS groups$$);
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'user-00001' AS user_id$$, batch_size => 2000);
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'user-00001' AS user_id$$, properties_event => '');

-- min_id_length: /identify takes no options and refuses IDs shorter than 5,
-- so a shorter minimum is refused for users and devices (and their saved
-- syncs) rather than sending rows Amplitude would refuse; 5 is what it
-- enforces, and a longer minimum is checked locally.
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'abc' AS user_id$$, min_id_length => 3);
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock', $$SELECT 'abc' AS device_id$$, object => 'device',
    min_id_length => 3, properties_event => 'Properties Updated');
SELECT * FROM amplitude_sync.create_sync('short_ids', 'amplitude_mock', 'user', $$SELECT 'abc' AS user_id$$,
    min_id_length => 3);
SELECT mock_reset();
SELECT status, sent, rejected FROM amplitude_sync.amplitude_identify('amplitude_mock',
    $$SELECT 'abc' AS user_id, 'pro' AS plan$$, min_id_length => 5);
SELECT reason FROM amplitude_sync.rejected_records WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
SELECT status, sent, rejected FROM amplitude_sync.amplitude_identify('amplitude_mock',
    $$SELECT * FROM (VALUES ('user-001', 'pro'), ('user-000001', 'pro')) t(user_id, plan)$$, min_id_length => 10);
SELECT reason FROM amplitude_sync.rejected_records WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
SELECT u->>'user_id' AS identified FROM mock_users() u ORDER BY 1;
-- The way to reach users with shorter IDs: events, where the option exists.
SELECT status, sent FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'Plan Changed' AS event_type, 'abc' AS user_id, '{"plan": "pro"}'::jsonb AS user_properties$$,
    min_id_length => 3);
SELECT u->>'user_id' AS user_id, u->'user_properties'->>'plan' AS plan FROM mock_users() u;
