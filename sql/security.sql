-- A hostile role, with only the grants the README gives a loader, turns its
-- search_path into traps and calls every entry point: no trap may ever run
-- as anyone else. Then: a sync's source runs as its owner whoever runs it;
-- no role can block another's sync; no role writes the extension's tables;
-- DROP ROLE of a sync owner; data-modifying sources; keys that could escape
-- redaction.
SELECT url AS mock_url FROM mock_config \gset
-- Sync ids (and source view names) in this file's output do not depend on the files before.
SELECT setval('amplitude_sync.syncs_sync_id_seq', 200) AS first_sync_id_after;
SELECT mock_reset();
\set SHOW_CONTEXT never
SELECT format('host=%s port=%s dbname=%s', current_setting('unix_socket_directories'),
              current_setting('port'), current_database()) AS conn_base \gset

CREATE ROLE regress_hostile;
CREATE SCHEMA hostile AUTHORIZATION regress_hostile;
GRANT USAGE ON FOREIGN SERVER amplitude_mock TO regress_hostile;
CALL create_test_mapping('regress_hostile', 'amplitude_mock');
GRANT EXECUTE ON FUNCTION amplitude_sync.amplitude_send_events, amplitude_sync.amplitude_identify,
    amplitude_sync.amplitude_group_identify, amplitude_sync.send_test_event TO regress_hostile;
GRANT EXECUTE ON PROCEDURE amplitude_sync.run_sync, amplitude_sync.run_sync_into TO regress_hostile;
GRANT EXECUTE ON FUNCTION amplitude_sync.track, amplitude_sync.identify, amplitude_sync.flush_outbox,
    amplitude_sync.capture, amplitude_sync.uncapture TO regress_hostile;
GRANT CREATE ON SCHEMA public TO regress_hostile;

SET ROLE regress_hostile;
-- Every trap reports the role it runs as when that is not its creator (the
-- exploit: ALTER ROLE ... SUPERUSER would follow), and says it fired when
-- hostile.loud is on (to show the traps do catch unqualified SQL).
CREATE FUNCTION hostile.trap(name text) RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF current_user OPERATOR(pg_catalog.<>) 'regress_hostile' THEN
        RAISE WARNING 'TRAP % RAN AS %', name, current_user;
    ELSIF current_setting('hostile.loud', true) OPERATOR(pg_catalog.=) 'on' THEN
        RAISE NOTICE 'trap % fired', name;
    END IF;
END $$;
DO $$
DECLARE
    op record;
BEGIN
    -- Shadows of the operators the extension uses, for the types it uses.
    FOR op IN SELECT * FROM (VALUES
        ('=', 'int8', 'int8', 'bool'), ('=', 'int4', 'int4', 'bool'), ('=', 'text', 'text', 'bool'),
        ('=', 'oid', 'oid', 'bool'), ('=', 'name', 'name', 'bool'), ('<>', 'text', 'text', 'bool'),
        ('<>', 'int8', 'int8', 'bool'), ('<', 'timestamptz', 'timestamptz', 'bool'),
        ('<', 'text', 'text', 'bool'), ('>', 'int8', 'int8', 'bool'), ('-', 'int8', 'int8', 'int8'),
        ('-', 'timestamptz', 'interval', 'timestamptz'), ('||', 'text', 'text', 'text'),
        ('~', 'text', 'text', 'bool')) AS o(name, l, r, result)
    LOOP
        EXECUTE format($f$CREATE FUNCTION hostile.%I(a %s, b %s) RETURNS %s LANGUAGE plpgsql
                          SET search_path = pg_catalog AS $b$
                          BEGIN PERFORM hostile.trap(%L); RETURN a OPERATOR(pg_catalog.%s) b; END $b$ $f$,
                       'op_' || md5(op.name || op.l || op.r), op.l, op.r, op.result,
                       op.name || '(' || op.l || ',' || op.r || ')', op.name);
        EXECUTE format('CREATE OPERATOR hostile.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = hostile.%I)',
                       op.name, op.l, op.r, 'op_' || md5(op.name || op.l || op.r));
    END LOOP;
