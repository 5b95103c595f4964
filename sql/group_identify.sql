-- Groups (amplitude_group_identify) through /groupidentify, user <-> group
-- membership, and Amplitude's delivery faults on the identify endpoints.
SELECT url AS mock_url FROM mock_config \gset
SELECT mock_reset();

-- Groups: group_type and group_value are the key; other columns are group
-- properties ($set by default); a group_properties jsonb column merges in.
SELECT status, rows_read, sent, rejected, requests FROM amplitude_sync.amplitude_group_identify('amplitude_mock', $$
    SELECT 'company' AS group_type, name AS group_value, plan, seats, tags,
           '{"region": "emea"}'::jsonb AS group_properties
    FROM (VALUES ('acme-corp', 'enterprise', 120, ARRAY['a']),
                 ('globex', 'team', 8, ARRAY['b'])) t(name, plan, seats, tags)
$$);
SELECT r->>'path' AS path, r->>'content_type' AS content_type FROM mock_requests() r;
SELECT jsonb_pretty(r->'identification') FROM mock_requests() r;

-- Every group operation; NULLs skipped, then unset.
SELECT sent FROM amplitude_sync.amplitude_group_identify('amplitude_mock', $$
    SELECT 'company' AS group_type, 'acme-corp' AS group_value, 'ignored' AS plan, 5 AS seats,
           ARRAY['c'] AS tags, ARRAY['z'] AS history, 'first' AS founded_by, NULL::text AS region
$$, operations => '{"plan": "$setOnce", "seats": "$add", "tags": "$append", "history": "$prepend",
                    "founded_by": "$setOnce"}');
SELECT g->>'group_value' AS group_value, g->'group_properties' AS properties FROM mock_groups() g ORDER BY 1;
SELECT sent FROM amplitude_sync.amplitude_group_identify('amplitude_mock', $$
    SELECT 'company' AS group_type, 'acme-corp' AS group_value, NULL::text AS region, NULL::int AS seats
$$, nulls => 'unset');
SELECT g->>'group_value' AS group_value, g->'group_properties' AS properties FROM mock_groups() g ORDER BY 1;

-- Membership: a user joins groups through the groups column of amplitude_identify.
SELECT sent FROM amplitude_sync.amplitude_identify('amplitude_mock', $$
    SELECT 'user-00042' AS user_id, '{"company": "acme-corp", "team": ["red", "blue"]}'::jsonb AS groups
$$);
SELECT u->>'user_id' AS user_id, u->'groups' AS groups FROM mock_users() u;

-- Rejections: missing or empty keys, a group value that is not a string,
-- more than 1,024 properties.
SELECT mock_reset();
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_group_identify('amplitude_mock', $$
    SELECT * FROM (VALUES (1, 'company', '"acme-corp"'::jsonb),
                          (2, 'company', '42'::jsonb),
                          (3, NULL, '"globex"'::jsonb),
                          (4, '', '"initech"'::jsonb),
                          (5, 'company', NULL)) t(n, group_type, group_value) ORDER BY n
$$);
SELECT row_number, field, reason FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs) ORDER BY row_number;
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_group_identify('amplitude_mock', $$
    SELECT 'company' AS group_type, 'wide-co' AS group_value,
           (SELECT jsonb_object_agg('p' || g, g) FROM generate_series(1, 1025) g) AS group_properties
$$);
SELECT reason FROM amplitude_sync.rejected_records WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
SELECT count(*) AS groups FROM mock_groups();

-- Mistakes are errors before anything is sent.
SELECT * FROM amplitude_sync.amplitude_group_identify('amplitude_mock', $$SELECT 'company' AS group_type$$);
SELECT * FROM amplitude_sync.amplitude_group_identify('amplitude_mock', $$SELECT 'company' AS group_type, 42 AS group_value$$);
SELECT * FROM amplitude_sync.amplitude_group_identify('amplitude_mock',
    $$SELECT 'company' AS group_type, 'acme-corp' AS group_value, ARRAY['a'] AS tags$$,
    operations => '{"tags": "$preInsert"}');

-- Delivery faults on /identify and /groupidentify go through the same path
-- as events: retried, split, paused, or stopped.
SELECT mock_reset();
SELECT mock_faults('[{"action": "status", "status": 500, "path": "/identify"},
                     {"action": "status", "status": 503, "path": "/groupidentify"}]');
SELECT sent, requests, retries FROM amplitude_sync.amplitude_identify('amplitude_mock',
    $$SELECT 'user-' || lpad(g::text, 5, '0') AS user_id, g AS n FROM generate_series(1, 4) g$$);
SELECT sent, requests, retries FROM amplitude_sync.amplitude_group_identify('amplitude_mock',
    $$SELECT 'company' AS group_type, 'acme-corp' AS group_value, 1 AS n$$);
-- A 400 (the identify APIs name no index): halves until the refused row is alone.
SELECT mock_reset();
SELECT mock_faults('[{"action": "invalid", "field": "user_id", "values": ["user-00003"], "times": -1}]');
SELECT sent, rejected, requests FROM amplitude_sync.amplitude_identify('amplitude_mock',
    $$SELECT 'user-' || lpad(g::text, 5, '0') AS user_id, g AS n FROM generate_series(1, 4) g$$);
SELECT row_number, reason, user_id FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
SELECT count(*) AS profiles FROM mock_users();
-- 413: split; 429: the batch waits, then goes.
SELECT mock_reset();
CREATE SERVER amplitude_slow FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint :'mock_url', throttle_pause_ms '200', retry_backoff_ms '1');
CALL create_test_mapping(current_user, 'amplitude_slow');
SELECT mock_faults('[{"action": "too_large", "max_bytes": 600, "times": -1, "path": "/identify"},
                     {"action": "throttle", "path": "/groupidentify"}]');
SELECT sent, requests, retries FROM amplitude_sync.amplitude_identify('amplitude_slow',
    $$SELECT 'user-' || lpad(g::text, 5, '0') AS user_id, repeat('x', 50) AS pad FROM generate_series(1, 8) g$$);
SELECT r->>'status' AS status, count(*) AS requests FROM mock_requests() r WHERE r->>'path' = '/identify' GROUP BY 1 ORDER BY 1;
SELECT sent, requests, retries FROM amplitude_sync.amplitude_group_identify('amplitude_slow',
    $$SELECT 'company' AS group_type, 'acme-corp' AS group_value, 2 AS n$$);
SELECT r->>'status' AS status, r->>'response' AS response FROM mock_requests() r
WHERE r->>'path' = '/groupidentify' ORDER BY (r->>'seq')::int;
-- An invalid key stops the call; the key is redacted.
CREATE SERVER amplitude_badkey2 FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'mock_url');
CREATE USER MAPPING FOR CURRENT_USER SERVER amplitude_badkey2 OPTIONS (api_key 'wrong-identify-key-SECRET');
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_badkey2', $$SELECT 'user-00001' AS user_id, 1 AS n$$);
\echo :LAST_ERROR_SQLSTATE
DROP SERVER amplitude_slow, amplitude_badkey2 CASCADE;
