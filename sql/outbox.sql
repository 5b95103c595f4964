-- The transactional outbox: track() and identify() write in the caller's
-- transaction; flush_outbox() delivers committed entries exactly once, with
-- the key of the role that wrote them, and removes them.
\set SHOW_CONTEXT never
SELECT mock_reset();
-- Runs of earlier files are not this file's.
SELECT coalesce(max(run_id), 0) AS runs_before FROM amplitude_sync.sync_runs \gset
SELECT format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
              current_setting('port'), current_database(), current_user) AS self_conn \gset

-- A rolled-back transaction leaves nothing to send.
BEGIN;
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "Rolled Back", "user_id": "user-00001"}') > 0 AS queued;
SELECT count(*) FROM amplitude_sync.outbox;
ROLLBACK;
SELECT count(*) AS entries FROM amplitude_sync.outbox;
SELECT * FROM amplitude_sync.flush_outbox('amplitude_mock');
SELECT count(*) AS requests FROM mock_requests();

-- Committed entries: events (with and without insert_id and time, time as
-- text or epoch milliseconds), users, devices and groups.
BEGIN;
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "Order Placed", "user_id": "user-00001",
    "insert_id": "order-1", "time": "2024-05-01T10:30:00.250Z", "revenue": 12.50, "items": 3,
    "coupon": "SPRING", "tags": ["a", "b"], "gift": false, "note": null}') > 0 AS queued;
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "Page Viewed", "user_id": 420042, "time": 1714559400000}') > 0 AS queued;
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "Page Viewed", "device_id": "device-00002"}') > 0 AS queued;
-- The same content twice is two events (the derived insert_id differs).
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "Page Viewed", "device_id": "device-00002"}') > 0 AS queued;
SELECT amplitude_sync.identify('amplitude_mock', 'user', '{"user_id": "user-00001", "plan": "pro", "seats": 5,
    "user_properties": {"$setOnce": {"first_plan": "free"}}}') > 0 AS queued;
SELECT amplitude_sync.identify('amplitude_mock', 'device', '{"device_id": "device-00002", "user_id": "user-00002", "theme": "dark"}') > 0 AS queued;
SELECT amplitude_sync.identify('amplitude_mock', 'GROUP', '{"group_type": "company", "group_value": "Acme", "employees": 120}') > 0 AS queued;
COMMIT;
SELECT endpoint, queued_by, user_id, device_id, event_type, group_type, group_value,
       insert_id = 'order-1' OR insert_id ~ '^as-[0-9a-f]{32}$' AS insert_id_ok,
       (payload->>'time') IS NOT NULL AS has_time
FROM amplitude_sync.outbox ORDER BY entry_id;
-- The two identical events got different insert_ids.
SELECT count(DISTINCT insert_id) AS distinct_ids FROM amplitude_sync.outbox WHERE event_type = 'Page Viewed';

SELECT status, rows_read, sent, rejected, not_sent, requests FROM amplitude_sync.flush_outbox('amplitude_mock')
ORDER BY run_id;
SELECT count(*) AS left_in_outbox FROM amplitude_sync.outbox;
SELECT function_name, endpoint, run_by, status, rows_read, sent FROM amplitude_sync.sync_runs
WHERE function_name = 'flush_outbox' AND run_id > :runs_before ORDER BY run_id;
-- What Amplitude holds: the events as written, with their times.
SELECT e->>'event_type' AS event_type, e->>'user_id' AS user_id, e->>'device_id' AS device_id,
       CASE WHEN e ? 'device_id' THEN 'now: ' || (abs((e->>'time')::bigint - extract(epoch FROM now()) * 1000) < 600000)
            ELSE e->>'time' END AS time, e->>'revenue' AS revenue, e->'event_properties' AS props,
       e->>'insert_id' = 'order-1' OR e->>'insert_id' ~ '^as-' AS insert_id_ok
FROM mock_events() e ORDER BY e->>'$seq';
SELECT u->>'user_id' AS user_id, u->'user_properties' AS props FROM mock_users() u ORDER BY 1 NULLS LAST;
SELECT g->>'group_type' AS group_type, g->>'group_value' AS group_value, g->'group_properties' AS props
FROM mock_groups() g;
-- A second flush has nothing to do.
SELECT count(*) AS runs FROM amplitude_sync.flush_outbox('amplitude_mock');
SELECT count(*) AS requests FROM mock_requests();

