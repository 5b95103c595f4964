-- Scheduling with pg_cron: a saved sync runs on a schedule, as the role
-- that scheduled it, with no secret in the command. (pg_cron 1.4, Debian 12's,
-- schedules by the minute, so this test waits up to a minute.)
SELECT mock_reset();
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
