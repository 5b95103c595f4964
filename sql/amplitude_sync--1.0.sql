-- amplitude_sync 1.0: send the rows of SQL queries to Amplitude.
\echo Use "CREATE EXTENSION amplitude_sync" to load this file. \quit

------------------------------------------------------------------------------
-- The connection: a foreign-data wrapper with a validator and no handler (the
-- dblink_fdw precedent). Servers carry the region and tuning options; the API
-- key lives only in user mappings.
------------------------------------------------------------------------------
CREATE FUNCTION amplitude_sync.fdw_validator(pg_catalog.text[], pg_catalog.oid)
RETURNS pg_catalog.void
AS 'MODULE_PATHNAME', 'amplitude_sync_fdw_validator'
LANGUAGE C STRICT;

CREATE FOREIGN DATA WRAPPER amplitude_sync VALIDATOR amplitude_sync.fdw_validator;

------------------------------------------------------------------------------
-- Run history. Written by the extension's functions (as the extension owner);
-- each role sees only its own runs, through row-level security.
------------------------------------------------------------------------------
CREATE TABLE amplitude_sync.sync_runs (
    run_id        bigserial PRIMARY KEY,
    sync_name     pg_catalog.text,            -- NULL for one-shot calls
    function_name pg_catalog.text NOT NULL,   -- e.g. amplitude_send_events
    server_name   pg_catalog.text NOT NULL,
    endpoint      pg_catalog.text NOT NULL,   -- /2/httpapi, /batch, ...
    run_by        pg_catalog.regrole NOT NULL,
    started_at    pg_catalog.timestamptz NOT NULL,
    finished_at   pg_catalog.timestamptz,
    status        pg_catalog.text NOT NULL
                  CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'succeeded', 'failed'])),
    rows_read     pg_catalog.int8 NOT NULL DEFAULT 0,
    sent          pg_catalog.int8 NOT NULL DEFAULT 0,
    rejected      pg_catalog.int8 NOT NULL DEFAULT 0,
    not_sent      pg_catalog.int8 NOT NULL DEFAULT 0,
    requests      pg_catalog.int8 NOT NULL DEFAULT 0,
    retries       pg_catalog.int8 NOT NULL DEFAULT 0,
    bytes_sent    pg_catalog.int8 NOT NULL DEFAULT 0,
    error         pg_catalog.text
);
COMMENT ON TABLE amplitude_sync.sync_runs IS
    'One row per call of a sending function: what it read, sent, rejected and why it failed.';