-- Validation happens when the entry is written, with the one-shot
-- functions' rules: the call fails and nothing is queued.
SELECT amplitude_sync.track('amplitude_mock', '{"user_id": "user-00001"}');
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "Short", "user_id": "abc"}');
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "Placeholder", "user_id": "anonymous"}');
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "Bad Time", "user_id": "user-00001", "time": "yesterday-ish"}');
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "Bad Id", "user_id": "user-00001", "event_id": 1.5}');
SELECT amplitude_sync.track('amplitude_mock', '[1, 2]');
SELECT amplitude_sync.track('amplitude_mock', NULL);
SELECT amplitude_sync.track('no_such_server', '{"event_type": "X", "user_id": "user-00001"}');
SELECT amplitude_sync.identify('amplitude_mock', 'event', '{"user_id": "user-00001"}');
SELECT amplitude_sync.identify('amplitude_mock', 'user', '{"plan": "pro"}');
-- An entry may be delivered twice (see below): operations that are not
-- idempotent are refused.
SELECT amplitude_sync.identify('amplitude_mock', 'user', '{"user_id": "user-00001", "user_properties": {"$add": {"logins": 1}}}');
SELECT amplitude_sync.identify('amplitude_mock', 'group', '{"group_type": "company"}');
SELECT count(*) AS entries FROM amplitude_sync.outbox;

-- Amplitude accepted, then the flushing transaction failed: the entries
-- stay and are sent again; Amplitude drops the events it already has
-- (same insert_ids), so each is stored once.
SELECT mock_reset();
SELECT count(*) FROM (SELECT amplitude_sync.track('amplitude_mock', pg_catalog.jsonb_build_object(
    'event_type', 'Retried', 'user_id', 'user-0000' || g, 'n', g)) FROM generate_series(1, 3) g) q;
BEGIN;
SELECT status, sent FROM amplitude_sync.flush_outbox('amplitude_mock');
ROLLBACK;
SELECT count(*) AS entries FROM amplitude_sync.outbox;
SELECT status, sent FROM amplitude_sync.flush_outbox('amplitude_mock');
SELECT count(*) AS entries FROM amplitude_sync.outbox;
SELECT count(*) AS requests, (SELECT count(*) FROM mock_events()) AS events_stored FROM mock_requests();
SELECT (e->'event_properties'->>'n')::int AS n FROM mock_events() e ORDER BY 1;

-- Records Amplitude refuses go to rejected_records (row_number: the
-- entry_id) and leave the outbox; the others are delivered.
SELECT mock_reset();
SELECT mock_faults('[{"action": "invalid", "field": "user_id", "values": ["user-00002"]}]');
SELECT pg_catalog.min(amplitude_sync.track('amplitude_mock', pg_catalog.jsonb_build_object(
    'event_type', 'Refusable', 'user_id', 'user-0000' || g))) AS first_entry FROM generate_series(1, 3) g \gset
SELECT status, rows_read, sent, rejected, not_sent FROM amplitude_sync.flush_outbox('amplitude_mock');
SELECT row_number - :first_entry AS entry_offset, outcome, field, user_id, event_type, reason IS NOT NULL AS has_reason
FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs WHERE function_name = 'flush_outbox');
SELECT count(*) AS entries FROM amplitude_sync.outbox;
SELECT e->>'user_id' AS user_id FROM mock_events() e ORDER BY 1;

-- An outage: the run fails with a WARNING and its record; the entries stay
-- and the next flush, once Amplitude answers, sends them.
SELECT mock_reset();
ALTER SERVER amplitude_mock OPTIONS (ADD max_attempts '2');
SELECT mock_faults('[{"action": "status", "status": 503, "times": -1}]');
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "During Outage", "user_id": "user-00001"}') > 0 AS queued;
\set VERBOSITY terse
SELECT status, rows_read, sent, not_sent FROM amplitude_sync.flush_outbox('amplitude_mock');
\set VERBOSITY default
SELECT status, not_sent, error LIKE '%entries stay queued' AS says_why FROM amplitude_sync.sync_runs
ORDER BY run_id DESC LIMIT 1;
SELECT count(*) AS entries FROM amplitude_sync.outbox;
SELECT count(*) FROM mock_call('DELETE', '/_mock/faults');
SELECT status, rows_read, sent FROM amplitude_sync.flush_outbox('amplitude_mock');
SELECT e->>'event_type' AS event_type FROM mock_events() e;
ALTER SERVER amplitude_mock OPTIONS (DROP max_attempts);

-- Concurrent flushes do not send an entry twice: a second session's flush
-- holds the entries it read until it commits; this one skips them.
SELECT mock_reset();
SELECT count(*) FROM (SELECT amplitude_sync.track('amplitude_mock', pg_catalog.jsonb_build_object(
    'event_type', 'Concurrent', 'user_id', 'user-0000' || g)) FROM generate_series(1, 5) g) q;
SELECT dblink_connect('flusher', :'self_conn');
SELECT dblink_exec('flusher', 'BEGIN');
SELECT * FROM dblink('flusher', $$SELECT sent FROM amplitude_sync.flush_outbox('amplitude_mock')$$) AS t(sent int8);
SELECT rows_read, sent FROM amplitude_sync.flush_outbox('amplitude_mock');
SELECT dblink_exec('flusher', 'COMMIT');
SELECT dblink_disconnect('flusher');
SELECT count(*) AS entries FROM amplitude_sync.outbox;
SELECT count(*) AS requests, (SELECT count(*) FROM mock_events()) AS events_stored FROM mock_requests();