END $$;
-- Shadows of the functions it calls.
CREATE FUNCTION hostile.now() RETURNS timestamptz LANGUAGE plpgsql SET search_path = pg_catalog
    AS $$ BEGIN PERFORM hostile.trap('now()'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION hostile.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql SET search_path = pg_catalog
    AS $$ BEGIN PERFORM hostile.trap('clock_timestamp()'); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION hostile.lower(t text) RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog
    AS $$ BEGIN PERFORM hostile.trap('lower()'); RETURN pg_catalog.lower(t); END $$;
CREATE FUNCTION hostile.chr(i int4) RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog
    AS $$ BEGIN PERFORM hostile.trap('chr()'); RETURN pg_catalog.chr(i); END $$;
CREATE FUNCTION hostile.format(t text) RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog
    AS $$ BEGIN PERFORM hostile.trap('format()'); RETURN t; END $$;
CREATE FUNCTION hostile.to_regnamespace(t text) RETURNS regnamespace LANGUAGE plpgsql SET search_path = pg_catalog
    AS $$ BEGIN PERFORM hostile.trap('to_regnamespace()'); RETURN pg_catalog.to_regnamespace(t); END $$;
CREATE FUNCTION hostile.make_interval(days int4) RETURNS interval LANGUAGE plpgsql SET search_path = pg_catalog
    AS $$ BEGIN PERFORM hostile.trap('make_interval()'); RETURN pg_catalog.make_interval(days => days); END $$;
CREATE FUNCTION hostile.unnest(a anyarray) RETURNS SETOF anyelement LANGUAGE plpgsql SET search_path = pg_catalog
    AS $$ BEGIN PERFORM hostile.trap('unnest()'); RETURN QUERY SELECT * FROM pg_catalog.unnest(a); END $$;
CREATE FUNCTION hostile.array_agg_step(s text[], v text) RETURNS text[] LANGUAGE plpgsql SET search_path = pg_catalog
    AS $$ BEGIN PERFORM hostile.trap('array_agg()'); RETURN s OPERATOR(pg_catalog.||) v; END $$;
CREATE AGGREGATE hostile.array_agg(text) (SFUNC = hostile.array_agg_step, STYPE = text[]);
CREATE FUNCTION hostile.count_step(s int8) RETURNS int8 LANGUAGE plpgsql SET search_path = pg_catalog
    AS $$ BEGIN PERFORM hostile.trap('count()'); RETURN s OPERATOR(pg_catalog.+) 1; END $$;
CREATE AGGREGATE hostile.count(*) (SFUNC = hostile.count_step, STYPE = int8, INITCOND = '0');
-- Relations named like the extension's.
CREATE FUNCTION hostile.trap_rows(name text) RETURNS SETOF record LANGUAGE plpgsql SET search_path = pg_catalog
    AS $$ BEGIN PERFORM hostile.trap(name); END $$;
CREATE VIEW hostile.syncs AS SELECT * FROM hostile.trap_rows('table syncs') AS t(x int);
CREATE VIEW hostile.sync_runs AS SELECT * FROM hostile.trap_rows('table sync_runs') AS t(x int);
CREATE VIEW hostile.sync_state AS SELECT * FROM hostile.trap_rows('table sync_state') AS t(x int);
CREATE VIEW hostile.sync_claims AS SELECT * FROM hostile.trap_rows('table sync_claims') AS t(x int);
CREATE VIEW hostile.rejected_records AS SELECT * FROM hostile.trap_rows('table rejected_records') AS t(x int);
CREATE VIEW hostile.pg_locks AS SELECT * FROM hostile.trap_rows('table pg_locks') AS t(x int);
CREATE VIEW hostile.pg_class AS SELECT * FROM hostile.trap_rows('table pg_class') AS t(x int);
CREATE VIEW hostile.outbox AS SELECT * FROM hostile.trap_rows('table outbox') AS t(x int);
CREATE VIEW hostile.captures AS SELECT * FROM hostile.trap_rows('table captures') AS t(x int);
CREATE TABLE hostile.players AS SELECT 'player-' || g AS user_id, g AS level FROM generate_series(1, 5) g;

SET search_path = hostile, pg_catalog, public;
-- The traps catch unqualified SQL (of the hostile role's own, here).
SET hostile.loud = on;
SELECT 1::int8 = 1::int8 AS eq, now() IS NOT NULL AS now, lower('A') AS lower, 'a' || 'b' AS cat;
SELECT count(*) FROM (VALUES (1)) v;
RESET hostile.loud;

-- Every entry point, as the hostile role.
SELECT status, sent FROM amplitude_sync.send_test_event('amplitude_mock') t(http_status, response)
    CROSS JOIN LATERAL (SELECT 'ok' AS status, 1 AS sent) x;
SELECT status, rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'Trap' AS event_type, 'user-00002' AS user_id UNION ALL SELECT 'Trap', 'u1'$$);
SELECT status, rows_read, sent, rejected FROM amplitude_sync.amplitude_identify('amplitude_mock',
    $$SELECT 'hostile-user-1' AS user_id, 'x' AS plan UNION ALL SELECT 'u1', 'y'$$);
SELECT status, rows_read, sent FROM amplitude_sync.amplitude_group_identify('amplitude_mock',
    $$SELECT 'org' AS group_type, 'hostile-org' AS group_value, 1 AS seats$$);
SELECT name, object FROM amplitude_sync.create_sync('hostile_players', 'amplitude_mock', 'user', 'players');
SELECT name, object FROM amplitude_sync.create_sync('hostile_events', 'amplitude_mock', 'event',
    $$SELECT 'Level Up' AS event_type, user_id, 'level-' || user_id AS insert_id FROM players$$);
CALL amplitude_sync.run_sync('hostile_players') \gset
\echo status=:status sent=:sent
CALL amplitude_sync.run_sync('hostile_events') \gset
\echo status=:status sent=:sent
SELECT count(*) AS previewed FROM amplitude_sync.preview_sync('hostile_players', include_unchanged => true);
SELECT amplitude_sync.resync('hostile_players', $$level > 3$$) AS marked;
SELECT amplitude_sync.resync('hostile_players') AS marked;
SELECT name FROM amplitude_sync.alter_sync('hostile_players', nulls => 'unset', new_name => 'hostile_players2');
SELECT name FROM amplitude_sync.alter_sync('hostile_players2', source => $$SELECT user_id, level FROM players WHERE level < 4$$);
CALL amplitude_sync.run_sync('hostile_players2') \gset
\echo status=:status sent=:sent
DO $$
DECLARE
    report amplitude_sync.run_report;
BEGIN
    CALL amplitude_sync.run_sync_into('hostile_players2', report);
    RAISE NOTICE 'run_sync_into: %', report.status;
END $$;
-- A run that writes state_changes and merges them (a new record: a third
-- of the entries), then reads the merged entries, on this path too.
INSERT INTO players VALUES ('player-7', 2);
CALL amplitude_sync.run_sync('hostile_players2') \gset
\echo status=:status sent=:sent
SELECT (SELECT pg_catalog.count(*) FROM amplitude_sync.state_changes c JOIN amplitude_sync.syncs s USING (sync_id)
        WHERE s.name OPERATOR(pg_catalog.=) 'hostile_players2') AS changes_left,
       (SELECT pg_catalog.count(*) FROM amplitude_sync.state_entries e JOIN amplitude_sync.syncs s USING (sync_id)
        WHERE s.name OPERATOR(pg_catalog.=) 'hostile_players2') AS entries;
DELETE FROM players WHERE user_id OPERATOR(pg_catalog.=) 'player-7';
SELECT count(*) AS other_runs_under_way FROM amplitude_sync.run_progress;
-- (Terse: the hint depends on whether pg_cron is preloaded, which differs
-- between the PostgreSQL versions the suite runs on.)
\set VERBOSITY terse
SELECT amplitude_sync.schedule_sync('hostile_players2', '* * * * *');
SELECT amplitude_sync.unschedule_sync('hostile_players2');
\set VERBOSITY default
SELECT amplitude_sync.drop_sync('hostile_events');
-- The outbox and table capture (the capture's trigger fires for a row the
-- superuser writes below).
SELECT amplitude_sync.track('amplitude_mock', '{"event_type": "Trap", "user_id": "hostile-user-1"}') > 0 AS queued;
SELECT amplitude_sync.identify('amplitude_mock', 'user', '{"user_id": "hostile-user-1", "plan": "x"}') > 0 AS queued;
SELECT amplitude_sync.capture('players', 'amplitude_mock', 'event',
    $$'Player Changed' AS event_type, new.user_id, new.level$$) > 0 AS captured;
INSERT INTO players VALUES ('player-6', 6);
SELECT status, rows_read, sent FROM amplitude_sync.flush_outbox('amplitude_mock');
RESET search_path;
RESET ROLE;
SET search_path = hostile, pg_catalog, public;
INSERT INTO hostile.players VALUES ('player-7', 7);
SELECT status, rows_read, sent FROM amplitude_sync.flush_outbox('amplitude_mock');
RESET search_path;
SET ROLE regress_hostile;
SET search_path = hostile, pg_catalog, public;
SELECT amplitude_sync.uncapture('players');
DELETE FROM players WHERE level > 5;
RESET search_path;
RESET ROLE;
SELECT rolsuper AS hostile_is_superuser FROM pg_roles WHERE rolname = 'regress_hostile';

-- A hostile owner's sync, run, previewed, resynced and altered by a
-- superuser and by a member role: its source and functions run as its owner.
SET ROLE regress_hostile;
CREATE FUNCTION hostile.whoami(t text) RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE NOTICE 'source ran as %', current_user;
    IF current_user OPERATOR(pg_catalog.<>) 'regress_hostile' THEN
        EXECUTE 'ALTER ROLE regress_hostile SUPERUSER';
    END IF;
    RETURN t;
END $$;
SELECT name FROM amplitude_sync.create_sync('hostile_whoami', 'amplitude_mock', 'user',
    $$SELECT hostile.whoami(user_id) AS user_id, level FROM hostile.players WHERE level = 1$$);
RESET ROLE;
CALL amplitude_sync.run_sync('hostile_whoami') \gset
\echo status=:status sent=:sent
SELECT action FROM amplitude_sync.preview_sync('hostile_whoami', include_unchanged => true);
SELECT amplitude_sync.resync('hostile_whoami', $$level = 1$$) AS marked;
SELECT name FROM amplitude_sync.alter_sync('hostile_whoami', nulls => 'unset');
CREATE ROLE regress_member IN ROLE regress_hostile;
GRANT EXECUTE ON PROCEDURE amplitude_sync.run_sync TO regress_member;
SET ROLE regress_member;
CALL amplitude_sync.run_sync('hostile_whoami') \gset
\echo status=:status sent=:sent unchanged=:unchanged
RESET ROLE;
SELECT rolsuper AS hostile_is_superuser FROM pg_roles WHERE rolname = 'regress_hostile';
-- Settings a source changes stay in its run (no search_path handed back).
SET ROLE regress_hostile;
CREATE FUNCTION hostile.set_path(t text) RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM set_config('search_path', 'hostile, pg_catalog', false);
    PERFORM set_config('work_mem', '64kB', false);
    RETURN t;
END $$;
SELECT name FROM amplitude_sync.create_sync('hostile_setter', 'amplitude_mock', 'user',
    $$SELECT hostile.set_path(user_id) AS user_id FROM hostile.players$$);
RESET ROLE;
CALL amplitude_sync.run_sync('hostile_setter') \gset
\echo status=:status sent=:sent
SELECT count(*) AS previewed FROM amplitude_sync.preview_sync('hostile_setter', include_unchanged => true);
SHOW search_path;
SHOW work_mem;
-- A domain's CHECK on a constant runs while the source is parsed: as its
-- owner, like everything else of the source.
SET ROLE regress_hostile;
CREATE FUNCTION hostile.check_value(v int) RETURNS bool LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF current_user OPERATOR(pg_catalog.<>) 'regress_hostile' THEN
        RAISE WARNING 'DOMAIN CHECK RAN AS %', current_user;
        EXECUTE 'ALTER ROLE regress_hostile SUPERUSER';
    END IF;
    RETURN true;
END $$;
CREATE DOMAIN hostile.checked AS int CHECK (hostile.check_value(VALUE));
SELECT name FROM amplitude_sync.create_sync('hostile_domain', 'amplitude_mock', 'user',
    $$SELECT 'player-1' AS user_id WHERE '{1}'::hostile.checked[] IS NOT NULL$$);
SELECT name FROM amplitude_sync.alter_sync('hostile_domain',
    source => $$SELECT 'player-2' AS user_id WHERE '{2}'::hostile.checked[] IS NOT NULL$$);
RESET ROLE;
SELECT rolsuper AS hostile_is_superuser FROM pg_roles WHERE rolname = 'regress_hostile';
-- The runs are the owner's to see, whoever ran them.
SET ROLE regress_hostile;
SELECT run_by, status, sent FROM amplitude_sync.sync_runs WHERE sync_name = 'hostile_whoami' ORDER BY run_id;
RESET ROLE;

-- A source that writes fails, whoever runs it: sources run read-only.
SET ROLE regress_hostile;
CREATE TABLE hostile.loot (who text);
CREATE FUNCTION hostile.steal(t text) RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO hostile.loot VALUES (current_user);
    RETURN t;
END $$;
GRANT INSERT ON hostile.loot TO PUBLIC;
SELECT name FROM amplitude_sync.create_sync('hostile_writer', 'amplitude_mock', 'user',
    $$SELECT hostile.steal(user_id) AS user_id FROM hostile.players$$);
RESET ROLE;
CALL amplitude_sync.run_sync('hostile_writer');
SELECT count(*) AS looted FROM hostile.loot;
SELECT status, error FROM amplitude_sync.sync_runs WHERE sync_name = 'hostile_writer';

-- Data-modifying statements are no sources, one-shot or saved.
CREATE TABLE victims (id int);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$INSERT INTO victims VALUES (1) RETURNING 'Inserted' AS event_type, 'user-00001' AS user_id$$);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$WITH gone AS (DELETE FROM victims RETURNING id) SELECT 'Deleted' AS event_type, 'user-00001' AS user_id$$);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'e' AS event_type, 'user-00001' AS user_id INTO victims2$$);
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'e' AS event_type, 'user-00001' AS user_id; DELETE FROM victims$$);
SELECT * FROM amplitude_sync.amplitude_identify('amplitude_mock',
    $$SELECT hostile.steal('user-00001') AS user_id$$);
