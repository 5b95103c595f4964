-- Scheduling with pg_cron: a saved sync runs on a schedule, as the role
-- that scheduled it, with no secret in the command. (pg_cron 1.4, Debian 12's,
-- schedules by the minute, so this test waits up to a minute.)
SELECT mock_reset();
-- Sync ids (and source view names) in this file's output do not depend on the files before.
SELECT setval('amplitude_sync.syncs_sync_id_seq', 300) AS first_sync_id_after;
SET client_min_messages = warning;
CREATE EXTENSION pg_cron;
RESET client_min_messages;
\set SHOW_CONTEXT never
SELECT amplitude_sync.schedule_sync('no_such_sync', '* * * * *');
\set SHOW_CONTEXT errors
CREATE TABLE cron_users AS SELECT 'cron-user-' || g AS user_id, 'gold' AS tier FROM generate_series(1, 5) g;
SELECT name FROM amplitude_sync.create_sync('cron_users', 'amplitude_mock', 'user', 'cron_users');
-- schedule_sync() is a shortcut for cron.schedule() with the right command.
SELECT amplitude_sync.schedule_sync('cron_users', '* * * * *') > 0 AS scheduled;
SELECT jobname, schedule, command FROM cron.job;
DO $$
BEGIN
    FOR i IN 1..150 LOOP
        EXIT WHEN EXISTS (SELECT FROM amplitude_sync.sync_runs
                          WHERE sync_name = 'cron_users' AND status <> 'running');
        PERFORM pg_sleep(0.5);
    END LOOP;
END $$;
SELECT function_name, sync_name, run_by, status, rows_read, sent
FROM amplitude_sync.sync_runs WHERE sync_name = 'cron_users' ORDER BY run_id LIMIT 1;
SELECT count(*) AS profiles FROM mock_users() u WHERE u->>'user_id' LIKE 'cron-user-%';
SELECT amplitude_sync.unschedule_sync('cron_users');
\set SHOW_CONTEXT never
-- Once more: there is no job left to remove.
SELECT amplitude_sync.unschedule_sync('cron_users');

-- Jobs follow their sync: a rename renames the job and its command; a drop,
-- and a DROP of the source view (which drops the sync), unschedule it.
SELECT amplitude_sync.schedule_sync('cron_users', '0 3 * * *') > 0 AS scheduled;
SELECT name FROM amplitude_sync.alter_sync('cron_users', new_name => 'cron_users_renamed');
SELECT jobname, schedule, command FROM cron.job;
SELECT amplitude_sync.drop_sync('cron_users_renamed');
SELECT count(*) AS jobs_left FROM cron.job;
CREATE VIEW cron_users_view AS SELECT * FROM cron_users;
SELECT name FROM amplitude_sync.create_sync('cron_view_sync', 'amplitude_mock', 'user', 'cron_users_view');
SELECT amplitude_sync.schedule_sync('cron_view_sync', '0 3 * * *') > 0 AS scheduled;
DROP VIEW cron_users_view CASCADE;
SELECT count(*) AS jobs_left FROM cron.job;

-- A superuser can unschedule another role's sync; the role itself too.
CREATE ROLE regress_cron_owner;
GRANT USAGE ON SCHEMA cron TO regress_cron_owner;
GRANT USAGE ON FOREIGN SERVER amplitude_mock TO regress_cron_owner;
GRANT SELECT ON cron_users TO regress_cron_owner;
CALL create_test_mapping('regress_cron_owner', 'amplitude_mock');
SET ROLE regress_cron_owner;
SELECT name FROM amplitude_sync.create_sync('cron_owned', 'amplitude_mock', 'user', 'public.cron_users');
SELECT amplitude_sync.schedule_sync('cron_owned', '0 3 * * *') > 0 AS scheduled;
RESET ROLE;
SELECT jobname, username FROM cron.job;
SELECT amplitude_sync.unschedule_sync('cron_owned');
SELECT count(*) AS jobs_left FROM cron.job;
SELECT amplitude_sync.unschedule_sync('cron_owned');

