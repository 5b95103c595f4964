-- A saved sync's state at scale (issue 14): rows are compared with the
-- state by a fingerprint of their column values, against a compact set
-- loaded once per run (no join with the state); after a run's first commit
-- only the rows still to send are kept; watermark mode for append syncs
-- reads only new rows (and late ones within the lookback) and prunes its
-- insert_id ledger below the watermark minus the lookback.
SELECT url AS mock_url FROM mock_config \gset
SELECT setval('amplitude_sync.syncs_sync_id_seq', 900) AS first_sync_id_after;
SELECT setval('amplitude_sync.sync_runs_run_id_seq', 2000) AS first_run_id_after;
SELECT mock_reset();
\set SHOW_CONTEXT never

-- Users whose source takes over a second to read its first rows: the run
-- commits after its first batch and keeps the rest of the source, minus
-- what is unchanged, across its commits.
CREATE TABLE state_customers AS
SELECT 'state-' || lpad(g::text, 5, '0') AS user_id, 'free' AS plan, g AS score, now() AS seen_at
FROM generate_series(1, 2000) g;
CREATE FUNCTION state_slow(g int) RETURNS int LANGUAGE sql AS
$$ SELECT CASE WHEN g = 50 THEN (SELECT 0 FROM pg_sleep(1.2)) ELSE 0 END $$;
SELECT name FROM amplitude_sync.create_sync('state_users', 'amplitude_mock', 'user',
    $$SELECT user_id, plan, score + state_slow(score) AS score, seen_at FROM state_customers$$);
CALL amplitude_sync.run_sync('state_users') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged not_sent=:not_sent
SELECT count(*) AS profiles FROM mock_users();
-- Unchanged: nothing is sent, and not a single request is made.
SELECT mock_reset();
CALL amplitude_sync.run_sync('state_users') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged not_sent=:not_sent
SELECT count(*) AS requests FROM mock_requests();
-- Changed rows before and after the first commit (row 100 is read before
-- it, rows 1500 and 2000 after it) are sent, and only they; a timestamp
-- that moves by one microsecond is a change.
UPDATE state_customers SET plan = 'pro' WHERE score IN (100, 1500);
UPDATE state_customers SET seen_at = seen_at + interval '1 microsecond' WHERE score = 2000;
CALL amplitude_sync.run_sync('state_users') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged not_sent=:not_sent
SELECT u->>'user_id' AS user_id, u->'user_properties'->>'plan' AS plan FROM mock_users() u ORDER BY 1;
-- The run's counts add up, and the rows' numbers are where they were read.
SELECT rows_read, sent + rejected + not_sent + unchanged AS accounted FROM amplitude_sync.sync_runs
WHERE run_id = :run_id;
-- A NULL that becomes '' is a change too (the payload differs).
SELECT mock_reset();
ALTER TABLE state_customers ADD COLUMN note text;
SELECT name FROM amplitude_sync.alter_sync('state_users',
    source => $$SELECT user_id, plan, note FROM state_customers WHERE score <= 10$$);