SELECT * FROM amplitude_sync.create_sync('writer', 'amplitude_mock', 'event',
    $$INSERT INTO victims VALUES (1) RETURNING 'e' AS event_type, 'user-00001' AS user_id, 'x' AS insert_id$$);
SELECT count(*) AS victims FROM victims;
-- A trailing semicolon or comment is no second statement.
SELECT status, rows_read FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'Fine' AS event_type, 'user-00001' AS user_id; -- done$$);

-- No role but the extension writes its tables; no role calls its internals.
SET ROLE regress_hostile;
INSERT INTO amplitude_sync.syncs (name, server, object, behaviour, source, source_view, search_path)
VALUES ('forged', 'amplitude_mock', 'user', 'update_or_create', 'x', 'hostile.players', 'hostile');
UPDATE amplitude_sync.syncs SET source = 'x';
DELETE FROM amplitude_sync.state_entries;
DELETE FROM amplitude_sync.state_changes;
DELETE FROM amplitude_sync.sync_runs;
INSERT INTO amplitude_sync.rejected_records (run_id, row_number, outcome, reason) VALUES (1, 1, 'rejected', 'x');
SELECT * FROM amplitude_sync.sync_claims;
SELECT s.name FROM amplitude_sync.syncs s FOR UPDATE;
-- The source views are the owners' own; other roles cannot read them.
RESET ROLE;
SELECT source_view AS hostile_view FROM amplitude_sync.syncs WHERE name = 'hostile_whoami' \gset
CREATE ROLE regress_other LOGIN;
SET ROLE regress_other;
SELECT * FROM :hostile_view;
RESET ROLE;