CREATE TABLE amplitude_sync.rejected_records (
    run_id      pg_catalog.int8 NOT NULL
                REFERENCES amplitude_sync.sync_runs (run_id) ON DELETE CASCADE,
    row_number  pg_catalog.int8 NOT NULL,     -- 1-based position in the query result
    outcome     pg_catalog.text NOT NULL
                CHECK (outcome OPERATOR(pg_catalog.=) ANY (ARRAY['rejected', 'not_sent'])),
    field       pg_catalog.text,              -- the offending column or Amplitude field
    reason      pg_catalog.text NOT NULL,
    user_id     pg_catalog.text,
    device_id   pg_catalog.text,
    insert_id   pg_catalog.text,
    event_type  pg_catalog.text,
    group_type  pg_catalog.text,
    group_value pg_catalog.text,
    payload     pg_catalog.json,              -- the record as it was (or would be) sent
    recorded_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
CREATE INDEX ON amplitude_sync.rejected_records (run_id, row_number);
COMMENT ON TABLE amplitude_sync.rejected_records IS
    'Rows a run did not deliver: rejected (by our checks or by Amplitude) or not sent (a re-run can send them).';

ALTER TABLE amplitude_sync.sync_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE amplitude_sync.rejected_records ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_runs ON amplitude_sync.sync_runs FOR SELECT
    USING (pg_catalog.pg_has_role(run_by::pg_catalog.oid, 'MEMBER'));
CREATE POLICY own_rejections ON amplitude_sync.rejected_records FOR SELECT
    USING (EXISTS (SELECT FROM amplitude_sync.sync_runs r
                   WHERE r.run_id OPERATOR(pg_catalog.=) rejected_records.run_id));
GRANT SELECT ON amplitude_sync.sync_runs, amplitude_sync.rejected_records TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('amplitude_sync.sync_runs', '');
SELECT pg_catalog.pg_extension_config_dump('amplitude_sync.sync_runs_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('amplitude_sync.rejected_records', '');

------------------------------------------------------------------------------
-- Sending.
------------------------------------------------------------------------------
CREATE TYPE amplitude_sync.run_report AS (
    run_id    pg_catalog.int8,
    status    pg_catalog.text,   -- succeeded | failed
    rows_read pg_catalog.int8,
    sent      pg_catalog.int8,
    rejected  pg_catalog.int8,
    not_sent  pg_catalog.int8,
    requests  pg_catalog.int8,
    retries   pg_catalog.int8,
    elapsed   pg_catalog.interval
);

CREATE FUNCTION amplitude_sync.amplitude_send_events(
    server        pg_catalog.name,
    query         pg_catalog.text,
    api           pg_catalog.text DEFAULT 'httpapi',
    batch_size    pg_catalog.int4 DEFAULT 2000,
    min_id_length pg_catalog.int4 DEFAULT 5)
RETURNS amplitude_sync.run_report
AS 'MODULE_PATHNAME', 'amplitude_sync_send_events'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.amplitude_send_events(pg_catalog.name, pg_catalog.text, pg_catalog.text, pg_catalog.int4, pg_catalog.int4) IS
    'Runs query with the caller''s rights and sends each row to Amplitude as one event.';

CREATE FUNCTION amplitude_sync.send_test_event(
    server          pg_catalog.name,
    OUT http_status pg_catalog.int4,
    OUT response    pg_catalog.text)
AS 'MODULE_PATHNAME', 'amplitude_sync_send_test_event'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.send_test_event(pg_catalog.name) IS
    'Posts one sample event (the step that completes a new Amplitude HTTP API source) and returns the answer.';

CREATE FUNCTION amplitude_sync.amplitude_identify(
    server           pg_catalog.name,
    query            pg_catalog.text,
    object           pg_catalog.text  DEFAULT 'user',  -- 'user' (key user_id) or 'device' (key device_id)
    operations       pg_catalog.jsonb DEFAULT '{}',    -- column -> $set, $setOnce, $add, $append, ...
    nulls            pg_catalog.text  DEFAULT 'skip',  -- 'skip' NULL columns or 'unset' them
    properties_event pg_catalog.text  DEFAULT NULL,    -- e.g. 'Properties Updated': also send this event
    batch_size       pg_catalog.int4  DEFAULT 1024,
    min_id_length    pg_catalog.int4  DEFAULT 5)
RETURNS amplitude_sync.run_report
AS 'MODULE_PATHNAME', 'amplitude_sync_identify'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.amplitude_identify(pg_catalog.name, pg_catalog.text, pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.text, pg_catalog.int4, pg_catalog.int4) IS
    'Runs query with the caller''s rights and updates (or creates) one Amplitude user or device per row.';

CREATE FUNCTION amplitude_sync.amplitude_group_identify(
    server     pg_catalog.name,
    query      pg_catalog.text,
    operations pg_catalog.jsonb DEFAULT '{}',
    nulls      pg_catalog.text  DEFAULT 'skip',
    batch_size pg_catalog.int4  DEFAULT 1024)
RETURNS amplitude_sync.run_report
AS 'MODULE_PATHNAME', 'amplitude_sync_group_identify'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.amplitude_group_identify(pg_catalog.name, pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.int4) IS
    'Runs query with the caller''s rights and updates (or creates) one Amplitude group per row.';

-- Sending data out is a privilege: grant it explicitly.
REVOKE ALL ON FUNCTION amplitude_sync.amplitude_send_events(pg_catalog.name, pg_catalog.text, pg_catalog.text, pg_catalog.int4, pg_catalog.int4) FROM PUBLIC;
REVOKE ALL ON FUNCTION amplitude_sync.send_test_event(pg_catalog.name) FROM PUBLIC;
REVOKE ALL ON FUNCTION amplitude_sync.amplitude_identify(pg_catalog.name, pg_catalog.text, pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.text, pg_catalog.int4, pg_catalog.int4) FROM PUBLIC;
REVOKE ALL ON FUNCTION amplitude_sync.amplitude_group_identify(pg_catalog.name, pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.int4) FROM PUBLIC;

-- Any role may look at its own run history; sending still needs the GRANTs above.
GRANT USAGE ON SCHEMA amplitude_sync TO PUBLIC;