CALL amplitude_sync.run_sync('state_users') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
UPDATE state_customers SET note = '' WHERE score = 3;
CALL amplitude_sync.run_sync('state_users') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
-- A large state (over 65,536 records: its count fills the buckets of the
-- bound, then is narrowed to the number counted) is loaded in two passes
-- (count, then fill), so loading never holds more than the compact set:
-- with a million records of users no longer in the source beside the
-- ten, the ten are still found unchanged and only the changed one is sent.
SELECT sync_id AS state_users_id FROM amplitude_sync.syncs WHERE name = 'state_users' \gset
INSERT INTO amplitude_sync.state_entries (sync_id, record_key, fingerprint, sent_at)
SELECT :state_users_id, 'gone-' || g, md5(g::text)::uuid, now() FROM generate_series(1, 1000000) g;
SELECT mock_reset();
UPDATE state_customers SET plan = 'team' WHERE score = 7;
CALL amplitude_sync.run_sync('state_users') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
SELECT u->>'user_id' AS user_id, u->'user_properties'->>'plan' AS plan FROM mock_users() u ORDER BY 1;
-- A preview loads the keys Amplitude knows the same way: a changed user is
-- an update, the others unchanged.
UPDATE state_customers SET plan = 'enterprise' WHERE score = 8;
SELECT record_key, action FROM amplitude_sync.preview_sync('state_users', include_unchanged => true) ORDER BY 1;
-- resync of two records finds their state by its index: it reads two rows
-- of the sync's million, not all of them.
SELECT pg_stat_force_next_flush();
SELECT seq_tup_read AS entries_read_before FROM pg_stat_user_tables
WHERE relid = 'amplitude_sync.state_entries'::regclass \gset
SELECT amplitude_sync.resync('state_users', $$user_id IN ('state-00001', 'state-00002')$$) AS forgotten;
SELECT pg_stat_force_next_flush();
SELECT seq_tup_read - :entries_read_before < 100000 AS read_few FROM pg_stat_user_tables
WHERE relid = 'amplitude_sync.state_entries'::regclass;
SELECT amplitude_sync.drop_sync('state_users');

-- A first run writes state_entries; later runs write what changed into
-- state_changes and leave state_entries alone (rewriting rows on random
-- pages of a large table logs each page whole after a checkpoint), until
-- the changes pass a tenth of the entries and are merged.
CREATE TABLE state_many AS SELECT 'many-' || g AS user_id, 'free' AS plan FROM generate_series(1, 1000) g;
SELECT sync_id AS many_id FROM amplitude_sync.create_sync('state_many', 'amplitude_mock', 'user', 'state_many') \gset
CREATE FUNCTION state_tables(sync int, OUT entries bigint, OUT changes bigint, OUT current bigint) LANGUAGE sql AS $$
    SELECT (SELECT count(*) FROM amplitude_sync.state_entries WHERE sync_id = sync),
           (SELECT count(*) FROM amplitude_sync.state_changes WHERE sync_id = sync),
           (SELECT count(*) FROM amplitude_sync.sync_state WHERE sync_id = sync) $$;
CALL amplitude_sync.run_sync('state_many') \gset
\echo status=:status sent=:sent
SELECT * FROM state_tables(:many_id);
UPDATE state_many SET plan = 'pro' WHERE user_id = 'many-500';
SELECT pg_stat_force_next_flush();
SELECT n_tup_upd + n_tup_ins AS entries_written_before FROM pg_stat_user_tables
WHERE relid = 'amplitude_sync.state_entries'::regclass \gset
CALL amplitude_sync.run_sync('state_many') \gset
\echo status=:status sent=:sent unchanged=:unchanged
SELECT pg_stat_force_next_flush();
SELECT n_tup_upd + n_tup_ins - :entries_written_before AS entries_written FROM pg_stat_user_tables
WHERE relid = 'amplitude_sync.state_entries'::regclass;
SELECT * FROM state_tables(:many_id);
-- sync_state shows the change, not the entry it replaces.
SELECT st.fingerprint = c.fingerprint AS shows_change, st.fingerprint <> e.fingerprint AS entry_differs
FROM amplitude_sync.sync_state st
JOIN amplitude_sync.state_changes c USING (sync_id, key_hash) JOIN amplitude_sync.state_entries e USING (sync_id, key_hash)
WHERE st.sync_id = :many_id AND st.record_key = 'many-500';
-- Back to its first value: Amplitude holds 'pro', so the row is sent (the
-- entry of 'free' it matches is out of date), and Amplitude holds 'free'.
UPDATE state_many SET plan = 'free' WHERE user_id = 'many-500';
CALL amplitude_sync.run_sync('state_many') \gset
\echo status=:status sent=:sent unchanged=:unchanged
SELECT u->'user_properties'->>'plan' AS plan FROM mock_users() u WHERE u->>'user_id' = 'many-500';
-- A key with a row in both tables is forgotten once.
SELECT amplitude_sync.resync('state_many', $$user_id IN ('many-500', 'many-501')$$) AS forgotten;
CALL amplitude_sync.run_sync('state_many') \gset
\echo status=:status sent=:sent unchanged=:unchanged
-- 112 changed rows: over a tenth of the entries, merged after the run.
UPDATE state_many SET plan = 'team' WHERE user_id COLLATE "C" < 'many-2';
CALL amplitude_sync.run_sync('state_many') \gset
\echo status=:status sent=:sent unchanged=:unchanged
SELECT * FROM state_tables(:many_id);
SELECT count(*) AS entries_of_team FROM amplitude_sync.state_entries e JOIN amplitude_sync.sync_state st USING (sync_id, key_hash)
WHERE e.sync_id = :many_id AND e.fingerprint = st.fingerprint AND st.record_key COLLATE "C" < 'many-2';
CALL amplitude_sync.run_sync('state_many') \gset
\echo status=:status sent=:sent unchanged=:unchanged
SELECT count(*) FILTER (WHERE u->'user_properties'->>'plan' = 'team') AS team, count(*) AS users
FROM mock_users() u WHERE u->>'user_id' LIKE 'many-%';
-- Dropping the sync deletes its rows in both tables.
UPDATE state_many SET plan = 'pro' WHERE user_id = 'many-7';
CALL amplitude_sync.run_sync('state_many') \gset
SELECT * FROM state_tables(:many_id);
SELECT amplitude_sync.drop_sync('state_many');
SELECT * FROM state_tables(:many_id);

