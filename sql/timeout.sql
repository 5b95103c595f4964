-- statement_timeout (and so a cancel) interrupts a call promptly with
-- SQLSTATE 57014: while it waits on a slow Amplitude, and while it sleeps
-- between retries. Nothing is left behind: the next call works.
SELECT url AS mock_url FROM mock_config \gset
SELECT mock_reset();

-- Amplitude answers after 5 s; the statement may take 300 ms.
SELECT mock_faults('[{"action": "pass", "delay_ms": 5000, "times": -1}]');
SELECT clock_timestamp() AS started \gset
SET statement_timeout = '300ms';
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'Slow' AS event_type, 'user-00001' AS user_id$$);
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;
SELECT clock_timestamp() - :'started'::timestamptz < interval '1.5 seconds' AS stopped_promptly;

-- The same while sleeping before a retry (the first backoff is at least 10 s).
SELECT mock_reset();
CREATE SERVER amplitude_patient FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint :'mock_url', retry_backoff_ms '20000');
CALL create_test_mapping(current_user, 'amplitude_patient');
SELECT mock_faults('[{"action": "status", "status": 503, "times": -1}]');
SELECT clock_timestamp() AS started \gset
SET statement_timeout = '500ms';
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_patient',
    $$SELECT 'Backoff' AS event_type, 'user-00001' AS user_id$$);
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;
SELECT clock_timestamp() - :'started'::timestamptz < interval '1.5 seconds' AS stopped_promptly;
SELECT count(*) AS requests_before_cancel FROM mock_requests();

-- The set-up test event is interruptible too.
SELECT mock_reset();
SELECT mock_faults('[{"action": "pass", "delay_ms": 5000}]');
SET statement_timeout = '300ms';
SELECT * FROM amplitude_sync.send_test_event('amplitude_mock');
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;

-- A request slower than the server's request timeout is a retryable failure.
SELECT mock_reset();
CREATE SERVER amplitude_impatient FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint :'mock_url', request_timeout_ms '200', retry_backoff_ms '1');
CALL create_test_mapping(current_user, 'amplitude_impatient');
SELECT mock_faults('[{"action": "pass", "delay_ms": 1000}]');
SELECT status, sent, requests, retries FROM amplitude_sync.amplitude_send_events('amplitude_impatient',
    $$SELECT 'Timed Out Once' AS event_type, 'user-00001' AS user_id$$);
-- The first (timed-out) request had been stored by the mock: still one event.
SELECT count(*) AS stored FROM mock_events();

-- After all this the backend is healthy and sends normally.
SELECT mock_reset();
SELECT status, sent FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'After' AS event_type, 'user-00001' AS user_id$$);
DROP SERVER amplitude_patient, amplitude_impatient CASCADE;
