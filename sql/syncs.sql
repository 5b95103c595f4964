-- Saved syncs: create/alter/drop, incremental runs that send only what
-- changed, preview, resync, append syncs that never send an event twice,
-- the concurrency guard and the ownership rules.
SELECT url AS mock_url FROM mock_config \gset
-- Sync ids (and source view names) in this file's output do not depend on the files before.
SELECT setval('amplitude_sync.syncs_sync_id_seq', 100) AS first_sync_id_after;
SELECT setval('amplitude_sync.sync_runs_run_id_seq', 1000) AS first_run_id_after;
SELECT mock_reset();
-- Errors here are shown without the PL/pgSQL call stack.
\set SHOW_CONTEXT never
-- A second session, for the progress and overlap tests.
SELECT format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
              current_setting('port'), current_database(), current_user) AS runner_conn \gset

CREATE TABLE customers AS
SELECT 'user-' || lpad(g::text, 5, '0') AS user_id, 'free' AS plan, g AS score
FROM generate_series(1, 1000) g;

-- The source is checked at creation: it must run and have the key columns.
SELECT * FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'account', 'customers');
SELECT * FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'user', 'customers', behaviour => 'append');
SELECT * FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'event', 'customers', behaviour => 'mirror');
SELECT * FROM amplitude_sync.create_sync('bad', 'no_such_server', 'user', 'customers');
SELECT * FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'user', 'SELECT plan FROM customers');
SELECT * FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'user', 'SELECT * FROM no_such_table');
SELECT * FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'user', 'customers', operations => '{"plan": "$add"}');
SELECT * FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'event',
    $$SELECT 'Upgraded' AS event_type, user_id FROM customers$$);

-- A table name is read whole.
SELECT name, object, behaviour, source, source_view, search_path
FROM amplitude_sync.create_sync('users', 'amplitude_mock', 'user', 'customers');
-- The source view belongs to the sync's owner, who is the sync's owner.
SELECT s.name, pg_get_userbyid(c.relowner) AS owner, server, object, behaviour
FROM amplitude_sync.syncs s JOIN pg_class c ON c.oid = s.source_view;

-- The first run sends every record; the second sends nothing, with no request.
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status rows_read=:rows_read sent=:sent rejected=:rejected not_sent=:not_sent unchanged=:unchanged requests=:requests
SELECT count(*) AS profiles FROM mock_users();
SELECT mock_reset();
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged requests=:requests
SELECT count(*) AS requests FROM mock_requests();

-- Three rows change: the preview shows exactly them, and the run sends exactly them.
UPDATE customers SET plan = 'pro' WHERE user_id IN ('user-00005', 'user-00500', 'user-00999');
SELECT record_key, action, endpoint, payload, reason FROM amplitude_sync.preview_sync('users') ORDER BY record_key;
SELECT count(*) AS preview_with_unchanged FROM amplitude_sync.preview_sync('users', include_unchanged => true);
CREATE TEMP TABLE previewed AS SELECT record_key, payload::jsonb AS payload FROM amplitude_sync.preview_sync('users');
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged requests=:requests
-- What Amplitude received is exactly what the preview showed.
SELECT count(*) AS received,
       count(*) FILTER (WHERE i IN (SELECT payload FROM previewed)) AS as_previewed
FROM mock_requests() r, jsonb_array_elements(r->'identification') i;
SELECT u->>'user_id' AS user_id, u->'user_properties'->>'plan' AS plan FROM mock_users() u ORDER BY 1;

-- With properties_event, the preview shows the events sent beside the
-- identifications (to /2/httpapi, payload as sent) and counts them.
SELECT name FROM amplitude_sync.create_sync('users_evented', 'amplitude_mock', 'user',
    $$SELECT user_id, plan FROM customers WHERE user_id IN ('user-00001', 'user-00002')$$,
    properties_event => 'Properties Updated');
SELECT record_key, action, endpoint, payload FROM amplitude_sync.preview_sync('users_evented') ORDER BY record_key, endpoint;
CREATE TEMP TABLE previewed_events AS
SELECT payload::jsonb AS payload FROM amplitude_sync.preview_sync('users_evented') WHERE endpoint = '/2/httpapi';
SELECT mock_reset();
CALL amplitude_sync.run_sync('users_evented') \gset
\echo status=:status sent=:sent requests=:requests
SELECT count(*) AS events_received,
       count(*) FILTER (WHERE e IN (SELECT payload FROM previewed_events)) AS as_previewed
FROM mock_requests() r, jsonb_array_elements(r->'events') e WHERE r->>'path' = '/2/httpapi';
SELECT amplitude_sync.drop_sync('users_evented');

