-- A saved sync never silently diverges from Amplitude: runs refuse
-- transaction blocks, every run that fails is recorded and raises, answers
-- Amplitude gives to the whole request stop the run at once, confirmed
-- events are never resent, and history follows a sync by id.
SELECT url AS mock_url FROM mock_config \gset
SELECT mock_reset();
\set SHOW_CONTEXT never
SELECT setval('amplitude_sync.syncs_sync_id_seq', 300) AS first_sync_id_after;
SELECT setval('amplitude_sync.sync_runs_run_id_seq', 3000) AS first_run_id_after;
CREATE TABLE f_users AS SELECT 'fuser-' || lpad(g::text, 4, '0') AS user_id, 'free' AS plan FROM generate_series(1, 1000) g;
SELECT name FROM amplitude_sync.create_sync('f_users', 'amplitude_mock', 'user', 'f_users');

-- Not inside a transaction block: a rollback would make the sync forget
-- what Amplitude holds.
BEGIN;
CALL amplitude_sync.run_sync('f_users');
ROLLBACK;
SELECT count(*) AS requests FROM mock_requests();

-- A wrong API key on /identify: Amplitude answers the plain text
-- invalid_api_key; the run stops at its first request, is recorded and raises.
CREATE SERVER amplitude_wrong_key FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'mock_url');
CREATE USER MAPPING FOR CURRENT_USER SERVER amplitude_wrong_key OPTIONS (api_key 'not-the-key');
SELECT name FROM amplitude_sync.alter_sync('f_users', server => 'amplitude_wrong_key');
CALL amplitude_sync.run_sync('f_users');
SELECT count(*) AS requests FROM mock_requests() r;
SELECT status, rows_read, sent, rejected, not_sent, error FROM amplitude_sync.sync_runs
WHERE sync_name = 'f_users' ORDER BY run_id DESC LIMIT 1;
-- Each row it read and did not send is listed (the segment it stopped in is
-- kept, not rolled back with the error).
SELECT not_sent > 0 AS some_not_sent, not_sent = (SELECT count(*) FROM amplitude_sync.rejected_records rr
                   WHERE rr.run_id = r.run_id AND rr.outcome = 'not_sent') AS each_listed
FROM amplitude_sync.sync_runs r WHERE sync_name = 'f_users' ORDER BY run_id DESC LIMIT 1;
SELECT count(*) AS state FROM amplitude_sync.sync_state st JOIN amplitude_sync.syncs s USING (sync_id) WHERE s.name = 'f_users';

-- Amplitude failing past the retry budget: the run raises (pg_cron sees a
-- failed job), after recording what was and was not sent; listeners on
-- amplitude_sync_failures hear of it.
SELECT mock_reset();
SELECT format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
              current_setting('port'), current_database(), current_user) AS listener_conn \gset
SELECT dblink_connect('listener', :'listener_conn');
SELECT dblink_exec('listener', 'LISTEN amplitude_sync_failures');
CREATE SERVER amplitude_flaky FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint :'mock_url', max_attempts '2', retry_backoff_ms '1');
CALL create_test_mapping(current_user, 'amplitude_flaky');
SELECT name FROM amplitude_sync.alter_sync('f_users', server => 'amplitude_flaky');
SELECT mock_faults('[{"action": "status", "status": 503, "times": -1}]');
CALL amplitude_sync.run_sync('f_users');
SELECT status, rows_read, sent, rejected, not_sent, rows_read = sent + rejected + not_sent + unchanged AS adds_up,
       error LIKE '%503%' AS says_why
