-- Table capture: row changes become outbox entries in the writing
-- transaction, through the field mapper; captures are owned and protected
-- like syncs.
\set SHOW_CONTEXT never
SELECT mock_reset();
-- Capture ids (and mapping view names) in this file's output do not depend on the files before.
SELECT setval('amplitude_sync.captures_capture_id_seq', 100) AS first_capture_id_after;
SELECT format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
              current_setting('port'), current_database(), current_user) AS self_conn \gset

CREATE TABLE cap_orders (id serial PRIMARY KEY, customer text NOT NULL, amount numeric NOT NULL,
                         status text NOT NULL DEFAULT 'placed');
CREATE TABLE cap_customers (id text PRIMARY KEY, plan text, seats int);
SELECT amplitude_sync.capture('cap_orders', 'amplitude_mock', 'event', $$
    'Order ' || initcap(new.status) AS event_type, new.customer AS user_id,
    'order-' || new.id || '-' || new.status AS insert_id, new.amount AS revenue, new.id AS order_id$$) > 0 AS captured;
SELECT amplitude_sync.capture('cap_customers', 'amplitude_mock', 'user',
                              'new.id AS user_id, new.plan, new.seats', on_update => true) > 0 AS captured;
SELECT source, server, object, on_insert, on_update, on_delete, pg_catalog.pg_get_userbyid(c.relowner) AS owner,
       mapping_view::text ~ '^amplitude_sync\.capture_[0-9]+_mapping$' AS view_named
FROM amplitude_sync.captures cap JOIN pg_class c ON c.oid = cap.mapping_view ORDER BY capture_id;
SELECT tgname ~ '^amplitude_sync_capture_[0-9]+_(insert|update)$' AS named, tgrelid::regclass
FROM pg_trigger WHERE tgname LIKE 'amplitude_sync_capture_%' ORDER BY tgrelid::regclass::text, tgname;

-- A rolled-back write queues nothing.
BEGIN;
INSERT INTO cap_orders (customer, amount) VALUES ('user-00001', 10);
SELECT count(*) AS queued FROM amplitude_sync.outbox;
ROLLBACK;
SELECT count(*) AS queued FROM amplitude_sync.outbox;

-- Inserts, a real update, an update that changes nothing (not queued).
INSERT INTO cap_orders (customer, amount) VALUES ('user-00001', 10), ('user-00002', 25.50);
UPDATE cap_orders SET status = 'shipped' WHERE customer = 'user-00001';
UPDATE cap_orders SET status = status;
INSERT INTO cap_customers VALUES ('user-00001', 'free', 1);
UPDATE cap_customers SET plan = 'pro', seats = 3;
SELECT endpoint, user_id, event_type, insert_id ~ '^order-[0-9]+-(placed|shipped)$' AS insert_id_ok,
       payload->'user_properties' AS user_properties
FROM amplitude_sync.outbox ORDER BY entry_id;
SELECT status, rows_read, sent FROM amplitude_sync.flush_outbox('amplitude_mock') ORDER BY run_id;
SELECT e->>'event_type' AS event_type, e->>'user_id' AS user_id, e->>'revenue' AS revenue,
       e->'event_properties' ? 'order_id' AS has_order_id
FROM mock_events() e ORDER BY (e->>'$seq')::int;
SELECT u->>'user_id' AS user_id, u->'user_properties' AS props FROM mock_users() u ORDER BY 1;

-- A mapping the field mapper refuses, or that is not one SELECT list,
-- is an error at once; nothing is left behind.
SELECT amplitude_sync.capture('cap_orders', 'amplitude_mock', 'event', 'new.customer AS user_id');
SELECT amplitude_sync.capture('cap_orders', 'amplitude_mock', 'event',
                              $$'X' AS event_type, new.customer AS user_id FROM cap_orders new; DROP TABLE cap_customers; SELECT 1 AS one$$);
SELECT amplitude_sync.capture('cap_customers', 'amplitude_mock', 'user', 'new.id AS user_id', on_delete => true);
SELECT amplitude_sync.capture('cap_customers', 'amplitude_mock', 'account');
CREATE VIEW cap_view AS SELECT * FROM cap_orders;
SELECT amplitude_sync.capture('cap_view', 'amplitude_mock', 'event');
DROP VIEW cap_view;
SELECT count(*) AS captures FROM amplitude_sync.captures;
SELECT count(*) AS mapping_views FROM pg_class WHERE relname LIKE 'capture%mapping'
  AND relnamespace = 'amplitude_sync'::regnamespace;