-- A mapping change makes every record count as changed.
SELECT mock_reset();
SELECT name, operations FROM amplitude_sync.alter_sync('users', operations => '{"score": "$setOnce"}');
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status sent=:sent unchanged=:unchanged
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status sent=:sent unchanged=:unchanged

-- A record Amplitude refuses is not confirmed: it is remembered as refused
-- while its row is unchanged, and a resync retries it.
SELECT mock_reset();
UPDATE customers SET score = score + 1000 WHERE user_id IN ('user-00007', 'user-00008');
SELECT mock_faults('[{"action": "invalid", "field": "user_id", "values": ["user-00007"], "times": -1}]');
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status sent=:sent rejected=:rejected unchanged=:unchanged
SELECT mock_call('DELETE', '/_mock/faults') IS NOT NULL AS cleared;
SELECT amplitude_sync.resync('users', $$user_id = 'user-00007'$$) AS marked;
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status sent=:sent rejected=:rejected unchanged=:unchanged
SELECT r->'identification'->0->>'user_id' AS resent FROM mock_requests() r ORDER BY (r->>'seq')::int DESC LIMIT 1;

-- resync: the next run resends the records matching a predicate (or all).
SELECT amplitude_sync.resync('users', $$plan = 'pro'$$) AS marked;
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status sent=:sent unchanged=:unchanged
SELECT amplitude_sync.resync('users') AS marked;
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status sent=:sent unchanged=:unchanged

-- Runs are recorded with the sync's id and name.
SELECT r.sync_id = s.sync_id AS by_id, sync_name, function_name, endpoint, status, rows_read, sent, unchanged
FROM amplitude_sync.sync_runs r JOIN amplitude_sync.syncs s ON s.name = 'users'
WHERE r.sync_name = 'users' ORDER BY run_id;

-- Append (events): each event is sent once for the life of the sync, even
-- beyond Amplitude's 7-day deduplication window.
SELECT mock_reset();
CREATE TABLE orders AS
SELECT g AS id, 'user-' || lpad((g % 50)::text, 5, '0') AS user_id, g * 10 AS amount FROM generate_series(1, 300) g;
SELECT name, object, behaviour FROM amplitude_sync.create_sync('orders', 'amplitude_mock', 'event', $$
    SELECT 'Order Completed' AS event_type, user_id, 'order-' || id AS insert_id, amount AS revenue FROM orders
$$);
CALL amplitude_sync.run_sync('orders') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
CALL amplitude_sync.run_sync('orders') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged requests=:requests
INSERT INTO orders SELECT g, 'user-00001', 1 FROM generate_series(301, 310) g;
SELECT action, count(*) FROM amplitude_sync.preview_sync('orders') GROUP BY 1;
CALL amplitude_sync.run_sync('orders') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
SELECT count(*) AS posted, count(DISTINCT e->>'insert_id') AS distinct_events
FROM mock_requests() r, jsonb_array_elements(r->'events') e;
SELECT amplitude_sync.resync('orders');
SELECT amplitude_sync.resync('orders', 'revenue >= 2950') AS marked;
CALL amplitude_sync.run_sync('orders') \gset
\echo status=:status sent=:sent unchanged=:unchanged

-- A run commits as it goes (CALL outside a transaction block): other
-- sessions see its progress, and when it is cancelled what Amplitude
-- confirmed stays remembered; the next run sends only the rest, and
-- Amplitude ends with every event exactly once.
SELECT mock_reset();
CREATE SERVER amplitude_one FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint :'mock_url', max_concurrency '1');
CALL create_test_mapping(current_user, 'amplitude_one');
CREATE TABLE clicks AS SELECT g AS id, 'user-' || lpad((g % 40)::text, 5, '0') AS user_id FROM generate_series(1, 3000) g;
SELECT name FROM amplitude_sync.create_sync('clicks', 'amplitude_one', 'event', $$
    SELECT 'Clicked' AS event_type, user_id, 'click-' || id AS insert_id FROM clicks ORDER BY id
$$, batch_size => 100);
SELECT mock_faults('[{"action": "pass", "delay_ms": 250, "times": -1}]');
SELECT dblink_connect('progress', :'runner_conn');
-- A tiny work_mem: the rest of the source, read at the first commit, goes
-- to disk and is read back from there.
SELECT dblink_exec('progress', $$SET work_mem = '64kB'$$);
SELECT dblink_send_query('progress', $$CALL amplitude_sync.run_sync('clicks')$$);
SELECT pg_sleep(2.2);
SELECT status, rows_read > 0 AS rows_read_so_far, sent > 0 AS sent_so_far, sent < 3000 AS not_done_yet
FROM amplitude_sync.sync_runs WHERE sync_name = 'clicks';
SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'CALL amplitude_sync.run_sync(''clicks'')%';
SELECT wait_until_gone('run_sync(''clicks'')');
SELECT status FROM dblink_get_result('progress', false) AS t(run_id int8, status text, rows_read int8, sent int8,
    rejected int8, not_sent int8, unchanged int8, requests int8, retries int8, elapsed interval);
