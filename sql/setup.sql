-- Shared set-up for the suite: the extension, a server pointing at the mock
-- Amplitude server (test/run_tests.sh exports its port), a user mapping, and
-- helpers that read what the mock received. The port never appears in the
-- expected output: psql echoes the variable names, not their values.
\getenv mock_port AMPLITUDE_MOCK_PORT
\set mock_url 'http://127.0.0.1:' :mock_port
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS amplitude_sync;
RESET client_min_messages;
-- Progress NOTICEs depend on timing: the tests turn them off (interrupts.sql
-- turns them on where it checks them).
DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET amplitude_sync.progress_notice_interval = 0', current_database()); END $$;

CREATE TABLE mock_config (url text NOT NULL);
INSERT INTO mock_config VALUES (:'mock_url');

-- Runs curl against the mock and returns its JSON Lines as jsonb rows.
CREATE FUNCTION mock_call(method text, path text, body text DEFAULT NULL)
RETURNS SETOF jsonb LANGUAGE plpgsql AS $$
DECLARE
    cmd text := format('curl -sS --fail-with-body -X %s', method);
BEGIN
    IF body IS NOT NULL THEN
        cmd := cmd || ' -H ''Content-Type: application/json'' --data-binary '
                   || '''' || replace(body, '''', '''\''''') || '''';
    END IF;
    cmd := cmd || ' ' || (SELECT url FROM mock_config) || path;
    IF to_regclass('pg_temp.mock_lines') IS NULL THEN
        CREATE TEMP TABLE mock_lines (line text);
    END IF;
    TRUNCATE mock_lines;
    EXECUTE format($c$COPY mock_lines FROM PROGRAM %L WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02')$c$, cmd);
    RETURN QUERY SELECT line::jsonb FROM mock_lines WHERE line <> '';
END $$;

CREATE FUNCTION mock_reset() RETURNS void LANGUAGE sql
    AS $$ SELECT count(*) FROM mock_call('POST', '/_mock/reset') $$;
CREATE FUNCTION mock_faults(rules jsonb) RETURNS void LANGUAGE sql
    AS $$ SELECT count(*) FROM mock_call('POST', '/_mock/faults', rules::text) $$;
-- Every request the mock saw, in arrival order.
CREATE FUNCTION mock_requests() RETURNS SETOF jsonb LANGUAGE sql
    AS $$ SELECT * FROM mock_call('GET', '/_mock/requests') $$;
-- The events Amplitude would have stored (deduplicated by insert_id).
CREATE FUNCTION mock_events() RETURNS SETOF jsonb LANGUAGE sql
    AS $$ SELECT * FROM mock_call('GET', '/_mock/events') $$;
-- The user and group profiles Amplitude would hold after every operation.
CREATE FUNCTION mock_users() RETURNS SETOF jsonb LANGUAGE sql
    AS $$ SELECT * FROM mock_call('GET', '/_mock/users') $$;
CREATE FUNCTION mock_groups() RETURNS SETOF jsonb LANGUAGE sql
    AS $$ SELECT * FROM mock_call('GET', '/_mock/groups') $$;

-- Tests that need a second session drive it through dblink, and wait with these.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
CREATE FUNCTION wait_until_gone(marker text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..100 LOOP
        PERFORM pg_stat_clear_snapshot();  -- else the view stays as it was at the first look
        EXIT WHEN NOT EXISTS (SELECT FROM pg_stat_activity
                              WHERE query LIKE '%' || marker || '%' AND pid <> pg_backend_pid()
                                AND state = 'active');
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
-- Whether the backend pid waits on a lock, within 10 s.
CREATE FUNCTION waits_on_lock(p int) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..200 LOOP
        PERFORM pg_stat_clear_snapshot();
        IF EXISTS (SELECT FROM pg_stat_activity WHERE pid = p AND wait_event_type = 'Lock') THEN RETURN true; END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END $$;
CREATE FUNCTION wait_for_requests(n int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT count(*) FROM mock_requests()) >= n;
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;

-- The mock's valid API key is random per run; test/run_tests.sh writes it to
-- a file in the data directory. Mappings are created from it inside EXECUTE,
-- so no logged statement contains it and the run can search the server log
-- (log_statement = all, log_min_messages = debug1) for any leak.
CREATE FUNCTION test_api_key() RETURNS text LANGUAGE sql
    AS $$ SELECT btrim(pg_read_file('amplitude_test_key'), E' \n') $$;
CREATE PROCEDURE create_test_mapping(role_name text, server_name text) LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE USER MAPPING FOR %s SERVER %I OPTIONS (api_key %L)',
                   CASE WHEN role_name = 'public' THEN 'PUBLIC' ELSE quote_ident(role_name) END,
                   server_name, test_api_key());
END $$;

-- The server the suite uses, and a mapping with the mock's valid key.
CREATE SERVER amplitude_mock FOREIGN DATA WRAPPER amplitude_sync
    OPTIONS (endpoint :'mock_url', retry_backoff_ms '10');
CALL create_test_mapping(current_user, 'amplitude_mock');

SELECT mock_reset();
SELECT http_status, response::jsonb - 'server_upload_time' - 'payload_size_bytes' AS response
FROM amplitude_sync.send_test_event('amplitude_mock');
SELECT e->>'event_type' AS event_type, e->>'user_id' AS user_id,
       e->'event_properties' AS props, e->>'insert_id' LIKE 'amplitude-sync-test-%' AS has_insert_id
FROM mock_events() e;