-- alter_sync forgets rejections: one held in state_changes goes with the
-- entry it replaced (else that entry, 'free', would count again while
-- Amplitude holds 'pro', and the row back at 'free' would never be sent).
UPDATE state_many SET plan = 'free';
SELECT sync_id AS many_id FROM amplitude_sync.create_sync('state_many', 'amplitude_mock', 'user', 'state_many') \gset
CALL amplitude_sync.run_sync('state_many') \gset
UPDATE state_many SET plan = 'pro' WHERE user_id = 'many-7';
CALL amplitude_sync.run_sync('state_many') \gset
\echo status=:status sent=:sent
SELECT mock_faults('[{"action": "invalid", "field": "user_id", "values": ["many-7"], "times": -1}]');
UPDATE state_many SET plan = 'gold' WHERE user_id = 'many-7';
CALL amplitude_sync.run_sync('state_many') \gset
\echo status=:status sent=:sent rejected=:rejected
SELECT mock_call('DELETE', '/_mock/faults') IS NOT NULL AS faults_cleared;
SELECT 'changes' AS state_table, rejected_reason IS NOT NULL AS rejected FROM amplitude_sync.state_changes
WHERE sync_id = :many_id AND record_key = 'many-7'
UNION ALL
SELECT 'entries', rejected_reason IS NOT NULL FROM amplitude_sync.state_entries
WHERE sync_id = :many_id AND record_key = 'many-7';
SELECT name FROM amplitude_sync.alter_sync('state_many', batch_size => 50);
UPDATE state_many SET plan = 'free' WHERE user_id = 'many-7';
CALL amplitude_sync.run_sync('state_many') \gset
\echo status=:status sent=:sent unchanged=:unchanged
SELECT u->'user_properties'->>'plan' AS plan FROM mock_users() u WHERE u->>'user_id' = 'many-7';
SELECT amplitude_sync.drop_sync('state_many');

-- The merge is part of its run, and resync and alter_sync wait for it: a
-- second session holds a row the merge must rewrite while a resync (then an
-- alter_sync) starts; each then sees the merged state, and forgets all of it.
SELECT format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
              current_setting('port'), current_database(), current_user) AS self_conn \gset
SELECT dblink_connect('blocker', :'self_conn'), dblink_connect('runner', :'self_conn'),
       dblink_connect('other', :'self_conn');