FROM amplitude_sync.sync_runs WHERE sync_name = 'f_users' ORDER BY run_id DESC LIMIT 1;
-- The same with small batches, so the run gives up while rows it has read
-- wait to be queued: they are counted as not sent too (in the error's
-- detail, and in a one-shot call's report). The source (99 rows) is read in one fetch.
SELECT name FROM amplitude_sync.create_sync('f_small', 'amplitude_flaky', 'user',
    $$SELECT user_id, plan FROM f_users WHERE user_id < 'fuser-0100'$$, batch_size => 10);
CALL amplitude_sync.run_sync('f_small');
SELECT status, rows_read, rows_read = sent + rejected + not_sent + unchanged AS adds_up,
       not_sent = (SELECT count(*) FROM amplitude_sync.rejected_records rr
                   WHERE rr.run_id = r.run_id AND rr.outcome = 'not_sent') AS each_listed
FROM amplitude_sync.sync_runs r WHERE sync_name = 'f_small' ORDER BY run_id DESC LIMIT 1;
SELECT run_id AS oneshot_run, status, rows_read, rows_read = sent + rejected + not_sent AS adds_up
FROM amplitude_sync.amplitude_identify('amplitude_flaky', 'SELECT user_id, plan FROM f_users', batch_size => 10) \gset
\echo status=:status rows_read=:rows_read adds_up=:adds_up
SELECT not_sent = (SELECT count(*) FROM amplitude_sync.rejected_records rr
                   WHERE rr.run_id = r.run_id AND rr.outcome = 'not_sent') AS each_listed
FROM amplitude_sync.sync_runs r WHERE run_id = :oneshot_run;
SELECT mock_call('DELETE', '/_mock/faults') IS NOT NULL AS cleared;
SELECT notify_name, extra::jsonb - 'run_id' AS payload FROM dblink_get_notify('listener');
SELECT dblink_disconnect('listener');

-- A missing user mapping, and an error in the source: recorded, raised.
SELECT name FROM amplitude_sync.alter_sync('f_users', server => 'amplitude_mock');
CREATE ROLE regress_fowner;
GRANT USAGE ON FOREIGN SERVER amplitude_mock TO regress_fowner;
CALL create_test_mapping('regress_fowner', 'amplitude_mock');
GRANT SELECT ON f_users TO regress_fowner;
SET ROLE regress_fowner;
SELECT name FROM amplitude_sync.create_sync('f_owned', 'amplitude_mock', 'user',
    $$SELECT user_id, 100 / (500 - substr(user_id, 7)::int) AS score FROM public.f_users ORDER BY user_id$$);
RESET ROLE;
CALL amplitude_sync.run_sync('f_owned');
DROP USER MAPPING FOR regress_fowner SERVER amplitude_mock;
CALL amplitude_sync.run_sync('f_owned');
SELECT status, error, rows_read = sent + rejected + not_sent + unchanged AS adds_up
FROM amplitude_sync.sync_runs WHERE sync_name = 'f_owned' ORDER BY run_id;

-- Health at a glance, for the syncs one may see.
SELECT sync, owner, object, server, last_status, consecutive_failures, last_success_at IS NULL AS never_succeeded,
       sent_24h, rejected_24h, last_error FROM amplitude_sync.sync_health WHERE sync LIKE 'f\_%' ORDER BY sync;
SET ROLE regress_fowner;
SELECT sync, last_status, consecutive_failures FROM amplitude_sync.sync_health;
RESET ROLE;

-- A sync follows its server through a rename; dropping the server needs
-- CASCADE, which drops the sync.
CREATE SERVER amplitude_renamed FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'mock_url');
CALL create_test_mapping(current_user, 'amplitude_renamed');
SELECT name FROM amplitude_sync.create_sync('f_on_renamed', 'amplitude_mock', 'user', 'f_users');
SELECT name FROM amplitude_sync.alter_sync('f_on_renamed', server => 'amplitude_renamed');
ALTER SERVER amplitude_renamed RENAME TO amplitude_renamed2;
CALL amplitude_sync.run_sync('f_on_renamed') \gset
\echo status=:status sent=:sent
SELECT sync, server FROM amplitude_sync.sync_health WHERE sync = 'f_on_renamed';
DROP SERVER amplitude_renamed2;
DROP SERVER amplitude_renamed2 CASCADE;
SELECT count(*) AS left FROM amplitude_sync.syncs WHERE name = 'f_on_renamed';

-- The same sync runs fine once Amplitude takes requests again.
CALL amplitude_sync.run_sync('f_users') \gset
\echo status=:status sent=:sent unchanged=:unchanged

-- A run that rejected rows says so. A row rejected for its content (here:
-- an id too short; below: refused by Amplitude) is remembered, not re-sent
-- nor re-logged while it is unchanged; previewed as a reject with its
-- reason; tried again once it changes, or after resync.
INSERT INTO f_users VALUES ('f1', 'free');
CALL amplitude_sync.run_sync('f_users') \gset
\echo status=:status sent=:sent rejected=:rejected unchanged=:unchanged
CALL amplitude_sync.run_sync('f_users') \gset
\echo status=:status sent=:sent rejected=:rejected unchanged=:unchanged
SELECT record_key, action, reason FROM amplitude_sync.preview_sync('f_users');
UPDATE f_users SET plan = 'pro' WHERE user_id = 'f1';
CALL amplitude_sync.run_sync('f_users') \gset
\echo status=:status sent=:sent rejected=:rejected unchanged=:unchanged
SELECT mock_reset();
UPDATE f_users SET plan = 'gold' WHERE user_id = 'fuser-0042';
SELECT mock_faults('[{"action": "invalid", "field": "user_id", "values": ["fuser-0042"], "times": -1}]');
CALL amplitude_sync.run_sync('f_users') \gset
\echo status=:status sent=:sent rejected=:rejected unchanged=:unchanged
SELECT count(*) AS requests FROM mock_requests();
CALL amplitude_sync.run_sync('f_users') \gset
\echo status=:status sent=:sent rejected=:rejected unchanged=:unchanged
SELECT count(*) AS requests FROM mock_requests();
SELECT record_key, action, reason FROM amplitude_sync.preview_sync('f_users') ORDER BY 1;
SELECT mock_call('DELETE', '/_mock/faults') IS NOT NULL AS cleared;
SELECT amplitude_sync.resync('f_users', $$user_id = 'fuser-0042'$$) AS marked;
CALL amplitude_sync.run_sync('f_users') \gset
\echo status=:status sent=:sent rejected=:rejected unchanged=:unchanged
DELETE FROM f_users WHERE user_id = 'f1';