-- DROP EXTENSION takes the jobs of its syncs with it.
SET ROLE regress_cron_owner;
SELECT amplitude_sync.schedule_sync('cron_owned', '0 3 * * *') > 0 AS scheduled;
RESET ROLE;
CREATE DATABASE regress_amp_cron_other;
\c regress_amp_cron_other
-- pg_cron lives in another database (cron.database_name): the error says
-- where, and the hint gives the statement a superuser runs there.
SET client_min_messages = warning;
CREATE EXTENSION amplitude_sync;
RESET client_min_messages;
CREATE SERVER amplitude_mock FOREIGN DATA WRAPPER amplitude_sync;
CREATE USER MAPPING FOR CURRENT_USER SERVER amplitude_mock OPTIONS (api_key 'not-used-here');
CREATE TABLE other_users AS SELECT 'other-user-1' AS user_id;
SELECT name FROM amplitude_sync.create_sync('other_sync', 'amplitude_mock', 'user', 'other_users');
\set SHOW_CONTEXT never
SELECT amplitude_sync.schedule_sync('other_sync', '*/15 * * * *');
SELECT amplitude_sync.unschedule_sync('other_sync');
-- A role that may not read cron.database_name is told where to look.
CREATE ROLE regress_cron_other;
GRANT USAGE ON FOREIGN SERVER amplitude_mock TO regress_cron_other;
CREATE USER MAPPING FOR regress_cron_other SERVER amplitude_mock OPTIONS (api_key 'not-used-here');
GRANT SELECT ON other_users TO regress_cron_other;
SET ROLE regress_cron_other;
SELECT name FROM amplitude_sync.create_sync('other_sync_2', 'amplitude_mock', 'user', 'public.other_users');
SELECT amplitude_sync.schedule_sync('other_sync_2', '*/15 * * * *');
RESET ROLE;
\c contrib_regression
DROP DATABASE regress_amp_cron_other;
DROP ROLE regress_cron_other;
\set SHOW_CONTEXT never
SELECT count(*) AS jobs_before FROM cron.job;
-- (What the CASCADE drops depends on the files before: not shown.)
SET client_min_messages = warning;
DROP EXTENSION amplitude_sync CASCADE;
RESET client_min_messages;
SELECT count(*) AS jobs_after FROM cron.job;
-- ... and leaves no empty schema behind; in one transaction with a new
-- CREATE EXTENSION, the schema stays (it is in use again).
SELECT count(*) AS schema_left FROM pg_namespace WHERE nspname = 'amplitude_sync';
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION amplitude_sync;
DROP EXTENSION amplitude_sync;
CREATE EXTENSION amplitude_sync;
COMMIT;
SELECT count(*) AS schema_kept, (SELECT extversion FROM pg_extension WHERE extname = 'amplitude_sync') AS version
FROM pg_namespace WHERE nspname = 'amplitude_sync';
DROP EXTENSION amplitude_sync;
-- A schema amplitude_sync made before CREATE EXTENSION is the user's: DROP
-- EXTENSION leaves it, with what was granted on it (also when all three are
-- one transaction, as a migration tool runs them).
BEGIN;
CREATE SCHEMA amplitude_sync;
GRANT USAGE ON SCHEMA amplitude_sync TO regress_cron_owner;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION amplitude_sync;
COMMIT;
DROP EXTENSION amplitude_sync;
SELECT count(*) AS users_schema_kept, bool_or(has_schema_privilege('regress_cron_owner', oid, 'USAGE')) AS grant_kept
FROM pg_namespace WHERE nspname = 'amplitude_sync';
DROP SCHEMA amplitude_sync;
-- One that CREATE EXTENSION made in a savepoint is the extension's: it goes.
BEGIN;
SAVEPOINT before_extension;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION amplitude_sync;
RELEASE SAVEPOINT before_extension;
COMMIT;
DROP EXTENSION amplitude_sync;
SELECT count(*) AS extensions_schema_left FROM pg_namespace WHERE nspname = 'amplitude_sync';
SET client_min_messages = warning;
CREATE EXTENSION amplitude_sync;
RESET client_min_messages;
DROP OWNED BY regress_cron_owner;
DROP ROLE regress_cron_owner;