SELECT pid AS runner_pid FROM dblink('runner', 'SELECT pg_backend_pid()') AS t(pid int) \gset
SELECT pid AS other_pid FROM dblink('other', 'SELECT pg_backend_pid()') AS t(pid int) \gset
CREATE TABLE state_merging AS SELECT 'merging-' || g AS user_id, 'free' AS plan FROM generate_series(1, 100) g;
SELECT sync_id AS merging_id FROM amplitude_sync.create_sync('state_merging', 'amplitude_mock', 'user', 'state_merging') \gset
CALL amplitude_sync.run_sync('state_merging') \gset
INSERT INTO state_merging SELECT 'merging-' || g, 'free' FROM generate_series(101, 120) g;
UPDATE state_merging SET plan = 'pro' WHERE user_id = 'merging-1';
SELECT dblink_exec('blocker', 'BEGIN');
SELECT k FROM dblink('blocker', $$SELECT record_key FROM amplitude_sync.state_entries
    WHERE record_key = 'merging-1' FOR UPDATE$$) AS t(k text);
SELECT dblink_send_query('runner', $$CALL amplitude_sync.run_sync('state_merging')$$);
SELECT waits_on_lock(:runner_pid) AS merge_waits;
SELECT dblink_send_query('other', $$SELECT amplitude_sync.resync('state_merging')$$);
SELECT waits_on_lock(:other_pid) AS resync_waits;
SELECT dblink_exec('blocker', 'COMMIT');
SELECT status, sent FROM dblink_get_result('runner') AS t(run_id int8, status text, rows_read int8, sent int8,
    rejected int8, not_sent int8, unchanged int8, requests int8, retries int8, elapsed interval);
