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
    unchanged     pg_catalog.int8 NOT NULL DEFAULT 0,  -- saved syncs: rows already in Amplitude
    requests      pg_catalog.int8 NOT NULL DEFAULT 0,
    retries       pg_catalog.int8 NOT NULL DEFAULT 0,
    bytes_sent    pg_catalog.int8 NOT NULL DEFAULT 0,
    -- Where the time went: fetching and reading rows, encoding JSON, and
    -- delivering (building requests and waiting on Amplitude).
    read_seconds   pg_catalog.float8,
    encode_seconds pg_catalog.float8,
    send_seconds   pg_catalog.float8,
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
    status    pg_catalog.text,   -- succeeded | failed | skipped
    rows_read pg_catalog.int8,
    sent      pg_catalog.int8,
    rejected  pg_catalog.int8,
    not_sent  pg_catalog.int8,
    unchanged pg_catalog.int8,   -- saved syncs: rows whose payload Amplitude already has
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

------------------------------------------------------------------------------
-- Saved syncs: a source (query, table or view), the Amplitude object it
-- fills, the behaviour and the mapping. A sync belongs to the role that
-- created it; row-level security shows and lets change only one's own (or
-- one's roles') syncs. run_sync() remembers, per record, the fingerprint of
-- the payload Amplitude confirmed, so later runs send only what changed.
------------------------------------------------------------------------------
CREATE TABLE amplitude_sync.syncs (
    sync_id          serial PRIMARY KEY,
    name             pg_catalog.text NOT NULL UNIQUE,
    owner            pg_catalog.regrole NOT NULL DEFAULT (CURRENT_USER)::pg_catalog.regrole,
    server           pg_catalog.name NOT NULL,
    object           pg_catalog.text NOT NULL
                     CHECK (object OPERATOR(pg_catalog.=) ANY (ARRAY['user', 'device', 'group', 'event'])),
    behaviour        pg_catalog.text NOT NULL,
    source           pg_catalog.text NOT NULL,    -- as given: a query, or a table or view name
    source_query     pg_catalog.text NOT NULL,    -- the query that runs
    operations       pg_catalog.jsonb NOT NULL DEFAULT '{}',
    nulls            pg_catalog.text NOT NULL DEFAULT 'skip',
    properties_event pg_catalog.text,
    api              pg_catalog.text NOT NULL DEFAULT 'httpapi',
    batch_size       pg_catalog.int4,
    min_id_length    pg_catalog.int4 NOT NULL DEFAULT 5,
    created_at       pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at       pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE amplitude_sync.syncs IS 'Saved syncs; change them with create_sync, alter_sync and drop_sync.';

-- What Amplitude confirmed, per sync and record: the record's key (user_id,
-- device_id, group, or the event's insert_id) and its payload's fingerprint.
CREATE TABLE amplitude_sync.sync_state (
    sync_id     pg_catalog.int4 NOT NULL REFERENCES amplitude_sync.syncs (sync_id) ON DELETE CASCADE,
    record_key  pg_catalog.text NOT NULL,
    fingerprint pg_catalog.uuid NOT NULL,
    sent_at     pg_catalog.timestamptz NOT NULL,
    PRIMARY KEY (sync_id, record_key)
);

ALTER TABLE amplitude_sync.syncs ENABLE ROW LEVEL SECURITY;
ALTER TABLE amplitude_sync.sync_state ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_syncs ON amplitude_sync.syncs
    USING (pg_catalog.pg_has_role(owner::pg_catalog.oid, 'MEMBER'))
    WITH CHECK (pg_catalog.pg_has_role(owner::pg_catalog.oid, 'MEMBER'));
CREATE POLICY own_state ON amplitude_sync.sync_state
    USING (EXISTS (SELECT FROM amplitude_sync.syncs s
                   WHERE s.sync_id OPERATOR(pg_catalog.=) sync_state.sync_id));
GRANT SELECT, INSERT, UPDATE, DELETE ON amplitude_sync.syncs TO PUBLIC;
GRANT USAGE ON SEQUENCE amplitude_sync.syncs_sync_id_seq TO PUBLIC;
-- Reading state is needed to compare (the source runs as the sync's owner);
-- deleting it is how resync() asks for a resend. Only the extension writes it.
GRANT SELECT, DELETE ON amplitude_sync.sync_state TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('amplitude_sync.syncs', '');
SELECT pg_catalog.pg_extension_config_dump('amplitude_sync.syncs_sync_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('amplitude_sync.sync_state', '');

-- The expression that names a record of a sync's object in its source.
CREATE FUNCTION amplitude_sync._record_key_expression(object pg_catalog.text)
RETURNS pg_catalog.text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE object
        WHEN 'user' THEN 'src.user_id::pg_catalog.text'
        WHEN 'device' THEN 'src.device_id::pg_catalog.text'
        WHEN 'group' THEN 'src.group_type::pg_catalog.text OPERATOR(pg_catalog.||) pg_catalog.chr(31) OPERATOR(pg_catalog.||) src.group_value::pg_catalog.text'
        WHEN 'event' THEN 'src.insert_id::pg_catalog.text'
    END
$$;

-- The query run_sync() and preview_sync() read: the source, its record key,
-- and the fingerprint Amplitude last confirmed for that key.
CREATE FUNCTION amplitude_sync._sync_query(sync amplitude_sync.syncs)
RETURNS pg_catalog.text LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.format(
        'SELECT src.*, st.fingerprint AS "amplitude_sync.fingerprint", %2$s AS "amplitude_sync.record_key" '
        'FROM (%1$s) src LEFT JOIN amplitude_sync.sync_state st '
        'ON st.sync_id OPERATOR(pg_catalog.=) %3$s AND st.record_key OPERATOR(pg_catalog.=) %2$s',
        sync.source_query, amplitude_sync._record_key_expression(sync.object), sync.sync_id)
$$;

-- Checks a source against an object's mapping rules (runs it with LIMIT 0,
-- with the caller's rights). Raises the same errors a run would.
CREATE FUNCTION amplitude_sync._check_source(object pg_catalog.text, query pg_catalog.text,
                                             operations pg_catalog.jsonb, nulls pg_catalog.text)
RETURNS pg_catalog.void
AS 'MODULE_PATHNAME', 'amplitude_sync_check_source'
LANGUAGE C;

CREATE FUNCTION amplitude_sync._normalise_sync(sync amplitude_sync.syncs)
RETURNS amplitude_sync.syncs LANGUAGE plpgsql AS $$
DECLARE
    relation pg_catalog.regclass;
BEGIN
    IF sync.object IS NULL OR sync.object OPERATOR(pg_catalog.<>) ALL (ARRAY['user', 'device', 'group', 'event']) THEN
        RAISE EXCEPTION 'invalid object "%"', sync.object USING ERRCODE = '22023',
            HINT = 'Supported objects: user, device, group, event.';
    END IF;
    sync.behaviour := COALESCE(sync.behaviour,
        CASE WHEN sync.object OPERATOR(pg_catalog.=) 'event' THEN 'append' ELSE 'update_or_create' END);
    IF (sync.object OPERATOR(pg_catalog.=) 'event') OPERATOR(pg_catalog.<>) (sync.behaviour OPERATOR(pg_catalog.=) 'append')
       OR sync.behaviour OPERATOR(pg_catalog.<>) ALL (ARRAY['append', 'update_or_create']) THEN
        RAISE EXCEPTION 'behaviour "%" is not supported for object "%"', sync.behaviour, sync.object
            USING ERRCODE = '22023',
            HINT = 'Supported: update_or_create for user, device and group; append for event.';
    END IF;
    IF sync.nulls OPERATOR(pg_catalog.<>) ALL (ARRAY['skip', 'unset']) THEN
        RAISE EXCEPTION 'invalid value for nulls: "%"', sync.nulls USING ERRCODE = '22023',
            HINT = 'Use skip or unset.';
    END IF;
    IF sync.api OPERATOR(pg_catalog.<>) ALL (ARRAY['httpapi', 'batch'])
       OR (sync.api OPERATOR(pg_catalog.=) 'batch' AND sync.object OPERATOR(pg_catalog.<>) 'event') THEN
        RAISE EXCEPTION 'invalid value for api: "%"', sync.api USING ERRCODE = '22023',
            HINT = 'Use httpapi or, for event syncs, batch.';
    END IF;
    IF sync.properties_event IS NOT NULL AND sync.object OPERATOR(pg_catalog.<>) ALL (ARRAY['user', 'device']) THEN
        RAISE EXCEPTION 'properties_event applies to user and device syncs only' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_foreign_server WHERE srvname OPERATOR(pg_catalog.=) sync.server) THEN
        RAISE EXCEPTION 'server "%" does not exist', sync.server USING ERRCODE = '42704';
    END IF;
    -- A table or view name is read whole; anything else is a query.
    relation := CASE WHEN sync.source OPERATOR(pg_catalog.~) '^[[:alnum:]_."]+$'
                     THEN pg_catalog.to_regclass(sync.source) END;
    sync.source_query := CASE WHEN relation IS NOT NULL
                              THEN 'SELECT * FROM ' OPERATOR(pg_catalog.||) relation::pg_catalog.text
                              ELSE sync.source END;
    PERFORM amplitude_sync._check_source(sync.object, sync.source_query, sync.operations, sync.nulls);
    RETURN sync;
END $$;

CREATE FUNCTION amplitude_sync.create_sync(
    name             pg_catalog.text,
    server           pg_catalog.name,
    object           pg_catalog.text,
    source           pg_catalog.text,
    behaviour        pg_catalog.text  DEFAULT NULL,   -- update_or_create (user, device, group) or append (event)
    operations       pg_catalog.jsonb DEFAULT '{}',
    nulls            pg_catalog.text  DEFAULT 'skip',
    properties_event pg_catalog.text  DEFAULT NULL,
    api              pg_catalog.text  DEFAULT 'httpapi',
    batch_size       pg_catalog.int4  DEFAULT NULL,
    min_id_length    pg_catalog.int4  DEFAULT 5)
RETURNS amplitude_sync.syncs LANGUAGE plpgsql AS $$
DECLARE
    sync amplitude_sync.syncs;
BEGIN
    sync.name := create_sync.name;
    sync.server := create_sync.server;
    sync.object := create_sync.object;
    sync.source := create_sync.source;
    sync.behaviour := create_sync.behaviour;
    sync.operations := COALESCE(create_sync.operations, '{}');
    sync.nulls := create_sync.nulls;
    sync.properties_event := create_sync.properties_event;
    sync.api := create_sync.api;
    sync.batch_size := create_sync.batch_size;
    sync.min_id_length := create_sync.min_id_length;
    sync := amplitude_sync._normalise_sync(sync);
    INSERT INTO amplitude_sync.syncs (name, server, object, behaviour, source, source_query, operations,
                                      nulls, properties_event, api, batch_size, min_id_length)
    VALUES (sync.name, sync.server, sync.object, sync.behaviour, sync.source, sync.source_query,
            sync.operations, sync.nulls, sync.properties_event, sync.api, sync.batch_size,
            sync.min_id_length)
    RETURNING * INTO sync;
    RETURN sync;
END $$;

-- Finds a sync the current role may manage, or raises.
CREATE FUNCTION amplitude_sync._own_sync(sync_name pg_catalog.text)
RETURNS amplitude_sync.syncs LANGUAGE plpgsql STABLE AS $$
DECLARE
    sync amplitude_sync.syncs;
BEGIN
    SELECT * INTO sync FROM amplitude_sync.syncs s WHERE s.name OPERATOR(pg_catalog.=) sync_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sync "%" does not exist', sync_name USING ERRCODE = '42704',
            HINT = 'Syncs of roles you are not a member of are not visible; see amplitude_sync.syncs.';
    END IF;
    RETURN sync;
END $$;

CREATE FUNCTION amplitude_sync.alter_sync(
    name             pg_catalog.text,
    server           pg_catalog.name  DEFAULT NULL,
    source           pg_catalog.text  DEFAULT NULL,
    operations       pg_catalog.jsonb DEFAULT NULL,
    nulls            pg_catalog.text  DEFAULT NULL,
    properties_event pg_catalog.text  DEFAULT NULL,
    api              pg_catalog.text  DEFAULT NULL,
    batch_size       pg_catalog.int4  DEFAULT NULL,
    min_id_length    pg_catalog.int4  DEFAULT NULL,
    new_name         pg_catalog.text  DEFAULT NULL)
RETURNS amplitude_sync.syncs LANGUAGE plpgsql AS $$
DECLARE
    sync amplitude_sync.syncs := amplitude_sync._own_sync(alter_sync.name);
BEGIN
    sync.server := COALESCE(alter_sync.server, sync.server);
    sync.source := COALESCE(alter_sync.source, sync.source);
    sync.operations := COALESCE(alter_sync.operations, sync.operations);
    sync.nulls := COALESCE(alter_sync.nulls, sync.nulls);
    sync.properties_event := CASE WHEN alter_sync.properties_event OPERATOR(pg_catalog.=) '' THEN NULL
                                  ELSE COALESCE(alter_sync.properties_event, sync.properties_event) END;
    sync.api := COALESCE(alter_sync.api, sync.api);
    sync.batch_size := COALESCE(alter_sync.batch_size, sync.batch_size);
    sync.min_id_length := COALESCE(alter_sync.min_id_length, sync.min_id_length);
    sync.name := COALESCE(alter_sync.new_name, sync.name);
    sync := amplitude_sync._normalise_sync(sync);
    UPDATE amplitude_sync.syncs s
    SET name = sync.name, server = sync.server, source = sync.source, source_query = sync.source_query,
        operations = sync.operations, nulls = sync.nulls, properties_event = sync.properties_event,
        api = sync.api, batch_size = sync.batch_size, min_id_length = sync.min_id_length,
        updated_at = pg_catalog.now()
    WHERE s.sync_id OPERATOR(pg_catalog.=) sync.sync_id
    RETURNING * INTO sync;
    RETURN sync;
END $$;

CREATE FUNCTION amplitude_sync.drop_sync(name pg_catalog.text)
RETURNS pg_catalog.void LANGUAGE plpgsql AS $$
DECLARE
    sync amplitude_sync.syncs := amplitude_sync._own_sync(drop_sync.name);
BEGIN
    -- Its state goes with it (ON DELETE CASCADE); its run history stays.
    DELETE FROM amplitude_sync.syncs s WHERE s.sync_id OPERATOR(pg_catalog.=) sync.sync_id;
END $$;

-- Makes the next run resend every record, or those matching a predicate
-- over the source's columns. Returns how many records will be resent.
CREATE FUNCTION amplitude_sync.resync(name pg_catalog.text, predicate pg_catalog.text DEFAULT NULL)
RETURNS pg_catalog.int8 LANGUAGE plpgsql AS $$
DECLARE
    sync amplitude_sync.syncs := amplitude_sync._own_sync(resync.name);
    forgotten pg_catalog.int8;
BEGIN
    IF predicate IS NULL THEN
        IF sync.behaviour OPERATOR(pg_catalog.=) 'append' THEN
            RAISE EXCEPTION 'resync of append sync "%" needs a predicate', sync.name
                USING ERRCODE = '22023',
                DETAIL = 'Resending every event of an append sync would duplicate events older than Amplitude''s 7-day deduplication window.',
                HINT = 'Name the events to resend, for example: resync(''' OPERATOR(pg_catalog.||) sync.name OPERATOR(pg_catalog.||) ''', ''created_at > now() - interval ''''1 day'''''').';
        END IF;
        DELETE FROM amplitude_sync.sync_state st WHERE st.sync_id OPERATOR(pg_catalog.=) sync.sync_id;
    ELSE
        EXECUTE pg_catalog.format(
            'DELETE FROM amplitude_sync.sync_state st USING (SELECT %s AS record_key FROM (%s) src WHERE %s) m '
            'WHERE st.sync_id OPERATOR(pg_catalog.=) $1 AND st.record_key OPERATOR(pg_catalog.=) m.record_key',
            amplitude_sync._record_key_expression(sync.object), sync.source_query, predicate)
        USING sync.sync_id;
    END IF;
    GET DIAGNOSTICS forgotten = ROW_COUNT;
    RETURN forgotten;
END $$;

-- A procedure, so that a run called with CALL commits its progress as it
-- goes: other sessions see its counts, and what Amplitude confirmed stays
-- remembered if the run is later cancelled. The INOUT parameters are the
-- run report that CALL prints.
CREATE PROCEDURE amplitude_sync.run_sync(
    name            pg_catalog.text,
    INOUT run_id    pg_catalog.int8     DEFAULT NULL,
    INOUT status    pg_catalog.text     DEFAULT NULL,
    INOUT rows_read pg_catalog.int8     DEFAULT NULL,
    INOUT sent      pg_catalog.int8     DEFAULT NULL,
    INOUT rejected  pg_catalog.int8     DEFAULT NULL,
    INOUT not_sent  pg_catalog.int8     DEFAULT NULL,
    INOUT unchanged pg_catalog.int8     DEFAULT NULL,
    INOUT requests  pg_catalog.int8     DEFAULT NULL,
    INOUT retries   pg_catalog.int8     DEFAULT NULL,
    INOUT elapsed   pg_catalog.interval DEFAULT NULL)
AS 'MODULE_PATHNAME', 'amplitude_sync_run_sync'
LANGUAGE C;
COMMENT ON PROCEDURE amplitude_sync.run_sync IS
    'Runs a saved sync: sends the records that are new or changed since the last run (CALL amplitude_sync.run_sync(''name'')).';

CREATE FUNCTION amplitude_sync.preview_sync(name pg_catalog.text, include_unchanged pg_catalog.bool DEFAULT false)
RETURNS TABLE (row_number pg_catalog.int8, record_key pg_catalog.text, action pg_catalog.text,
               endpoint pg_catalog.text, payload pg_catalog.json, reason pg_catalog.text)
AS 'MODULE_PATHNAME', 'amplitude_sync_preview_sync'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.preview_sync(pg_catalog.text, pg_catalog.bool) IS
    'What the next run_sync would do, record by record, without sending anything or changing any state.';

-- Running a sync sends data out: like the one-shot functions, it needs a GRANT.
REVOKE ALL ON PROCEDURE amplitude_sync.run_sync FROM PUBLIC;

-- Scheduling with pg_cron (when it is installed): a job named
-- "amplitude_sync:<sync>" that CALLs run_sync, as the role that schedules it.
CREATE FUNCTION amplitude_sync.schedule_sync(name pg_catalog.text, schedule pg_catalog.text)
RETURNS pg_catalog.int8 LANGUAGE plpgsql AS $$
DECLARE
    sync amplitude_sync.syncs := amplitude_sync._own_sync(schedule_sync.name);
    job pg_catalog.int8;
BEGIN
    IF pg_catalog.to_regnamespace('cron') IS NULL THEN
        RAISE EXCEPTION 'pg_cron is not installed in this database' USING ERRCODE = '55000',
            HINT = 'Install pg_cron (shared_preload_libraries = ''pg_cron'', then CREATE EXTENSION pg_cron), or run CALL amplitude_sync.run_sync(...) from any scheduler.';
    END IF;
    EXECUTE 'SELECT cron.schedule($1, $2, $3)' INTO job
        USING 'amplitude_sync:' OPERATOR(pg_catalog.||) sync.name, schedule,
              pg_catalog.format('CALL amplitude_sync.run_sync(%L)', sync.name);
    RETURN job;
END $$;

CREATE FUNCTION amplitude_sync.unschedule_sync(name pg_catalog.text)
RETURNS pg_catalog.bool LANGUAGE plpgsql AS $$
DECLARE
    done pg_catalog.bool;
BEGIN
    IF pg_catalog.to_regnamespace('cron') IS NULL THEN
        RAISE EXCEPTION 'pg_cron is not installed in this database' USING ERRCODE = '55000';
    END IF;
    EXECUTE 'SELECT cron.unschedule($1)' INTO done USING 'amplitude_sync:' OPERATOR(pg_catalog.||) name;
    RETURN done;
END $$;