-- An append sync sends each event once for its life: a confirmed event
-- whose row changes is neither previewed as an update nor sent again.
SELECT mock_reset();
CREATE TABLE f_orders AS SELECT g AS id, 'fuser-' || lpad(g::text, 4, '0') AS user_id, g AS amount FROM generate_series(1, 10) g;
SELECT name FROM amplitude_sync.create_sync('f_orders', 'amplitude_mock', 'event',
    $$SELECT 'Ordered' AS event_type, user_id, 'order-' || id AS insert_id, amount AS revenue FROM f_orders$$);
CALL amplitude_sync.run_sync('f_orders') \gset
\echo status=:status sent=:sent
UPDATE f_orders SET amount = amount + 1 WHERE id <= 3;
SELECT action, count(*) FROM amplitude_sync.preview_sync('f_orders', include_unchanged => true) GROUP BY 1;
CALL amplitude_sync.run_sync('f_orders') \gset
\echo status=:status sent=:sent unchanged=:unchanged
SELECT count(*) AS stored_events FROM mock_events();

-- A run longer than a second reads the rest of its source at its first
-- commit; with a small work_mem that goes to disk, and rows read back from
-- there are freed by the run, not per row (a crash before the fix).
CREATE TABLE f_wide AS SELECT 'wide-' || lpad(g::text, 5, '0') AS user_id, repeat(md5(g::text), 128) AS blob
FROM generate_series(1, 1500) g;
SELECT name FROM amplitude_sync.create_sync('f_wide', 'amplitude_mock', 'user', 'f_wide', batch_size => 50);
SELECT mock_faults('[{"action": "pass", "delay_ms": 250, "times": -1}]');
SET work_mem = '64kB';
CALL amplitude_sync.run_sync('f_wide') \gset
RESET work_mem;
\echo status=:status rows_read=:rows_read sent=:sent
SELECT mock_call('DELETE', '/_mock/faults') IS NOT NULL AS cleared;

-- History follows the sync by id through a rename; dropping a sync closes
-- the runs it left marked running.
SELECT sync_id AS orders_id FROM amplitude_sync.syncs WHERE name = 'f_orders' \gset
SELECT name FROM amplitude_sync.alter_sync('f_orders', new_name => 'f_orders_renamed');
CALL amplitude_sync.run_sync('f_orders_renamed') \gset
SELECT sync_name, status FROM amplitude_sync.sync_runs WHERE sync_id = :orders_id ORDER BY run_id;
INSERT INTO amplitude_sync.sync_runs (sync_id, sync_name, function_name, server_name, endpoint, run_by,
                                      started_at, status, rows_read, sent)
VALUES (:orders_id, 'f_orders_renamed', 'run_sync', 'amplitude_mock', '/2/httpapi', current_user::regrole,
        now(), 'running', 10, 4);
SELECT amplitude_sync.drop_sync('f_orders_renamed');
SELECT status, not_sent, error LIKE 'interrupted%' AS interrupted FROM amplitude_sync.sync_runs
WHERE sync_id = :orders_id ORDER BY run_id DESC LIMIT 1;

-- Arguments are checked in one place, for one-shot calls and syncs alike.
SELECT * FROM amplitude_sync.create_sync('f_bad', 'amplitude_mock', 'user', 'f_users', min_id_length => -1);
SELECT * FROM amplitude_sync.create_sync('f_bad', 'amplitude_mock', 'user', 'f_users', batch_size => -5);
SELECT * FROM amplitude_sync.create_sync('f_bad', 'amplitude_mock', 'user', 'f_users', batch_size => 5000);
SELECT * FROM amplitude_sync.alter_sync('f_users', nulls => 'drop');
SELECT * FROM amplitude_sync.create_sync('f_users', 'amplitude_mock', 'user', 'f_users');
SELECT name, object, api FROM amplitude_sync.create_sync('f_case', 'amplitude_mock', 'USER', 'f_users', api => 'HttpApi');
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', 'SELECT 1', batch_size => 0);

-- Integer times that are not epoch milliseconds are rejected with the unit
-- they look like.
SELECT status, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Timed' AS event_type, 'fuser-0001' AS user_id, t AS time
    FROM (VALUES (1714566600::int8), (1714566600000::int8), (1714566600000000::int8)) v(t)$$);
SELECT row_number, field, reason FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs) ORDER BY row_number;

SELECT amplitude_sync.drop_sync(name) FROM amplitude_sync.syncs WHERE name LIKE 'f\_%';
DROP SERVER amplitude_wrong_key CASCADE;
DROP SERVER amplitude_flaky CASCADE;
DROP OWNED BY regress_fowner;
DROP ROLE regress_fowner;