SELECT forgotten FROM dblink_get_result('other') AS t(forgotten int8);
-- (Each connection's result is read to its end, so it takes the next query.)
SELECT count(*) AS more_results FROM dblink_get_result('runner') AS t(x text)
UNION ALL SELECT count(*) FROM dblink_get_result('other') AS t(x text);
SELECT * FROM state_tables(:merging_id);
CALL amplitude_sync.run_sync('state_merging') \gset
\echo status=:status sent=:sent unchanged=:unchanged
-- The same with alter_sync and a rejection the merge moves.
INSERT INTO state_merging SELECT 'merging-' || g, 'free' FROM generate_series(121, 140) g;
UPDATE state_merging SET plan = 'gold' WHERE user_id = 'merging-1';
SELECT mock_faults('[{"action": "invalid", "field": "user_id", "values": ["merging-1"], "times": -1}]');
SELECT dblink_exec('blocker', 'BEGIN');
SELECT k FROM dblink('blocker', $$SELECT record_key FROM amplitude_sync.state_entries
    WHERE record_key = 'merging-1' FOR UPDATE$$) AS t(k text);
SELECT dblink_send_query('runner', $$CALL amplitude_sync.run_sync('state_merging')$$);
SELECT waits_on_lock(:runner_pid) AS merge_waits;
SELECT dblink_send_query('other', $$SELECT name FROM amplitude_sync.alter_sync('state_merging', batch_size => 50)$$);
SELECT waits_on_lock(:other_pid) AS alter_waits;
SELECT dblink_exec('blocker', 'COMMIT');
SELECT status, sent, rejected FROM dblink_get_result('runner') AS t(run_id int8, status text, rows_read int8, sent int8,
    rejected int8, not_sent int8, unchanged int8, requests int8, retries int8, elapsed interval);
SELECT name FROM dblink_get_result('other') AS t(name text);
SELECT count(*) AS more_results FROM dblink_get_result('runner') AS t(x text)
UNION ALL SELECT count(*) FROM dblink_get_result('other') AS t(x text);
SELECT mock_call('DELETE', '/_mock/faults') IS NOT NULL AS faults_cleared;
SELECT count(*) AS rejections_left FROM amplitude_sync.sync_state WHERE sync_id = :merging_id AND rejected_reason IS NOT NULL;
CALL amplitude_sync.run_sync('state_merging') \gset
\echo status=:status sent=:sent unchanged=:unchanged
SELECT u->'user_properties'->>'plan' AS plan FROM mock_users() u WHERE u->>'user_id' = 'merging-1';
-- A merge that fails (here: a lock it waits for past lock_timeout) leaves
-- the changes where they are and the run succeeded; the next run merges.
UPDATE state_merging SET plan = 'team' WHERE user_id::text LIKE 'merging-1__';
SELECT dblink_exec('blocker', 'BEGIN');
SELECT k FROM dblink('blocker', $$SELECT record_key FROM amplitude_sync.state_entries
    WHERE record_key = 'merging-100' FOR UPDATE$$) AS t(k text);
SET lock_timeout = '200ms';
CALL amplitude_sync.run_sync('state_merging') \gset
RESET lock_timeout;
\echo status=:status sent=:sent
SELECT status FROM amplitude_sync.sync_runs WHERE run_id = :run_id;
SELECT * FROM state_tables(:merging_id);
SELECT dblink_exec('blocker', 'COMMIT');
UPDATE state_merging SET plan = 'team' WHERE user_id = 'merging-2';
CALL amplitude_sync.run_sync('state_merging') \gset
\echo status=:status sent=:sent
SELECT * FROM state_tables(:merging_id);
SELECT dblink_disconnect('blocker'), dblink_disconnect('runner'), dblink_disconnect('other');
SELECT amplitude_sync.drop_sync('state_merging');
DROP TABLE state_merging;
-- A merge of more changes than a statement takes (65,536) goes by ranges of
-- key_hash, in one transaction: every change moves.
CREATE TABLE state_bulk AS SELECT 'bulk-' || g AS user_id, 'free' AS plan FROM generate_series(1, 10) g;
SELECT sync_id AS bulk_id FROM amplitude_sync.create_sync('state_bulk', 'amplitude_mock', 'user', 'state_bulk') \gset
CALL amplitude_sync.run_sync('state_bulk') \gset
INSERT INTO amplitude_sync.state_changes (sync_id, record_key, fingerprint, sent_at)
SELECT :bulk_id, 'bulk-gone-' || g, md5(g::text)::uuid, now() FROM generate_series(1, 140000) g;
UPDATE state_bulk SET plan = 'pro' WHERE user_id = 'bulk-1';
CALL amplitude_sync.run_sync('state_bulk') \gset
\echo status=:status sent=:sent unchanged=:unchanged
SELECT * FROM state_tables(:bulk_id);
SELECT amplitude_sync.drop_sync('state_bulk');
DROP TABLE state_bulk;
DROP FUNCTION state_tables(int);

-- Values stored out of line (TOAST) in the rows kept across the first
-- commit are fetched before it: they reach Amplitude whole (cut to its
-- 1,024 characters, as any long string).
CREATE TABLE state_toasted (user_id text, bio text, n int);
ALTER TABLE state_toasted ALTER COLUMN bio SET STORAGE EXTERNAL;
INSERT INTO state_toasted
SELECT 'toast-' || g, (SELECT string_agg(md5(g::text || '-' || i), '') FROM generate_series(1, 100) i), g
FROM generate_series(1, 300) g;
SELECT pg_relation_size(reltoastrelid) > 300 * 3200 AS out_of_line FROM pg_class WHERE oid = 'state_toasted'::regclass;
SELECT mock_reset();
SELECT name FROM amplitude_sync.create_sync('state_toasted', 'amplitude_mock', 'user',
    $$SELECT user_id, bio, n + state_slow(n) AS n FROM state_toasted$$);
CALL amplitude_sync.run_sync('state_toasted') \gset
\echo status=:status rows_read=:rows_read sent=:sent
SELECT count(*) AS profiles, count(*) FILTER (WHERE u->'user_properties'->>'bio' = left(t.bio, 1024)) AS whole
FROM mock_users() u JOIN state_toasted t ON t.user_id = u->>'user_id';
SELECT amplitude_sync.drop_sync('state_toasted');

-- Watermark mode: the arguments are checked like every other.
CREATE TABLE state_events (id int, user_id text, event_type text, insert_id text, created_at timestamptz, label text);
SELECT name FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'user', 'state_customers', cursor_column => 'seen_at');
SELECT name FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'event', 'state_events', lookback => '1 hour');
SELECT name FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'event', 'state_events', cursor_column => '');
SELECT name FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'event', 'state_events', cursor_column => 'id', lookback => 'a while');
SELECT name FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'event', 'state_events', cursor_column => 'id', lookback => '1 hour');
SELECT name FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'event', 'state_events', cursor_column => 'created_at', lookback => '10');
SELECT name FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'event', 'state_events', cursor_column => 'no_such_column');
SELECT name FROM amplitude_sync.create_sync('bad', 'amplitude_mock', 'event', 'state_events', cursor_column => 'label');

