-- Type conversion: every supported type as an event property, checked in
-- the exact request body Amplitude received (numbers keep their digits).
SELECT mock_reset();
-- Timestamps are sent in UTC whatever the session's time zone.
SET TimeZone = 'America/New_York';
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);

SELECT status, rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Typed' AS event_type, 'user-types' AS user_id,
           true AS p_bool, 32767::int2 AS p_int2, 2147483647 AS p_int4,
           9223372036854775807 AS p_int8, 1.5::float4 AS p_float4, 0.1::float8 AS p_float8,
           -1e300::float8 AS p_float8_big,
           123456789012345678901234567890.123456789::numeric AS p_numeric,
           1.50::numeric(5,2) AS p_numeric_scale,
           E'h\u00e9llo "quoted" \\ back\nline\ttab' AS p_text, 'abc'::varchar(5) AS p_varchar,
           'ab'::char(4) AS p_char,
           '{"a": [1, 2, {"b": null}], "n": 1.000000000000000000001}'::jsonb AS p_jsonb,
           '{"z": 1,  "a": [true]}'::json AS p_json,
           '2024-05-01 12:30:00.25+02'::timestamptz AS p_timestamptz,
           '2024-05-01 12:30:00.000001'::timestamp AS p_timestamp,
           '1969-07-20'::date AS p_date,
           ARRAY[1, 2, 3] AS p_int_array, ARRAY['a', NULL, 'c'] AS p_text_array,
           ARRAY[[1, 2], [3, 4]] AS p_2d_array, '{}'::int[] AS p_empty_array,
           ARRAY['2024-01-01 00:00:00+00'::timestamptz] AS p_ts_array,
           ARRAY['{"k": 1}'::jsonb] AS p_jsonb_array,
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS p_uuid,
           '1 day 02:00:00'::interval AS p_interval, '192.168.0.1'::inet AS p_inet,
           NULL::text AS p_null, '\x0102ff'::bytea AS p_bytea, '(1,2)'::point AS p_point,
           int4range(1, 5) AS p_range, ROW(1, 'x') AS p_record, 'happy'::mood AS p_enum,
           7::positive_int AS p_domain, 'pg_class'::regclass AS p_regclass
$$);

-- The event exactly as it went over the wire (the body is the request text).
SELECT jsonb_pretty((body->>'body')::jsonb->'events'->0 #- '{event_properties,p_float8_big}')
FROM mock_call('GET', '/_mock/bodies') body;
-- Numbers beyond a double's precision arrive digit for digit.
SELECT position('"p_numeric":123456789012345678901234567890.123456789,' IN body->>'body') > 0 AS numeric_exact,
       position('"p_numeric_scale":1.50,' IN body->>'body') > 0 AS numeric_scale_kept,
       position('"p_float4":1.5,' IN body->>'body') > 0 AS float4_shortest,
       position('"p_float8":0.1,' IN body->>'body') > 0 AS float8_shortest,
       position('"p_float8_big":-1e+300,' IN body->>'body') > 0 AS float8_exponent
FROM mock_call('GET', '/_mock/bodies') body;

-- NaN and Infinity cannot be JSON: such rows are rejected, with the column named.
SELECT status, rows_read, sent, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Odd Number' AS event_type, 'user-types' AS user_id, v AS amount
    FROM (VALUES ('NaN'::float8), ('Infinity'::float8), ('-Infinity'::float8), (1.25)) t(v)
$$);
SELECT row_number, outcome, field, reason FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs) ORDER BY row_number;
SELECT status, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Odd Number' AS event_type, 'user-types' AS user_id, 'NaN'::numeric AS amount,
           'infinity'::timestamptz AS seen_at
$$);
SELECT row_number, field, reason FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
SELECT status, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Odd Time' AS event_type, 'user-types' AS user_id, '-infinity'::timestamptz AS time
$$);
SELECT row_number, field, reason FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
SELECT status, rejected FROM amplitude_sync.amplitude_send_events('amplitude_mock', $$
    SELECT 'Old Time' AS event_type, 'user-types' AS user_id, '1969-12-31 23:59:59+00'::timestamptz AS time
$$);
SELECT row_number, field, reason FROM amplitude_sync.rejected_records
WHERE run_id = (SELECT max(run_id) FROM amplitude_sync.sync_runs);
SELECT count(*) AS events_stored FROM mock_events();
RESET TimeZone;
