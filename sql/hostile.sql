-- Hostile input ends as a clear error or a per-row rejection, never a crash:
-- huge values, 100,000 properties, deep nesting, text that is not UTF-8,
-- and databases in other encodings.
SELECT url AS mock_url FROM mock_config \gset
SELECT mock_reset();

-- 100,000 properties in one event: too big for /2/httpapi, fine for /batch.
CREATE TABLE wide AS
SELECT 'Wide' AS event_type, 'user-wide1' AS user_id,
       (SELECT jsonb_object_agg('p' || g, g) FROM generate_series(1, 100000) g) AS event_properties;
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', 'TABLE wide');
SELECT reason FROM amplitude_sync.rejected_records WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', 'TABLE wide', api => 'batch');
SELECT count(*) AS properties FROM mock_events() e, jsonb_object_keys(e->'event_properties');

-- A 5 MB value, and an event_type of 100 kB.
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'Huge' AS event_type, 'user-huge2' AS user_id, repeat('é', 2500000) AS blob$$, api => 'batch');
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT repeat('t', 100000) AS event_type, 'user-huge3' AS user_id$$);

-- jsonb nested 2,000 levels deep: rejected, not a stack overflow.
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock',
    $$SELECT 'Deep' AS event_type, 'user-deep1' AS user_id,
             (repeat('{"a":', 2000) || '1' || repeat('}', 2000))::jsonb AS nested$$);
SELECT reason FROM amplitude_sync.rejected_records WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);

-- Quotes, backslashes, control characters and non-ASCII in names and values.
SELECT mock_reset();
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT E'quote " back \\ tab \t' AS event_type, 'user-ünïcødé' AS user_id,
           E'ctl \x01 \x1f end' AS "weird ""name"" \", ROW(E'a"b', NULL, 'c,d') AS composite
$$);
SELECT e->>'event_type' AS event_type, e->>'user_id' AS user_id, e->'event_properties' AS props FROM mock_events() e;

-- A SQL_ASCII database can hold bytes that are not UTF-8: such rows are
-- rejected; a LATIN1 database's text is converted to UTF-8.
CREATE DATABASE regress_amp_ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
CREATE DATABASE regress_amp_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
\c regress_amp_ascii
SET client_min_messages = warning;
CREATE EXTENSION amplitude_sync;
RESET client_min_messages;
CREATE SERVER amplitude_mock FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'mock_url');
DO $$ BEGIN EXECUTE format('CREATE USER MAPPING FOR CURRENT_USER SERVER amplitude_mock OPTIONS (api_key %L)',
                           btrim(pg_read_file('amplitude_test_key'), E' \n')); END $$;
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Bytes' AS event_type, 'user-ascii1' AS user_id, v AS label
    FROM (VALUES (E'plain'), (E'bad \xff\xfe bytes'), (E'caf\xc3\xa9')) t(v)
$$);
SELECT row_number, field, reason FROM amplitude_sync.rejected_records;
-- Inside json and jsonb too: the row is rejected (not the whole request by
-- Amplitude), and its rejection is stored.
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Json Bytes' AS event_type, 'user-ascii2' AS user_id, v::json AS meta
    FROM (VALUES (E'{"k": "fine"}'), (E'{"k": "bad \xff"}')) t(v)
$$);
SELECT row_number, field, reason FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
\c regress_amp_latin1
SET client_min_messages = warning;
CREATE EXTENSION amplitude_sync;
RESET client_min_messages;
CREATE SERVER amplitude_mock FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'mock_url');
DO $$ BEGIN EXECUTE format('CREATE USER MAPPING FOR CURRENT_USER SERVER amplitude_mock OPTIONS (api_key %L)',
                           btrim(pg_read_file('amplitude_test_key'), E' \n')); END $$;
SELECT rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Latin' AS event_type, 'user-latin1' AS user_id, convert_from('\xe974e9'::bytea, 'LATIN1') AS season
$$);
\c contrib_regression
SELECT e->>'event_type' AS event_type, e->'event_properties'->>'label' AS label,
       e->'event_properties'->>'season' AS season
FROM mock_events() e WHERE e->>'event_type' IN ('Bytes', 'Latin') ORDER BY 1, 2;
DROP DATABASE regress_amp_ascii;
DROP DATABASE regress_amp_latin1;