-- A serial id with a lookback of 5 ids: ids 1..100 except 98 and 107.
INSERT INTO state_events SELECT g, 'state-user-' || g, 'Signed Up', 'ev-' || g, timestamptz '2026-01-01' + g * interval '1 minute'
FROM generate_series(1, 100) g WHERE g <> 98;
SELECT name, cursor_column, lookback, watermark, ledger_floor
FROM amplitude_sync.create_sync('state_ids', 'amplitude_mock', 'event',
    'SELECT id, user_id, event_type, insert_id FROM state_events', cursor_column => 'id', lookback => '5');
CALL amplitude_sync.run_sync('state_ids') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
SELECT watermark, ledger_floor FROM amplitude_sync.syncs WHERE name = 'state_ids';
-- Only what was pruned is gone from the ledger: ids 95..100 (98 missing) stay.
SELECT count(*) AS ledger, min(position) AS lowest FROM amplitude_sync.sync_state st
JOIN amplitude_sync.syncs s USING (sync_id) WHERE s.name = 'state_ids';
-- New rows 101..110 (107 comes late): the run reads from 95 only.
INSERT INTO state_events SELECT g, 'state-user-' || g, 'Signed Up', 'ev-' || g, NULL FROM generate_series(101, 110) g WHERE g <> 107;
CALL amplitude_sync.run_sync('state_ids') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
-- A late row within the lookback (107 >= 110 - 5) is read and sent once;
-- a late row below the floor (98) is never read.
INSERT INTO state_events VALUES (107, 'state-user-107', 'Signed Up', 'ev-107'), (98, 'state-user-98', 'Signed Up', 'ev-98');
CALL amplitude_sync.run_sync('state_ids') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
CALL amplitude_sync.run_sync('state_ids') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
-- Amplitude holds each event once; 98 was never sent.
SELECT e->>'insert_id' AS insert_id, count(*) FROM mock_events() e
WHERE e->>'insert_id' IN ('ev-1', 'ev-98', 'ev-100', 'ev-107', 'ev-110') GROUP BY 1 ORDER BY 1;
SELECT count(*) AS events, count(DISTINCT e->>'insert_id') AS distinct_events FROM mock_events() e
WHERE e->>'insert_id' LIKE 'ev-%';
-- The ledger stays bounded: only ids at or above watermark - lookback.
SELECT s.watermark, s.ledger_floor, count(*) AS ledger, min(st.position) AS lowest
FROM amplitude_sync.sync_state st JOIN amplitude_sync.syncs s USING (sync_id) WHERE s.name = 'state_ids'
GROUP BY 1, 2;
-- The cursor cannot change once the ledger was pruned (rows would be resent).
SELECT name FROM amplitude_sync.alter_sync('state_ids', cursor_column => '');
-- The lookback can: a longer one reads no lower than the ledger's floor.
SELECT name, lookback FROM amplitude_sync.alter_sync('state_ids', lookback => '50');
CALL amplitude_sync.run_sync('state_ids') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged

