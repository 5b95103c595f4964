-- A run killed or cancelled mid-way: nothing a re-run cannot resend, nothing
-- sent twice, and nothing left behind in the backend (no open connection).
-- A second session drives the run through dblink.
SELECT format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
              current_setting('port'), current_database(), current_user) AS runner_conn \gset

-- Killed: Amplitude stores the first batches but its answers are slow; the
-- backend is terminated before they arrive.
SELECT mock_reset();
SELECT mock_faults('[{"action": "pass", "delay_ms": 3000, "times": -1}]');
SELECT dblink_connect('runner', :'runner_conn');
SELECT dblink_send_query('runner', $$SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    'SELECT ''Killed Run'' AS event_type, ''user-'' || lpad(g::text, 5, ''0'') AS user_id FROM generate_series(1, 3000) g',
    batch_size => 1000)$$);
SELECT wait_for_requests(3);
SELECT count(*) AS terminated FROM (
    SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE query LIKE '%Killed Run%' AND pid <> pg_backend_pid() AND state = 'active') t;
SELECT wait_until_gone('Killed Run');
SELECT dblink_disconnect('runner');
-- The killed call left no run record (it ran in the killed transaction).
SELECT count(*) AS killed_runs_recorded FROM amplitude_sync.sync_runs WHERE rows_read = 3000 AND sent = 0;
SELECT count(*) AS stored_before_rerun FROM mock_events();
-- Running the same query again sends everything; Amplitude keeps each event once.
SELECT count(*) AS faults_cleared FROM mock_call('DELETE', '/_mock/faults');
SELECT status, rows_read, sent FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    'SELECT ''Killed Run'' AS event_type, ''user-'' || lpad(g::text, 5, ''0'') AS user_id FROM generate_series(1, 3000) g',
    batch_size => 1000);
SELECT count(*) AS stored, count(DISTINCT e->>'user_id') AS users FROM mock_events() e;

-- Cancelled: the run stops with 57014 and its backend holds no more open
-- files or sockets than before the run.
SELECT mock_reset();
SELECT dblink_connect('runner', :'runner_conn');
SELECT * FROM dblink('runner', $$SELECT status FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    'SELECT ''Warm Up'' AS event_type, ''user-00001'' AS user_id')$$) AS t(status text);
SELECT pid AS runner_pid FROM dblink('runner', 'SELECT pg_backend_pid()') AS t(pid int) \gset
SELECT count(*) AS fds FROM pg_ls_dir('/proc/' || :runner_pid || '/fd') \gset before_
SELECT mock_faults('[{"action": "pass", "delay_ms": 5000, "times": -1}]');
SELECT dblink_send_query('runner', $$SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    'SELECT ''Cancelled Run'' AS event_type, ''user-'' || lpad(g::text, 5, ''0'') AS user_id FROM generate_series(1, 3000) g',
    batch_size => 500)$$);
-- (The warm-up's request and the run's four.)
SELECT wait_for_requests(5);
-- While it waits on Amplitude, pg_stat_activity says so (the event is named
-- AmplitudeResponse on PostgreSQL 17+, Extension before).
SELECT wait_event_type, wait_event IN ('AmplitudeResponse', 'Extension') AS waits_on_amplitude
FROM pg_stat_activity WHERE pid = :runner_pid;
-- and run_progress shows the one-shot call, whose own transaction is not
-- visible yet: rows read, none confirmed, four requests in flight.
SELECT what, run_id IS NOT NULL AS has_run_id, rows_read >= 2000 AS read_ahead, sent, rejected, requests_in_flight
FROM amplitude_sync.run_progress WHERE pid = :runner_pid;
SELECT pg_cancel_backend(:runner_pid);
SELECT wait_until_gone('Cancelled Run');
SELECT count(*) AS progress_after_cancel FROM amplitude_sync.run_progress WHERE pid = :runner_pid;
SELECT * FROM dblink_get_result('runner', false) AS t(run_id bigint);
SELECT * FROM dblink_get_result('runner', false) AS t(run_id bigint);
SELECT dblink_error_message('runner') LIKE '%canceling statement due to user request%' AS cancelled;
SELECT count(*) <= :before_fds AS no_leftover_connections FROM pg_ls_dir('/proc/' || :runner_pid || '/fd');
SELECT count(*) AS faults_cleared FROM mock_call('DELETE', '/_mock/faults');
SELECT * FROM dblink('runner', $$SELECT status FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    'SELECT ''After Cancel'' AS event_type, ''user-00001'' AS user_id')$$) AS t(status text);
SELECT dblink_disconnect('runner');

-- A long run tells an interactive caller how it is going, every
-- amplitude_sync.progress_notice_interval (10 s by default; 0: never).
SELECT mock_reset();
SELECT mock_faults('[{"action": "pass", "delay_ms": 1300, "times": -1}]');
SET amplitude_sync.progress_notice_interval = '1s';
SELECT status, sent FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'Slow Answer' AS event_type, 'user-00001' AS user_id$$);
RESET amplitude_sync.progress_notice_interval;
SELECT status, sent FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'Slow Answer, Quiet' AS event_type, 'user-00001' AS user_id$$);
SELECT count(*) AS faults_cleared FROM mock_call('DELETE', '/_mock/faults');