-- Roles: each entry goes with the key of the role that wrote it, never
-- another's; a role without a mapping is refused at once, and entries
-- whose role lost its mapping wait, reported by a failed run.
SELECT mock_reset();
CREATE FUNCTION mock_two_keys() RETURNS void LANGUAGE sql AS $$
    SELECT count(*) FROM mock_call('POST', '/_mock/config', pg_catalog.json_build_object(
        'api_keys', pg_catalog.json_build_array(test_api_key(), 'regress-outbox-writer-key'))::text) $$;
SELECT mock_two_keys();
CREATE ROLE regress_ob_writer;
CREATE ROLE regress_ob_nogrant;
GRANT EXECUTE ON FUNCTION amplitude_sync.track(name, jsonb), amplitude_sync.identify(name, text, jsonb),
    amplitude_sync.flush_outbox(name) TO regress_ob_writer;
GRANT USAGE ON FOREIGN SERVER amplitude_mock TO regress_ob_writer, regress_ob_nogrant;
SET ROLE regress_ob_writer;
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "By Writer", "user_id": "user-00001"}');
RESET ROLE;
CREATE USER MAPPING FOR regress_ob_writer SERVER amplitude_mock OPTIONS (api_key 'regress-outbox-writer-key');
SET ROLE regress_ob_writer;
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "By Writer", "user_id": "user-00001"}') > 0 AS queued;
-- Each role sees its own entries only.
SELECT event_type, queued_by FROM amplitude_sync.outbox;
RESET ROLE;
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "By Owner", "user_id": "user-00001"}') > 0 AS queued;
-- Without grants: no writing, no reading, no flushing.
SET ROLE regress_ob_nogrant;
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "Sneaky", "user_id": "user-00001"}');
SELECT amplitude_sync.identify('amplitude_mock', 'user', '{"user_id": "user-00001"}');
SELECT * FROM amplitude_sync.flush_outbox('amplitude_mock');
INSERT INTO amplitude_sync.outbox (server, endpoint, queued_by, payload)
VALUES ('amplitude_mock', '/2/httpapi', 'regress_ob_nogrant', '{}');
UPDATE amplitude_sync.outbox SET payload = '{}';
DELETE FROM amplitude_sync.outbox;
SELECT count(*) AS visible FROM amplitude_sync.outbox;
RESET ROLE;
SELECT count(*) AS entries FROM amplitude_sync.outbox;
-- The writer's flush sends its own entry only, with its own key.
SET ROLE regress_ob_writer;
SELECT status, rows_read, sent FROM amplitude_sync.flush_outbox('amplitude_mock');
RESET ROLE;
SELECT r->>'api_key' = 'regress-outbox-writer-key' AS writer_key, r->'events'->0->>'event_type' AS event_type
FROM mock_requests() r;
SELECT event_type, queued_by FROM amplitude_sync.outbox;
-- An entry of a role whose mapping is gone waits: nothing is sent with
-- another role's key, a failed run says why.
SET ROLE regress_ob_writer;
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "Orphaned", "user_id": "user-00001"}') > 0 AS queued;
RESET ROLE;
DROP USER MAPPING FOR regress_ob_writer SERVER amplitude_mock;
SELECT mock_reset();
SELECT mock_two_keys();
\set VERBOSITY terse
SELECT status, rows_read, sent, not_sent FROM amplitude_sync.flush_outbox('amplitude_mock') ORDER BY run_id;
\set VERBOSITY default
SELECT run_by, status, not_sent, error FROM amplitude_sync.sync_runs WHERE status = 'failed' ORDER BY run_id DESC LIMIT 1;
-- The health view shows what waits and why.
SELECT server, queued_by, endpoint, waiting, oldest_age >= '0'::interval AS has_age, last_status,
       last_error LIKE '%no user mapping%' AS says_why
FROM amplitude_sync.outbox_health;
SELECT r->>'api_key' = test_api_key() AS owner_key, r->'events'->0->>'event_type' AS event_type
FROM mock_requests() r;
SELECT event_type, queued_by FROM amplitude_sync.outbox;
CREATE USER MAPPING FOR regress_ob_writer SERVER amplitude_mock OPTIONS (api_key 'regress-outbox-writer-key');
SELECT status, rows_read, sent FROM amplitude_sync.flush_outbox('amplitude_mock');
SELECT count(*) AS entries FROM amplitude_sync.outbox;
-- The writer sees its flush runs (run_by is the entries' role).
SET ROLE regress_ob_writer;
SELECT function_name, status, rows_read, sent FROM amplitude_sync.sync_runs ORDER BY run_id;
RESET ROLE;

DROP USER MAPPING FOR regress_ob_writer SERVER amplitude_mock;
DROP OWNED BY regress_ob_writer, regress_ob_nogrant;
DROP ROLE regress_ob_writer, regress_ob_nogrant;
DROP FUNCTION mock_two_keys();
SELECT mock_reset();