SELECT dblink_disconnect('progress');
SELECT count(*) AS remembered FROM amplitude_sync.sync_state st JOIN amplitude_sync.syncs s USING (sync_id)
WHERE s.name = 'clicks' \gset
SELECT :remembered > 0 AS some_remembered, :remembered < 3000 AS not_all;
SELECT mock_call('DELETE', '/_mock/faults') IS NOT NULL AS cleared;
CALL amplitude_sync.run_sync('clicks') \gset
SELECT :'status' AS status, :unchanged = :remembered AS skipped_what_was_confirmed,
       :sent + :unchanged AS accounted_for;
-- The cancelled run recorded its own failure, with counts that add up.
SELECT status, error, rows_read = sent + rejected + not_sent + unchanged AS adds_up
FROM amplitude_sync.sync_runs WHERE sync_name = 'clicks' ORDER BY run_id;
SELECT count(*) AS stored, count(DISTINCT e->>'insert_id') AS distinct_events
FROM mock_events() e WHERE e->>'event_type' = 'Clicked';

-- Two runs of one sync never overlap: the second is skipped with a notice.
SELECT amplitude_sync.resync('users') > 0 AS marked;
-- (No request left from before: the wait below is for the first run's.)
SELECT mock_reset();
SELECT mock_faults('[{"action": "pass", "delay_ms": 1500}]');
SELECT dblink_connect('guard', :'runner_conn');
SELECT dblink_send_query('guard', $$CALL amplitude_sync.run_sync('users')$$);
SELECT wait_for_requests(1);
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status
-- The skipped run is recorded too.
SELECT status, error FROM amplitude_sync.sync_runs WHERE sync_name = 'users' ORDER BY run_id DESC LIMIT 1;
SELECT status FROM dblink_get_result('guard') AS t(run_id int8, status text, rows_read int8, sent int8,
    rejected int8, not_sent int8, unchanged int8, requests int8, retries int8, elapsed interval);
SELECT dblink_disconnect('guard');

-- Ownership: a sync belongs to its creator; other roles neither see, run,
-- preview, change nor drop it, nor read its state or rejected rows.
CREATE ROLE regress_alice;
CREATE ROLE regress_bob;
GRANT USAGE ON FOREIGN SERVER amplitude_mock TO regress_alice, regress_bob;
GRANT EXECUTE ON PROCEDURE amplitude_sync.run_sync TO regress_alice, regress_bob;
CALL create_test_mapping('regress_alice', 'amplitude_mock');
CALL create_test_mapping('regress_bob', 'amplitude_mock');
CREATE TABLE alice_users AS SELECT 'alice-' || g AS user_id, 'x' AS secret_plan FROM generate_series(1, 3) g;
ALTER TABLE alice_users OWNER TO regress_alice;
SET ROLE regress_alice;
SELECT name, source_view FROM amplitude_sync.create_sync('alice_sync', 'amplitude_mock', 'user', 'alice_users');
CALL amplitude_sync.run_sync('alice_sync') \gset
\echo status=:status sent=:sent
SELECT count(*) AS own_state FROM amplitude_sync.sync_state;
SET ROLE regress_bob;
SELECT count(*) AS visible_syncs FROM amplitude_sync.syncs;
SELECT count(*) AS visible_state FROM amplitude_sync.sync_state;
SELECT count(*) AS visible_runs FROM amplitude_sync.sync_runs WHERE sync_name = 'alice_sync';
CALL amplitude_sync.run_sync('alice_sync');
SELECT * FROM amplitude_sync.preview_sync('alice_sync');
SELECT * FROM amplitude_sync.alter_sync('alice_sync', nulls => 'unset');
SELECT amplitude_sync.drop_sync('alice_sync');
-- No role but the extension writes the tables (security.sql covers every one).
UPDATE amplitude_sync.syncs SET source = 'SELECT 1' WHERE name = 'alice_sync';
DELETE FROM amplitude_sync.state_entries;
DELETE FROM amplitude_sync.state_changes;
-- Bob's own sync cannot read Alice's table: the source runs with its owner's rights.
SELECT * FROM amplitude_sync.create_sync('bob_sync', 'amplitude_mock', 'user', 'alice_users');
RESET ROLE;
-- A member of the owning role may manage the sync.
GRANT regress_alice TO regress_bob;
SET ROLE regress_bob;
CALL amplitude_sync.run_sync('alice_sync') \gset
\echo status=:status sent=:sent unchanged=:unchanged
RESET ROLE;
REVOKE regress_alice FROM regress_bob;

-- Without pg_cron (it is created later, in cron.sql) scheduling says what to do.
SELECT amplitude_sync.schedule_sync('users', '*/15 * * * *');

-- drop_sync removes the sync and its state; its run history stays.
SELECT amplitude_sync.drop_sync('clicks');
SELECT count(*) AS syncs_left FROM amplitude_sync.syncs WHERE name = 'clicks';
SELECT count(*) AS state_left FROM amplitude_sync.sync_state WHERE sync_id NOT IN (SELECT sync_id FROM amplitude_sync.syncs);
-- The state has no foreign key: a new sync starts with no state, whatever
-- was left under its id (in either of its tables).
SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END AS next_sync_id
FROM amplitude_sync.syncs_sync_id_seq \gset
INSERT INTO amplitude_sync.state_entries (sync_id, record_key, fingerprint, sent_at)
VALUES (:next_sync_id, 'left-over', md5('left-over')::uuid, now());
INSERT INTO amplitude_sync.state_changes (sync_id, record_key, fingerprint, sent_at)
VALUES (:next_sync_id, 'left-over', md5('left-over')::uuid, now());
SELECT sync_id = :next_sync_id AS same_id FROM amplitude_sync.create_sync('fresh', 'amplitude_mock', 'user',
    $$SELECT 'left-over' AS user_id$$);
SELECT count(*) AS inherited_state FROM amplitude_sync.sync_state WHERE sync_id = :next_sync_id;
SELECT amplitude_sync.drop_sync('fresh');
SELECT count(*) > 0 AS history_kept FROM amplitude_sync.sync_runs WHERE sync_name = 'clicks';
DROP SERVER amplitude_one CASCADE;

-- Run history does not grow without bound: runs older than
-- amplitude_sync.history_days (default 90) go, with their rejected rows.
INSERT INTO amplitude_sync.sync_runs (function_name, server_name, endpoint, run_by, started_at, status)
VALUES ('amplitude_send_events', 'amplitude_mock', '/2/httpapi', current_user::regrole, now() - interval '200 days', 'failed');
SET amplitude_sync.history_days = 100;
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status
SELECT count(*) AS older_than_100_days FROM amplitude_sync.sync_runs WHERE started_at < now() - interval '100 days';
RESET amplitude_sync.history_days;

-- From PL/pgSQL: run_sync_into returns the report in one variable (run_sync
-- would need one per INOUT argument), and a failed run raises through it.
UPDATE customers SET plan = 'team' WHERE user_id = 'user-00042';
DO $$
DECLARE
    report amplitude_sync.run_report;
BEGIN
    CALL amplitude_sync.run_sync_into('users', report);
    RAISE NOTICE 'status=% rows_read=% sent=% unchanged=%', report.status, report.rows_read, report.sent,
        report.unchanged;
END $$;
SELECT u->'user_properties'->>'plan' AS plan FROM mock_users() u WHERE u->>'user_id' = 'user-00042';
DO $$
DECLARE
    report amplitude_sync.run_report;
BEGIN
    CALL amplitude_sync.run_sync_into('no_such_sync', report);
END $$;
BEGIN;
DO $$
DECLARE
    report amplitude_sync.run_report;
BEGIN
    CALL amplitude_sync.run_sync_into('users', report);
END $$;
ROLLBACK;

-- A table source keeps the columns it had when the sync was made: a column
-- added later (PII, say) is not sent until the sync is told to; runs and
-- previews name it.
ALTER TABLE customers ADD COLUMN ssn text DEFAULT '078-05-1120';
UPDATE customers SET plan = 'team' WHERE user_id = 'user-00043';
SELECT mock_reset();
SELECT record_key, action FROM amplitude_sync.preview_sync('users');
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status sent=:sent
SELECT count(*) FILTER (WHERE u->'user_properties' ? 'ssn') AS profiles_with_ssn FROM mock_users() u;
SELECT name FROM amplitude_sync.alter_sync('users', source => 'customers');
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status sent=:sent
SELECT count(*) FILTER (WHERE u->'user_properties' ? 'ssn') AS profiles_with_ssn FROM mock_users() u;