-- A timestamp cursor with a lookback of one hour.
SELECT mock_reset();
DELETE FROM state_events;
INSERT INTO state_events SELECT g, 'state-user-' || g, 'Viewed', 'view-' || g, timestamptz '2026-01-01 00:00+00' + g * interval '10 minutes'
FROM generate_series(1, 30) g;
SELECT name FROM amplitude_sync.create_sync('state_times', 'amplitude_mock', 'event',
    'SELECT user_id, event_type, insert_id, created_at AS time, created_at FROM state_events',
    cursor_column => 'created_at', lookback => '1 hour');
CALL amplitude_sync.run_sync('state_times') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
-- Two new rows and one late row 29 minutes behind the old watermark: 10
-- rows read (the last hour's 7 and the 3 new ones), 3 sent.
INSERT INTO state_events VALUES
    (31, 'state-user-31', 'Viewed', 'view-31', timestamptz '2026-01-01 00:00+00' + 31 * interval '10 minutes'),
    (32, 'state-user-32', 'Viewed', 'view-32', timestamptz '2026-01-01 00:00+00' + 32 * interval '10 minutes'),
    (33, 'state-user-33', 'Viewed', 'view-33', timestamptz '2026-01-01 00:00+00' + 27 * interval '10 minutes' + interval '1 minute');
CALL amplitude_sync.run_sync('state_times') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
SELECT count(*) AS events, count(DISTINCT e->>'insert_id') AS distinct_events FROM mock_events() e;
SELECT count(*) AS ledger FROM amplitude_sync.sync_state st JOIN amplitude_sync.syncs s USING (sync_id)
WHERE s.name = 'state_times';

-- An append sync that turns to watermark mode keeps its ledger: events it
-- sent before are never sent again, whatever their position.
SELECT mock_reset();
SELECT name FROM amplitude_sync.create_sync('state_later', 'amplitude_mock', 'event',
    'SELECT id, user_id, event_type, insert_id FROM state_events');
CALL amplitude_sync.run_sync('state_later') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
SELECT name, cursor_column FROM amplitude_sync.alter_sync('state_later', cursor_column => 'id', lookback => '2');
CALL amplitude_sync.run_sync('state_later') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
INSERT INTO state_events VALUES (40, 'state-user-40', 'Viewed', 'view-40');
CALL amplitude_sync.run_sync('state_later') \gset
\echo status=:status rows_read=:rows_read sent=:sent unchanged=:unchanged
SELECT count(*) AS events, count(DISTINCT e->>'insert_id') AS distinct_events FROM mock_events() e;

SELECT amplitude_sync.drop_sync('state_ids');
SELECT amplitude_sync.drop_sync('state_times');
SELECT amplitude_sync.drop_sync('state_later');
DROP TABLE state_events, state_customers;
DROP FUNCTION state_slow(int);

-- Databases that are not UTF-8: the state keeps a key as the database holds
-- it (the bytes a run hashes the source's key by), so the next run finds
-- each record unchanged. A LATIN1 key that is no UTF-8 ('élise') and one
-- whose bytes read as other UTF-8 ('Ã©mile'); in SQL_ASCII a key that is no
-- UTF-8 is rejected, and the rejection kept.
SELECT mock_reset();
CREATE DATABASE regress_amp_state_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
CREATE DATABASE regress_amp_state_ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
\c regress_amp_state_latin1
SET client_min_messages = warning;
CREATE EXTENSION amplitude_sync;
RESET client_min_messages;
CREATE SERVER amplitude_mock FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'mock_url');
DO $$ BEGIN EXECUTE format('CREATE USER MAPPING FOR CURRENT_USER SERVER amplitude_mock OPTIONS (api_key %L)',
                           btrim(pg_read_file('amplitude_test_key'), E' \n')); END $$;
CREATE TABLE latin_users AS
SELECT convert_from(k, 'LATIN1') AS user_id, 'free' AS plan
FROM (VALUES ('\xe96c697365'::bytea), ('\xc3a96d696c65'::bytea), ('\x706c61696e'::bytea)) t(k);
SELECT name FROM amplitude_sync.create_sync('latin_users', 'amplitude_mock', 'user', 'latin_users');
CALL amplitude_sync.run_sync('latin_users') \gset
CALL amplitude_sync.run_sync('latin_users') \gset
SELECT run_id, status, sent, rejected, unchanged FROM amplitude_sync.sync_runs ORDER BY run_id;
SELECT count(*) AS keys_as_in_source FROM amplitude_sync.sync_state s JOIN latin_users u ON s.record_key = u.user_id
WHERE s.key_hash = amplitude_sync.record_key_hash(u.user_id);
-- A run that writes much of state_entries (here a first run, into a table
-- never analyzed) analyzes it, so the next run's load is planned for the
-- rows there are (a sequential scan), not for the table PostgreSQL last
-- measured (a bitmap of every row's address, 24 MB at 10,000,000 records).
-- A run that writes less than 1,000 rows does not.
CREATE TABLE stats_users AS SELECT 'stats-' || g AS user_id, 'free' AS plan FROM generate_series(1, 2000) g;
SELECT sync_id AS stats_sync FROM amplitude_sync.create_sync('stats_users', 'amplitude_mock', 'user', 'stats_users') \gset
SELECT pg_stat_force_next_flush();
SELECT analyze_count AS analyzed_before FROM pg_stat_user_tables WHERE relid = 'amplitude_sync.state_entries'::regclass;
CALL amplitude_sync.run_sync('stats_users') \gset
\echo status=:status sent=:sent
UPDATE stats_users SET plan = 'pro' WHERE user_id = 'stats-7';
CALL amplitude_sync.run_sync('stats_users') \gset
\echo status=:status sent=:sent
SELECT pg_stat_force_next_flush();
SELECT analyze_count AS analyzed_after FROM pg_stat_user_tables WHERE relid = 'amplitude_sync.state_entries'::regclass;
EXPLAIN (COSTS OFF) SELECT key_hash FROM amplitude_sync.state_entries WHERE sync_id = :stats_sync;
\c regress_amp_state_ascii
SET client_min_messages = warning;
CREATE EXTENSION amplitude_sync;
RESET client_min_messages;
CREATE SERVER amplitude_mock FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'mock_url');
DO $$ BEGIN EXECUTE format('CREATE USER MAPPING FOR CURRENT_USER SERVER amplitude_mock OPTIONS (api_key %L)',
                           btrim(pg_read_file('amplitude_test_key'), E' \n')); END $$;
CREATE TABLE ascii_users AS SELECT v AS user_id, 'free' AS plan FROM (VALUES (E'bad \xff'), ('plain-ascii')) t(v);
SELECT name FROM amplitude_sync.create_sync('ascii_users', 'amplitude_mock', 'user', 'ascii_users');
CALL amplitude_sync.run_sync('ascii_users') \gset
CALL amplitude_sync.run_sync('ascii_users') \gset
SELECT run_id, status, sent, rejected, unchanged FROM amplitude_sync.sync_runs ORDER BY run_id;
SELECT count(*) AS keys_as_in_source FROM amplitude_sync.sync_state s JOIN ascii_users u ON s.record_key = u.user_id
WHERE s.key_hash = amplitude_sync.record_key_hash(u.user_id);
\c contrib_regression
-- Each user reached Amplitude once, in UTF-8 (the SQL_ASCII key that is not
-- UTF-8 never).
SELECT u->>'user_id' AS user_id, count(*) AS sent FROM mock_requests() r, jsonb_array_elements(r->'identification') u
WHERE u->>'user_id' NOT LIKE 'stats-%' GROUP BY 1 ORDER BY 1;
SELECT count(DISTINCT u->>'user_id') AS stats_users, count(*) AS sent FROM mock_requests() r,
       jsonb_array_elements(r->'identification') u
WHERE u->>'user_id' LIKE 'stats-%';
DROP DATABASE regress_amp_state_latin1;
DROP DATABASE regress_amp_state_ascii;