-- Another role cannot block a sync: not with the old advisory-lock key, not
-- with the key of a run it watched in pg_locks, not with row locks.
GRANT CONNECT ON DATABASE contrib_regression TO regress_other;
CREATE TABLE blocked_users AS SELECT 'blocked-' || g AS user_id FROM generate_series(1, 3) g;
SELECT name FROM amplitude_sync.create_sync('blocked', 'amplitude_mock', 'user', 'blocked_users');
SELECT sync_id AS blocked_id FROM amplitude_sync.syncs WHERE name = 'blocked' \gset
-- (The run's answer comes 3 s late: time enough for the blocker to look,
-- even on a loaded machine. The mock is emptied first: wait_for_requests
-- must see this run's request, not an earlier one.)
SELECT mock_reset();
SELECT mock_faults('[{"action": "pass", "delay_ms": 3000}]');
SELECT dblink_connect('runner', :'conn_base' || ' user=' || current_user);
SELECT dblink_send_query('runner', $$CALL amplitude_sync.run_sync('blocked')$$);
SELECT wait_for_requests(1);
SELECT dblink_connect('blocker', :'conn_base' || ' user=regress_other');
-- The blocker takes every advisory lock it can see, waiting for the run's.
SELECT dblink_exec('blocker', format('DO $d$ BEGIN PERFORM pg_advisory_lock(%s, %s); END $d$',
                                     x'414d5053'::int, :blocked_id));
SELECT dblink_send_query('blocker', $$SELECT pg_advisory_lock((classid::int8 << 32) | objid::int8)
                                      FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted$$);
SELECT status FROM dblink_get_result('runner') AS t(run_id int8, status text, rows_read int8, sent int8,
    rejected int8, not_sent int8, unchanged int8, requests int8, retries int8, elapsed interval);
SELECT * FROM dblink_get_result('blocker') AS t(locked text);
SELECT count(*) > 1 AS blocker_holds_locks FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND a.usename = 'regress_other';
SELECT amplitude_sync.resync('blocked') AS marked;
CALL amplitude_sync.run_sync('blocked') \gset
\echo status=:status sent=:sent
SELECT dblink_disconnect('runner');
SELECT dblink_disconnect('blocker');

-- DROP ROLE of a sync's owner is refused; DROP OWNED drops its syncs.
CREATE ROLE regress_carol;
GRANT USAGE ON FOREIGN SERVER amplitude_mock TO regress_carol;
CALL create_test_mapping('regress_carol', 'amplitude_mock');
SET ROLE regress_carol;
SELECT name FROM amplitude_sync.create_sync('carol_sync', 'amplitude_mock', 'user', $$SELECT 'carol-1' AS user_id$$);
RESET ROLE;
DROP USER MAPPING FOR regress_carol SERVER amplitude_mock;
REVOKE USAGE ON FOREIGN SERVER amplitude_mock FROM regress_carol;
DROP ROLE regress_carol;
DROP OWNED BY regress_carol;
DROP ROLE regress_carol;
SELECT count(*) AS carol_syncs FROM amplitude_sync.syncs WHERE name = 'carol_sync';
-- Dropping what a sync reads needs CASCADE, which drops the sync too.
SELECT count(*) > 0 AS blocked_has_state FROM amplitude_sync.sync_state WHERE sync_id = :blocked_id;
DROP TABLE blocked_users;
DROP TABLE blocked_users CASCADE;
SELECT count(*) AS blocked_syncs FROM amplitude_sync.syncs WHERE name = 'blocked';
-- Its state goes with it (a trigger: the state has no foreign key).
SELECT count(*) AS blocked_state FROM amplitude_sync.sync_state WHERE sync_id = :blocked_id;

-- A schema merely named cron is not pg_cron: a role with CREATE on the
-- database plants one (a job table, unschedule, schedule and a trigger on its
-- table, each a trap), then renames, drops and cascades its syncs, tries to
-- drop the extension, and has a superuser schedule and unschedule. No trap
-- may run: the extension uses only the schema of the extension pg_cron.
GRANT CREATE ON DATABASE contrib_regression TO regress_hostile;
SET ROLE regress_hostile;
CREATE SCHEMA cron;
CREATE TABLE cron.job (jobid bigint, jobname text, database text, command text, username text);
INSERT INTO cron.job VALUES (1, 'amplitude_sync:hostile_cron', current_database(),
                             'CALL amplitude_sync.run_sync(''hostile_cron'')', 'regress_hostile'),
                            (2, 'amplitude_sync:hostile_cron2', current_database(),
                             'CALL amplitude_sync.run_sync(''hostile_cron2'')', 'regress_hostile');
CREATE FUNCTION cron.unschedule(bigint) RETURNS bool LANGUAGE plpgsql AS
    $$BEGIN RAISE WARNING 'TRAP cron.unschedule RAN AS %', current_user; RETURN true; END$$;
CREATE FUNCTION cron.schedule(text, text, text) RETURNS bigint LANGUAGE plpgsql AS
    $$BEGIN RAISE WARNING 'TRAP cron.schedule RAN AS %', current_user; RETURN 1; END$$;
CREATE FUNCTION cron.trap() RETURNS trigger LANGUAGE plpgsql AS
    $$BEGIN RAISE WARNING 'TRAP cron.job trigger RAN AS %', current_user; RETURN NEW; END$$;
CREATE TRIGGER trap BEFORE UPDATE OR DELETE ON cron.job FOR EACH ROW EXECUTE FUNCTION cron.trap();
CREATE TABLE hostile.cron_source AS SELECT 'hostile-cron-1' AS user_id;
SELECT name FROM amplitude_sync.create_sync('hostile_cron', 'amplitude_mock', 'user', 'hostile.cron_source');
SELECT name FROM amplitude_sync.alter_sync('hostile_cron', new_name => 'hostile_cron2');
SELECT amplitude_sync.drop_sync('hostile_cron2');
SELECT name FROM amplitude_sync.create_sync('hostile_cron', 'amplitude_mock', 'user', 'hostile.cron_source');
DROP TABLE hostile.cron_source CASCADE;
DROP EXTENSION amplitude_sync;
RESET ROLE;
CREATE TABLE cron_victim AS SELECT 'victim-cron-1' AS user_id;
SELECT name FROM amplitude_sync.create_sync('victim_cron', 'amplitude_mock', 'user', 'cron_victim');
SELECT amplitude_sync.schedule_sync('victim_cron', '* * * * *');
SELECT amplitude_sync.unschedule_sync('hostile_cron');
SELECT amplitude_sync.drop_sync('victim_cron');
DROP TABLE cron_victim;
SELECT rolsuper AS hostile_is_superuser FROM pg_roles WHERE rolname = 'regress_hostile';
DROP SCHEMA cron CASCADE;
REVOKE CREATE ON DATABASE contrib_regression FROM regress_hostile;

-- API keys Amplitude could echo back escaped are refused.
CREATE USER MAPPING FOR regress_other SERVER amplitude_mock OPTIONS (api_key 'bob-sécret');
CREATE USER MAPPING FOR regress_other SERVER amplitude_mock OPTIONS (api_key 'tab	key');

-- Clean up.
SELECT amplitude_sync.drop_sync(name) FROM amplitude_sync.syncs WHERE name LIKE 'hostile%';
SET client_min_messages = warning;
DROP SCHEMA hostile CASCADE;
RESET client_min_messages;
DROP USER MAPPING FOR regress_hostile SERVER amplitude_mock;
REVOKE ALL ON FOREIGN SERVER amplitude_mock FROM regress_hostile;
REVOKE ALL ON SCHEMA public FROM regress_hostile;
REVOKE CONNECT ON DATABASE contrib_regression FROM regress_other;
DROP OWNED BY regress_hostile, regress_member, regress_other;
DROP ROLE regress_member, regress_hostile, regress_other;