-- A trigger writing while flush_outbox runs: a second session inserts 300
-- rows, committing each, while this one flushes; every row reaches
-- Amplitude exactly once.
SELECT mock_reset();
SELECT coalesce(max(run_id), 0) AS runs_before FROM amplitude_sync.sync_runs \gset
CREATE PROCEDURE cap_write_orders(n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        INSERT INTO cap_orders (customer, amount) VALUES ('bulk-' || lpad(i::text, 5, '0'), i);
        COMMIT;
    END LOOP;
END $$;
SELECT dblink_connect('writer', :'self_conn');
SELECT dblink_send_query('writer', 'CALL cap_write_orders(300)');
SELECT count(*) >= 0 AS flushed FROM amplitude_sync.flush_outbox('amplitude_mock');
SELECT pg_sleep(0.05);
SELECT count(*) >= 0 AS flushed FROM amplitude_sync.flush_outbox('amplitude_mock');
SELECT pg_sleep(0.05);
SELECT count(*) >= 0 AS flushed FROM amplitude_sync.flush_outbox('amplitude_mock');
SELECT * FROM dblink_get_result('writer') AS t(result text);
SELECT dblink_disconnect('writer');
SELECT count(*) >= 0 AS flushed FROM amplitude_sync.flush_outbox('amplitude_mock');
SELECT count(*) AS left_in_outbox FROM amplitude_sync.outbox;
SELECT count(*) AS events, count(DISTINCT e->>'insert_id') AS distinct_ids,
       count(DISTINCT e->>'user_id') AS users
FROM mock_events() e WHERE e->>'user_id' LIKE 'bulk-%';
SELECT (s->>'duplicates_dropped')::int AS duplicates_dropped FROM mock_call('GET', '/_mock/stats') s;
SELECT sum(rows_read) AS read, sum(sent) AS sent FROM amplitude_sync.sync_runs
WHERE function_name = 'flush_outbox' AND run_id > :runs_before;

-- Owned and protected like syncs: visible to members of the owner only;
-- DROP ROLE is refused while the role owns captures, DROP OWNED removes
-- them with their triggers; dropping the table needs CASCADE.
CREATE ROLE regress_cap_owner;
CREATE ROLE regress_cap_other;
GRANT EXECUTE ON FUNCTION amplitude_sync.capture(regclass, name, text, text, bool, bool, bool),
    amplitude_sync.uncapture(regclass, name, text) TO regress_cap_owner, regress_cap_other;
GRANT USAGE ON FOREIGN SERVER amplitude_mock TO regress_cap_owner, regress_cap_other;
CREATE USER MAPPING FOR regress_cap_owner SERVER amplitude_mock OPTIONS (api_key 'regress-capture-owner-key');
GRANT CREATE ON SCHEMA public TO regress_cap_owner;
SET ROLE regress_cap_owner;
CREATE TABLE cap_signups (email text, plan text);
SELECT amplitude_sync.capture('cap_signups', 'amplitude_mock', 'event',
                              $$'Signed Up' AS event_type, new.email AS user_id, new.plan$$) > 0 AS captured;
SELECT source, object FROM amplitude_sync.captures;
RESET ROLE;
SET ROLE regress_cap_other;
SELECT count(*) AS visible FROM amplitude_sync.captures;
-- Not its table: no capture; not its capture: uncapture does nothing.
SELECT amplitude_sync.capture('cap_signups', 'amplitude_mock', 'event', $$'X' AS event_type, new.email AS user_id$$);
SELECT amplitude_sync.uncapture('cap_signups');
-- Writing the table queues the entry under the capture's owner.
RESET ROLE;
GRANT INSERT ON cap_signups TO regress_cap_other;
SET ROLE regress_cap_other;
INSERT INTO cap_signups VALUES ('someone@example.com', 'trial');
UPDATE amplitude_sync.captures SET server = 'elsewhere';
RESET ROLE;
SELECT queued_by, event_type, user_id FROM amplitude_sync.outbox;
DELETE FROM amplitude_sync.outbox;
DROP ROLE regress_cap_owner;
DROP TABLE cap_signups;
DROP OWNED BY regress_cap_owner;
SELECT count(*) AS captures_left, (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'amplitude_sync_capture_%'
                                   AND tgrelid = 'cap_orders'::regclass) AS order_triggers
FROM amplitude_sync.captures;
DROP OWNED BY regress_cap_other;
DROP ROLE regress_cap_owner, regress_cap_other;

-- uncapture removes the triggers and the view; DROP TABLE ... CASCADE too.
SELECT amplitude_sync.uncapture('cap_customers');
INSERT INTO cap_customers VALUES ('user-00009', 'free', 1);
SELECT count(*) AS queued FROM amplitude_sync.outbox;
DROP TABLE cap_orders;
DROP TABLE cap_orders CASCADE;
SELECT count(*) AS captures, (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'amplitude_sync_capture_%') AS triggers,
       (SELECT count(*) FROM pg_class WHERE relname LIKE 'capture%mapping'
          AND relnamespace = 'amplitude_sync'::regnamespace) AS views
FROM amplitude_sync.captures;
DROP TABLE cap_customers;
DROP PROCEDURE cap_write_orders(int);
SELECT mock_reset();
