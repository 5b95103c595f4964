-- The connection: option validation at DDL time, where each option may go,
-- superuser-only options, and who may use a server and whose key.

-- Unknown options, misplaced options and bad values fail at DDL time.
CREATE SERVER bad FOREIGN DATA WRAPPER amplitude_sync OPTIONS (regoin 'us');
CREATE SERVER bad FOREIGN DATA WRAPPER amplitude_sync OPTIONS (region 'asia');
CREATE SERVER bad FOREIGN DATA WRAPPER amplitude_sync OPTIONS (api_key 'secret-on-a-server');
CREATE SERVER bad FOREIGN DATA WRAPPER amplitude_sync OPTIONS (max_concurrency '0');
CREATE SERVER bad FOREIGN DATA WRAPPER amplitude_sync OPTIONS (request_timeout_ms 'soon');
CREATE SERVER bad FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint 'ftp://example.com');
CREATE SERVER bad FOREIGN DATA WRAPPER amplitude_sync OPTIONS (verify_tls 'maybe');
CREATE SERVER bad FOREIGN DATA WRAPPER amplitude_sync OPTIONS (max_events_per_second '0');
CREATE SERVER bad FOREIGN DATA WRAPPER amplitude_sync OPTIONS (max_events_per_second 'fast');
CREATE SERVER bad FOREIGN DATA WRAPPER amplitude_sync OPTIONS (rate_window_ms '10');
ALTER FOREIGN DATA WRAPPER amplitude_sync OPTIONS (region 'us');

-- Good servers: the region picks the host; tuning options are checked.
CREATE SERVER amp_us FOREIGN DATA WRAPPER amplitude_sync;
CREATE SERVER amp_eu FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (region 'eu', max_concurrency '2', request_timeout_ms '5000', max_attempts '3',
             max_events_per_second '1000', rate_window_ms '30000');
ALTER SERVER amp_eu OPTIONS (SET max_concurrency '64');

-- User mappings: api_key is required and is the only option.
CREATE USER MAPPING FOR CURRENT_USER SERVER amp_us;
CREATE USER MAPPING FOR CURRENT_USER SERVER amp_us OPTIONS (api_key 'key-0123456789', region 'eu');
CREATE USER MAPPING FOR CURRENT_USER SERVER amp_us OPTIONS (api_key '');
CREATE USER MAPPING FOR CURRENT_USER SERVER amp_us OPTIONS (api_key 'key-0123456789');
ALTER USER MAPPING FOR CURRENT_USER SERVER amp_us OPTIONS (DROP api_key);

-- Only superusers may point a server elsewhere or weaken TLS.
CREATE ROLE regress_amp_owner;
GRANT USAGE ON FOREIGN DATA WRAPPER amplitude_sync TO regress_amp_owner;
SET ROLE regress_amp_owner;
CREATE SERVER amp_owned FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint 'http://127.0.0.1:9');
CREATE SERVER amp_owned FOREIGN DATA WRAPPER amplitude_sync OPTIONS (verify_tls 'false');
CREATE SERVER amp_owned FOREIGN DATA WRAPPER amplitude_sync OPTIONS (region 'eu');
ALTER SERVER amp_owned OPTIONS (ADD endpoint 'http://127.0.0.1:9');
RESET ROLE;
DROP SERVER amp_owned;

-- Sending needs EXECUTE (revoked from PUBLIC), USAGE on the server, and a
-- mapping of one's own (or PUBLIC's): nobody borrows another role's key.
CREATE ROLE regress_amp_sender;
SET ROLE regress_amp_sender;
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$SELECT 'e' AS event_type, 'user-00001' AS user_id$$);
RESET ROLE;
GRANT EXECUTE ON FUNCTION amplitude_sync.amplitude_send_events TO regress_amp_sender;
SET ROLE regress_amp_sender;
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$SELECT 'e' AS event_type, 'user-00001' AS user_id$$);
RESET ROLE;
GRANT USAGE ON FOREIGN SERVER amplitude_mock TO regress_amp_sender;
SET ROLE regress_amp_sender;
SELECT * FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$SELECT 'e' AS event_type, 'user-00001' AS user_id$$);
-- Other roles' keys stay hidden.
SELECT srvname, usename, umoptions FROM pg_user_mappings WHERE srvname = 'amplitude_mock';
RESET ROLE;

-- A PUBLIC mapping lets every role with USAGE send with that key.
CALL create_test_mapping('public', 'amplitude_mock');
SELECT mock_reset();
SELECT status, sent FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$SELECT 'Admin Run' AS event_type, 'user-00000' AS user_id$$);
SET ROLE regress_amp_sender;
SELECT status, rows_read, sent, rejected, not_sent, requests
FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$SELECT 'Signed Up' AS event_type, 'user-00001' AS user_id$$);
-- Each role sees its own runs only.
SELECT function_name, server_name, endpoint, run_by, status, rows_read, sent FROM amplitude_sync.sync_runs;
RESET ROLE;
SELECT count(*) FILTER (WHERE run_by = 'regress_amp_sender'::regrole) AS sender_runs,
       count(*) FILTER (WHERE run_by = current_user::regrole) AS own_runs
FROM amplitude_sync.sync_runs;
SELECT e->>'event_type' AS event_type, e->>'user_id' AS user_id FROM mock_events() e;
DROP USER MAPPING FOR PUBLIC SERVER amplitude_mock;

-- A server that does not exist, or belongs to another wrapper.
SELECT * FROM amplitude_sync.amplitude_send_events('no_such_server', 'SELECT 1');
CREATE FOREIGN DATA WRAPPER regress_other_fdw;
CREATE SERVER regress_other FOREIGN DATA WRAPPER regress_other_fdw;
SELECT * FROM amplitude_sync.amplitude_send_events('regress_other', 'SELECT 1');

-- A server with no reachable Amplitude: the test event reports the failure.
CREATE SERVER amp_closed FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint 'http://127.0.0.1:9', connect_timeout_ms '2000');
CREATE USER MAPPING FOR CURRENT_USER SERVER amp_closed OPTIONS (api_key 'key-0123456789');
SELECT * FROM amplitude_sync.send_test_event('amp_closed');

DROP SERVER amp_us, amp_eu, amp_closed, regress_other CASCADE;
DROP FOREIGN DATA WRAPPER regress_other_fdw;
REVOKE USAGE ON FOREIGN SERVER amplitude_mock FROM regress_amp_sender;
REVOKE EXECUTE ON FUNCTION amplitude_sync.amplitude_send_events FROM regress_amp_sender;
