-- amplitude_sync 1.0 -> 1.1: every write through the extension (no write
-- grants for PUBLIC), sources kept as views owned by the syncs' owners,
-- run history linked to syncs by id, the overlap guard, skipped runs.
\echo Use "ALTER EXTENSION amplitude_sync UPDATE TO '1.1'" to load this file. \quit

-- Run history by sync id; skipped runs.
ALTER TABLE amplitude_sync.sync_runs ADD COLUMN sync_id pg_catalog.int4;
ALTER TABLE amplitude_sync.sync_runs ADD COLUMN pacing_seconds pg_catalog.float8;
-- (1.0 linked runs by name: a run is the sync's if it ran as a member of its owner.)
UPDATE amplitude_sync.sync_runs r SET sync_id = s.sync_id
FROM amplitude_sync.syncs s WHERE s.name OPERATOR(pg_catalog.=) r.sync_name
  AND pg_catalog.pg_has_role(r.run_by::pg_catalog.oid, s.owner::pg_catalog.oid, 'MEMBER');
ALTER TABLE amplitude_sync.sync_runs DROP CONSTRAINT sync_runs_status_check;
ALTER TABLE amplitude_sync.sync_runs ADD CONSTRAINT sync_runs_status_check
    CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'succeeded', 'failed', 'skipped']));
CREATE INDEX ON amplitude_sync.sync_runs (sync_id, run_id);

-- A rejection remembered until its row changes; watermark syncs' positions.
-- 1.1 fingerprints the row's column values, not its JSON: the fingerprints
-- 1.0 stored can match none, so users, devices and groups are sent once more
-- by their first 1.1 run (their operations are idempotent); events are
-- remembered by insert_id alone and are never resent.
ALTER TABLE amplitude_sync.sync_state ADD COLUMN rejected_reason pg_catalog.text,
                                      ADD COLUMN position pg_catalog.int8;
-- A watermark run loads, and prunes, the ledger entries above or below a position.
CREATE INDEX sync_state_position ON amplitude_sync.sync_state (sync_id, position) WHERE position IS NOT NULL;
-- Watermark mode (events): see README "Watermark syncs".
ALTER TABLE amplitude_sync.syncs ADD COLUMN cursor_column pg_catalog.text,
                                 ADD COLUMN lookback pg_catalog.text,
                                 ADD COLUMN watermark pg_catalog.int8,
                                 ADD COLUMN ledger_floor pg_catalog.int8;

-- Functions replaced by C functions (or gone).
DROP FUNCTION amplitude_sync.create_sync(pg_catalog.text, pg_catalog.name, pg_catalog.text, pg_catalog.text,
    pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.int4, pg_catalog.int4);
DROP FUNCTION amplitude_sync.alter_sync(pg_catalog.text, pg_catalog.name, pg_catalog.text, pg_catalog.jsonb,
    pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.int4, pg_catalog.int4, pg_catalog.text);
DROP FUNCTION amplitude_sync.drop_sync(pg_catalog.text);
DROP FUNCTION amplitude_sync.resync(pg_catalog.text, pg_catalog.text);
DROP FUNCTION amplitude_sync.schedule_sync(pg_catalog.text, pg_catalog.text);
DROP FUNCTION amplitude_sync.unschedule_sync(pg_catalog.text);
DROP FUNCTION amplitude_sync._own_sync(pg_catalog.text);
DROP FUNCTION amplitude_sync._normalise_sync(amplitude_sync.syncs);
DROP FUNCTION amplitude_sync._check_source(pg_catalog.text, pg_catalog.text, pg_catalog.jsonb, pg_catalog.text);
DROP FUNCTION amplitude_sync._sync_query(amplitude_sync.syncs);
DROP FUNCTION amplitude_sync._record_key_expression(pg_catalog.text);

-- /identify takes no options: a user or device sync's min_id_length below
-- 5 was never honoured (Amplitude refused shorter IDs; a longer one is
-- checked locally and stays), a group sync's never applied; 1.1 refuses
-- both.
DO $$
DECLARE
    s record;
BEGIN
    FOR s IN UPDATE amplitude_sync.syncs SET min_id_length = 5
             WHERE (object OPERATOR(pg_catalog.=) 'group' AND min_id_length OPERATOR(pg_catalog.<>) 5)
                OR (object OPERATOR(pg_catalog.<>) 'event' AND min_id_length OPERATOR(pg_catalog.<) 5)
             RETURNING name LOOP
        RAISE WARNING 'sync "%" now uses min_id_length 5', s.name
            USING DETAIL = 'Amplitude''s /identify endpoint takes no options and refuses IDs shorter than 5 characters.';
    END LOOP;
END $$;

-- Sources become views owned by the syncs' owners; the owner column goes
-- (the view's owner is the sync's owner).
DROP POLICY own_syncs ON amplitude_sync.syncs;
DROP POLICY own_state ON amplitude_sync.sync_state;
DROP POLICY own_runs ON amplitude_sync.sync_runs;
DROP POLICY own_rejections ON amplitude_sync.rejected_records;
ALTER TABLE amplitude_sync.syncs ADD COLUMN source_view pg_catalog.regclass,
                                 ADD COLUMN search_path pg_catalog.text;
-- Each view is made as 1.1 makes them: the query checked (one read-only
-- statement) and the view created by the sync's owner, never by this
-- script's superuser (1.0 let owners rewrite source_query unchecked).
CREATE FUNCTION amplitude_sync._upgrade_source_view(pg_catalog.int4, pg_catalog.text, pg_catalog.text, pg_catalog.oid,
                                                    pg_catalog.name)
RETURNS pg_catalog.oid AS 'MODULE_PATHNAME', 'amplitude_sync_upgrade_source_view' LANGUAGE C STRICT;
DO $$
DECLARE
    s record;
    path pg_catalog.text;
    view pg_catalog.oid;
BEGIN
    FOR s IN SELECT * FROM amplitude_sync.syncs ORDER BY sync_id LOOP
        -- 1.0 did not keep the path a source was checked under: the owner's
        -- schema and public, PostgreSQL's default.
        path := pg_catalog.format('%I, public', pg_catalog.pg_get_userbyid(s.owner::pg_catalog.oid));
        PERFORM pg_catalog.set_config('search_path', path, true);
        BEGIN
            view := amplitude_sync._upgrade_source_view(s.sync_id, s.name, s.source_query, s.owner::pg_catalog.oid,
                                                        s.server);
        EXCEPTION WHEN OTHERS THEN
            -- One bad source must not block the update: that sync goes
            -- (its history stays), and the warning says what to re-create.
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            RAISE WARNING 'sync "%" is dropped: its source does not make a 1.1 sync', s.name
                USING DETAIL = SQLERRM,
                      HINT = pg_catalog.format('Re-create it with create_sync; its source was: %s', s.source_query);
            DELETE FROM amplitude_sync.syncs WHERE sync_id OPERATOR(pg_catalog.=) s.sync_id;
            CONTINUE;
        END;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        -- Made during this script, the view would belong to the extension
        -- (and go unseen by pg_dump); it belongs to the sync's owner.
        EXECUTE pg_catalog.format('ALTER EXTENSION amplitude_sync DROP VIEW %s', view::pg_catalog.regclass);
        UPDATE amplitude_sync.syncs SET source_view = view, search_path = path
        WHERE sync_id OPERATOR(pg_catalog.=) s.sync_id;
    END LOOP;
END $$;
DROP FUNCTION amplitude_sync._upgrade_source_view(pg_catalog.int4, pg_catalog.text, pg_catalog.text, pg_catalog.oid,
                                                  pg_catalog.name);
ALTER TABLE amplitude_sync.syncs ALTER COLUMN source_view SET NOT NULL,
                                 ALTER COLUMN search_path SET NOT NULL,
                                 DROP COLUMN owner,
                                 DROP COLUMN source_query;

CREATE TABLE amplitude_sync.sync_claims (
    sync_id  pg_catalog.int4 PRIMARY KEY REFERENCES amplitude_sync.syncs (sync_id) ON DELETE CASCADE,
    pid      pg_catalog.int4 NOT NULL,
    lock_key pg_catalog.int8 NOT NULL,
    backend_start pg_catalog.timestamptz NOT NULL,  -- pids are reused
    run_id   pg_catalog.int8
);
ALTER TABLE amplitude_sync.sync_claims ENABLE ROW LEVEL SECURITY;

CREATE POLICY own_syncs ON amplitude_sync.syncs FOR SELECT
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c
                                   WHERE c.oid OPERATOR(pg_catalog.=) source_view::pg_catalog.oid), 'MEMBER'));
CREATE POLICY own_state ON amplitude_sync.sync_state FOR SELECT
    USING (EXISTS (SELECT FROM amplitude_sync.syncs s
                   WHERE s.sync_id OPERATOR(pg_catalog.=) sync_state.sync_id));
CREATE POLICY own_runs ON amplitude_sync.sync_runs FOR SELECT
    USING (pg_catalog.pg_has_role(run_by::pg_catalog.oid, 'MEMBER')
           OR EXISTS (SELECT FROM amplitude_sync.syncs s
                      WHERE s.sync_id OPERATOR(pg_catalog.=) sync_runs.sync_id));
CREATE POLICY own_rejections ON amplitude_sync.rejected_records FOR SELECT
    USING (EXISTS (SELECT FROM amplitude_sync.sync_runs r
                   WHERE r.run_id OPERATOR(pg_catalog.=) rejected_records.run_id));

-- Reading only: every write goes through the extension's functions.
REVOKE ALL ON amplitude_sync.syncs, amplitude_sync.sync_state FROM PUBLIC;
REVOKE ALL ON SEQUENCE amplitude_sync.syncs_sync_id_seq FROM PUBLIC;
GRANT SELECT ON amplitude_sync.syncs, amplitude_sync.sync_state, amplitude_sync.sync_runs,
                amplitude_sync.rejected_records TO PUBLIC;

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
    min_id_length    pg_catalog.int4  DEFAULT 5,
    cursor_column    pg_catalog.text  DEFAULT NULL,   -- events: watermark mode (a run reads only new rows)
    lookback         pg_catalog.text  DEFAULT NULL)   -- watermark mode: how far back late rows are read
RETURNS amplitude_sync.syncs
AS 'MODULE_PATHNAME', 'amplitude_sync_create_sync'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.create_sync IS
    'Saves a sync owned by the current role; its source is checked (and kept as a view) under the current search_path.';

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
    new_name         pg_catalog.text  DEFAULT NULL,
    cursor_column    pg_catalog.text  DEFAULT NULL,   -- '' leaves watermark mode
    lookback         pg_catalog.text  DEFAULT NULL)
RETURNS amplitude_sync.syncs
AS 'MODULE_PATHNAME', 'amplitude_sync_alter_sync'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.alter_sync IS
    'Changes a sync; the arguments left NULL keep their value. A new source is checked as the sync''s owner.';

CREATE FUNCTION amplitude_sync.drop_sync(name pg_catalog.text)
RETURNS pg_catalog.void
AS 'MODULE_PATHNAME', 'amplitude_sync_drop_sync'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION amplitude_sync.drop_sync IS
    'Drops a sync with its state and source view; its run history stays.';

CREATE FUNCTION amplitude_sync.resync(name pg_catalog.text, predicate pg_catalog.text DEFAULT NULL)
RETURNS pg_catalog.int8
AS 'MODULE_PATHNAME', 'amplitude_sync_resync'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.resync IS
    'Makes the next run resend every record, or those whose source row matches predicate; returns how many.';

-- Scheduling with pg_cron (when it is installed): a job named
-- "amplitude_sync:<sync>" that CALLs run_sync, as the role that schedules it.
-- The schema of the genuine pg_cron in this database (quoted), or NULL. A
-- schema merely named "cron" may belong to anyone, and its functions would
-- run with the rights of whoever calls them (a superuser, in the code that
-- keeps jobs in step with syncs): the schema must be part of the extension
-- pg_cron and owned by its owner, a superuser (then nobody else can put a
-- table job or a function of the signatures used into it).
CREATE FUNCTION amplitude_sync._cron_schema()
RETURNS pg_catalog.text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.quote_ident(n.nspname)
    FROM pg_catalog.pg_extension e
    JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) e.extowner AND o.rolsuper
    JOIN pg_catalog.pg_depend d
      ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
     AND d.refobjid OPERATOR(pg_catalog.=) e.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'
     AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
    JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) d.objid AND n.nspowner OPERATOR(pg_catalog.=) e.extowner
    WHERE e.extname OPERATOR(pg_catalog.=) 'pg_cron'
$$;
COMMENT ON FUNCTION amplitude_sync._cron_schema() IS
    'The schema of the pg_cron extension installed in this database (quoted), or NULL; never a look-alike schema named cron.';

CREATE FUNCTION amplitude_sync.schedule_sync(name pg_catalog.text, schedule pg_catalog.text)
RETURNS pg_catalog.int8 LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    sync_name pg_catalog.text;
    job pg_catalog.int8;
    cron_schema pg_catalog.text := amplitude_sync._cron_schema();
    cron_database pg_catalog.text;
    command pg_catalog.text;
    elsewhere pg_catalog.text;
BEGIN
    SELECT s.name INTO sync_name FROM amplitude_sync.syncs s WHERE s.name OPERATOR(pg_catalog.=) schedule_sync.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sync "%" does not exist', schedule_sync.name USING ERRCODE = '42704',
            HINT = 'Syncs of roles you are not a member of are not visible; see amplitude_sync.syncs.';
    END IF;
    command := pg_catalog.format('CALL amplitude_sync.run_sync(%L)', sync_name);
    IF cron_schema IS NULL THEN
        -- pg_cron keeps every job in one database (cron.database_name);
        -- jobs for other databases are made there, by a superuser in pg_cron
        -- 1.4. The setting is readable by superusers only.
        BEGIN
            cron_database := pg_catalog.current_setting('cron.database_name', true);
        EXCEPTION WHEN insufficient_privilege THEN
            cron_database := '?';
        END;
        elsewhere := pg_catalog.format('SELECT cron.schedule_in_database(%L, %L, %L, %L, %L);',
                                       'amplitude_sync:' OPERATOR(pg_catalog.||) sync_name, schedule, command,
                                       pg_catalog.current_database(), current_user);
        IF cron_database OPERATOR(pg_catalog.=) '?' THEN
            RAISE EXCEPTION 'pg_cron is not installed in this database' USING ERRCODE = '55000',
                HINT = 'If pg_cron runs in another database (cron.database_name), a superuser there can run: '
                       OPERATOR(pg_catalog.||) elsewhere;
        ELSIF cron_database OPERATOR(pg_catalog.<>) pg_catalog.current_database() THEN
            RAISE EXCEPTION 'pg_cron runs in database "%", not in this one', cron_database USING ERRCODE = '55000',
                DETAIL = 'pg_cron keeps every job in the database named by cron.database_name.',
                HINT = pg_catalog.format('In database %I, a superuser can run: %s', cron_database, elsewhere);
        END IF;
        RAISE EXCEPTION 'pg_cron is not installed in this database' USING ERRCODE = '55000',
            HINT = 'Install pg_cron (shared_preload_libraries = ''pg_cron'', then CREATE EXTENSION pg_cron), or run CALL amplitude_sync.run_sync(...) from any scheduler.';
    END IF;
    EXECUTE pg_catalog.format('SELECT %s.schedule($1, $2, $3)', cron_schema) INTO job
        USING 'amplitude_sync:' OPERATOR(pg_catalog.||) sync_name, schedule, command;
    RETURN job;
END $$;

CREATE FUNCTION amplitude_sync.unschedule_sync(name pg_catalog.text)
RETURNS pg_catalog.bool LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cron_schema pg_catalog.text := amplitude_sync._cron_schema();
    cron_database pg_catalog.text;
    job pg_catalog.int8;
    done pg_catalog.bool := false;
BEGIN
    IF cron_schema IS NULL THEN
        BEGIN
            cron_database := pg_catalog.current_setting('cron.database_name', true);
        EXCEPTION WHEN insufficient_privilege THEN
            cron_database := NULL;
        END;
        IF cron_database OPERATOR(pg_catalog.<>) pg_catalog.current_database() THEN
            RAISE EXCEPTION 'pg_cron runs in database "%", not in this one', cron_database USING ERRCODE = '55000',
                HINT = pg_catalog.format('In database %I, run: SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %L AND database = %L;',
                                         cron_database, 'amplitude_sync:' OPERATOR(pg_catalog.||) name,
                                         pg_catalog.current_database());
        END IF;
        RAISE EXCEPTION 'pg_cron is not installed in this database' USING ERRCODE = '55000';
    END IF;
    -- By id: a superuser sees every role's jobs (and may remove them); other
    -- roles see their own (pg_cron's row security). Only the jobs
    -- schedule_sync makes: its name and its command.
    FOR job IN EXECUTE pg_catalog.format(
                   'SELECT jobid FROM %s.job WHERE jobname OPERATOR(pg_catalog.=) $1 '
                   'AND command OPERATOR(pg_catalog.=) $2 '
                   'AND database OPERATOR(pg_catalog.=) pg_catalog.current_database()', cron_schema)
               USING 'amplitude_sync:' OPERATOR(pg_catalog.||) name,
                     pg_catalog.format('CALL amplitude_sync.run_sync(%L)', name) LOOP
        EXECUTE pg_catalog.format('SELECT %s.unschedule($1)', cron_schema) USING job;
        done := true;
    END LOOP;
    IF NOT done THEN
        RAISE EXCEPTION 'sync "%" has no pg_cron job', name USING ERRCODE = '42704',
            HINT = 'schedule_sync names its job amplitude_sync:<sync>; jobs of other roles are visible to superusers only.';
    END IF;
    RETURN done;
END $$;

-- When a sync's source view is dropped (DROP OWNED BY its owner, or a
-- DROP ... CASCADE of what it reads), the sync goes with it.
CREATE FUNCTION amplitude_sync._drop_syncs_of_dropped_views()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dropped pg_catalog.text;
    names pg_catalog.text[] := '{}';
    cron_schema pg_catalog.text;
    job pg_catalog.int8;
BEGIN
    IF pg_catalog.to_regclass('amplitude_sync.syncs') IS NULL THEN
        RETURN;  -- DROP EXTENSION
    END IF;
    FOR dropped IN
        DELETE FROM amplitude_sync.syncs s
        USING pg_catalog.pg_event_trigger_dropped_objects() o
        WHERE o.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
          AND o.objsubid OPERATOR(pg_catalog.=) 0
          AND s.source_view::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid
        RETURNING s.name
    LOOP
        RAISE NOTICE 'drop cascades to sync "%"', dropped;
        names := names OPERATOR(pg_catalog.||) dropped;
    END LOOP;
    -- The pg_cron jobs schedule_sync made for them would fail every minute.
    cron_schema := amplitude_sync._cron_schema();
    IF cron_schema IS NULL THEN
        RETURN;
    END IF;
    FOREACH dropped IN ARRAY names LOOP
        FOR job IN EXECUTE pg_catalog.format(
                       'SELECT jobid FROM %s.job WHERE jobname OPERATOR(pg_catalog.=) $1 '
                       'AND command OPERATOR(pg_catalog.=) $2 '
                       'AND database OPERATOR(pg_catalog.=) pg_catalog.current_database()', cron_schema)
                   USING 'amplitude_sync:' OPERATOR(pg_catalog.||) dropped,
                         pg_catalog.format('CALL amplitude_sync.run_sync(%L)', dropped) LOOP
            EXECUTE pg_catalog.format('SELECT %s.unschedule($1)', cron_schema) USING job;
            RAISE NOTICE 'pg_cron job "amplitude_sync:%" was unscheduled', dropped;
        END LOOP;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION amplitude_sync._drop_syncs_of_dropped_views() FROM PUBLIC;
CREATE EVENT TRIGGER amplitude_sync_dropped_sources ON sql_drop
    EXECUTE FUNCTION amplitude_sync._drop_syncs_of_dropped_views();
-- DROP EXTENSION: the pg_cron jobs of the syncs go first.
CREATE FUNCTION amplitude_sync._drop_extension_jobs()
RETURNS event_trigger AS 'MODULE_PATHNAME', 'amplitude_sync_drop_extension_jobs' LANGUAGE C;
REVOKE ALL ON FUNCTION amplitude_sync._drop_extension_jobs() FROM PUBLIC;
COMMENT ON FUNCTION amplitude_sync._drop_extension_jobs() IS
    'Event trigger: DROP EXTENSION amplitude_sync unschedules the pg_cron jobs schedule_sync made in this database.';
CREATE EVENT TRIGGER amplitude_sync_drop_extension ON ddl_command_start WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION amplitude_sync._drop_extension_jobs();
-- 1.1 drops the schema with the extension only when CREATE EXTENSION made
-- it (a comment says so). Whether 1.0's did is not known: a schema as
-- CREATE EXTENSION leaves it (no comment, no grants, the extension's owner)
-- is taken for the extension's; any other stays the user's.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_namespace n, pg_catalog.pg_extension e
               WHERE n.nspname OPERATOR(pg_catalog.=) 'amplitude_sync'
                 AND e.extname OPERATOR(pg_catalog.=) 'amplitude_sync'
                 AND n.nspacl IS NULL AND n.nspowner OPERATOR(pg_catalog.=) e.extowner
                 AND pg_catalog.obj_description(n.oid, 'pg_namespace') IS NULL) THEN
        COMMENT ON SCHEMA amplitude_sync IS 'Made by CREATE EXTENSION amplitude_sync: DROP EXTENSION drops it when it is empty.';
    END IF;
END $$;

------------------------------------------------------------------------------
-- Operating syncs: health at a glance, and self-documentation.
------------------------------------------------------------------------------
-- One row per sync the current role may see (security_invoker: row-level
-- security applies to the caller, not to the view's owner).
CREATE VIEW amplitude_sync.sync_health WITH (security_invoker = true) AS
SELECT s.name AS sync,
       pg_catalog.pg_get_userbyid(c.relowner) AS owner,
       s.object,
       COALESCE(f.srvname, s.server) AS server,
       last.run_id AS last_run_id,
       last.started_at AS last_run_at,
       last.status AS last_status,
       (SELECT pg_catalog.max(r.finished_at) FROM amplitude_sync.sync_runs r
        WHERE r.sync_id OPERATOR(pg_catalog.=) s.sync_id AND r.status OPERATOR(pg_catalog.=) 'succeeded')
           AS last_success_at,
       (SELECT pg_catalog.count(*) FROM amplitude_sync.sync_runs r
        WHERE r.sync_id OPERATOR(pg_catalog.=) s.sync_id AND r.status OPERATOR(pg_catalog.=) 'failed'
          AND r.run_id OPERATOR(pg_catalog.>) COALESCE(
              (SELECT pg_catalog.max(ok.run_id) FROM amplitude_sync.sync_runs ok
               WHERE ok.sync_id OPERATOR(pg_catalog.=) s.sync_id AND ok.status OPERATOR(pg_catalog.=) 'succeeded'), 0))
           AS consecutive_failures,
       (SELECT COALESCE(pg_catalog.sum(r.sent), 0) FROM amplitude_sync.sync_runs r
        WHERE r.sync_id OPERATOR(pg_catalog.=) s.sync_id
          AND r.started_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) '24 hours'::pg_catalog.interval))
           AS sent_24h,
       (SELECT COALESCE(pg_catalog.sum(r.rejected), 0) FROM amplitude_sync.sync_runs r
        WHERE r.sync_id OPERATOR(pg_catalog.=) s.sync_id
          AND r.started_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) '24 hours'::pg_catalog.interval))
           AS rejected_24h,
       (SELECT r.error FROM amplitude_sync.sync_runs r
        WHERE r.sync_id OPERATOR(pg_catalog.=) s.sync_id AND r.status OPERATOR(pg_catalog.=) 'failed'
        ORDER BY r.run_id DESC LIMIT 1) AS last_error
FROM amplitude_sync.syncs s
JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) s.source_view::pg_catalog.oid
LEFT JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
     AND d.objid OPERATOR(pg_catalog.=) c.oid
     AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_foreign_server'::pg_catalog.regclass
LEFT JOIN pg_catalog.pg_foreign_server f ON f.oid OPERATOR(pg_catalog.=) d.refobjid
LEFT JOIN LATERAL (SELECT r.run_id, r.started_at, r.status FROM amplitude_sync.sync_runs r
                   WHERE r.sync_id OPERATOR(pg_catalog.=) s.sync_id ORDER BY r.run_id DESC LIMIT 1) last ON true;
GRANT SELECT ON amplitude_sync.sync_health TO PUBLIC;
COMMENT ON VIEW amplitude_sync.sync_health IS
    'One row per sync you may see: its last run, last success, consecutive failures, the last 24 hours and the last error.';

COMMENT ON FUNCTION amplitude_sync.fdw_validator(pg_catalog.text[], pg_catalog.oid) IS
    'Checks the options of amplitude_sync servers (region, endpoint, timeouts, ...) and user mappings (api_key).';
COMMENT ON FUNCTION amplitude_sync.schedule_sync(pg_catalog.text, pg_catalog.text) IS
    'Schedules CALL amplitude_sync.run_sync(name) with pg_cron, as a job "amplitude_sync:<name>" of the current role.';
COMMENT ON FUNCTION amplitude_sync.unschedule_sync(pg_catalog.text) IS
    'Removes the pg_cron job that schedule_sync made.';
COMMENT ON TYPE amplitude_sync.run_report IS
    'What a run did: rows read, sent, rejected, not sent and unchanged (saved syncs), requests, retries, time.';
COMMENT ON TABLE amplitude_sync.sync_claims IS
    'The overlap guard of saved syncs: which session runs a sync, and its private lock key. Not readable by users.';

COMMENT ON COLUMN amplitude_sync.sync_runs.run_id IS 'The run''s number (rejected_records.run_id).';
COMMENT ON COLUMN amplitude_sync.sync_runs.sync_id IS 'The saved sync run (NULL for one-shot calls); kept when the sync is dropped.';
COMMENT ON COLUMN amplitude_sync.sync_runs.sync_name IS 'The sync''s name when it ran.';
COMMENT ON COLUMN amplitude_sync.sync_runs.function_name IS 'amplitude_send_events, amplitude_identify, amplitude_group_identify, run_sync or flush_outbox.';
COMMENT ON COLUMN amplitude_sync.sync_runs.server_name IS 'The foreign server (Amplitude project) it sent to.';
COMMENT ON COLUMN amplitude_sync.sync_runs.endpoint IS 'Amplitude''s endpoint: /2/httpapi, /batch, /identify or /groupidentify.';
COMMENT ON COLUMN amplitude_sync.sync_runs.run_by IS 'The role that called it.';
COMMENT ON COLUMN amplitude_sync.sync_runs.started_at IS 'When it started.';
COMMENT ON COLUMN amplitude_sync.sync_runs.finished_at IS 'When it ended (NULL while running).';
COMMENT ON COLUMN amplitude_sync.sync_runs.status IS 'running, succeeded, failed (see error) or skipped (the sync was running elsewhere).';
COMMENT ON COLUMN amplitude_sync.sync_runs.rows_read IS 'Rows read from the source; = sent + rejected + not_sent + unchanged.';
COMMENT ON COLUMN amplitude_sync.sync_runs.sent IS 'Rows Amplitude accepted.';
COMMENT ON COLUMN amplitude_sync.sync_runs.rejected IS 'Rows refused, by our checks or by Amplitude, with a reason in rejected_records.';
COMMENT ON COLUMN amplitude_sync.sync_runs.not_sent IS 'Rows not delivered (retry budget, quota, the run stopped); a later run can send them.';
COMMENT ON COLUMN amplitude_sync.sync_runs.unchanged IS 'Saved syncs: rows whose payload Amplitude already has (not sent again).';
COMMENT ON COLUMN amplitude_sync.sync_runs.requests IS 'HTTP requests made.';
COMMENT ON COLUMN amplitude_sync.sync_runs.retries IS 'Requests that carried records already tried.';
COMMENT ON COLUMN amplitude_sync.sync_runs.bytes_sent IS 'Request body bytes sent.';
COMMENT ON COLUMN amplitude_sync.sync_runs.read_seconds IS 'Time spent reading the source (sampled).';
COMMENT ON COLUMN amplitude_sync.sync_runs.encode_seconds IS 'Time spent encoding JSON (sampled).';
COMMENT ON COLUMN amplitude_sync.sync_runs.send_seconds IS 'Time spent building requests and waiting on Amplitude.';
COMMENT ON COLUMN amplitude_sync.sync_runs.pacing_seconds IS 'Time nothing was in flight because pacing held records back (per-ID rates, 429 pauses, max_events_per_second).';
COMMENT ON COLUMN amplitude_sync.sync_runs.error IS 'Why the run failed or was skipped.';
COMMENT ON COLUMN amplitude_sync.rejected_records.run_id IS 'The run (sync_runs.run_id).';
COMMENT ON COLUMN amplitude_sync.rejected_records.row_number IS '1-based position of the row in what the run read (flush_outbox runs: the outbox entry_id).';
COMMENT ON COLUMN amplitude_sync.rejected_records.outcome IS 'rejected (will not pass as it is) or not_sent (a re-run can send it).';
COMMENT ON COLUMN amplitude_sync.rejected_records.field IS 'The offending column or Amplitude field.';
COMMENT ON COLUMN amplitude_sync.rejected_records.reason IS 'Why, in words.';
COMMENT ON COLUMN amplitude_sync.rejected_records.user_id IS 'The record''s user_id, if any.';
COMMENT ON COLUMN amplitude_sync.rejected_records.device_id IS 'The record''s device_id, if any.';
COMMENT ON COLUMN amplitude_sync.rejected_records.insert_id IS 'The event''s insert_id, if any.';
COMMENT ON COLUMN amplitude_sync.rejected_records.event_type IS 'The event''s type, if any.';
COMMENT ON COLUMN amplitude_sync.rejected_records.group_type IS 'The group''s type, if any.';
COMMENT ON COLUMN amplitude_sync.rejected_records.group_value IS 'The group''s value, if any.';
COMMENT ON COLUMN amplitude_sync.rejected_records.payload IS 'The record as it was (or would have been) sent, without the API key.';
COMMENT ON COLUMN amplitude_sync.rejected_records.recorded_at IS 'When it was recorded.';
COMMENT ON COLUMN amplitude_sync.syncs.sync_id IS 'The sync''s number (sync_runs.sync_id).';
COMMENT ON COLUMN amplitude_sync.syncs.name IS 'The sync''s name, unique.';
COMMENT ON COLUMN amplitude_sync.syncs.server IS 'The server when the sync was saved (it follows a rename: see sync_health.server).';
COMMENT ON COLUMN amplitude_sync.syncs.object IS 'event, user, device or group.';
COMMENT ON COLUMN amplitude_sync.syncs.behaviour IS 'append (events) or update_or_create (users, devices, groups).';
COMMENT ON COLUMN amplitude_sync.syncs.source IS 'The source as given: a query, or a table or view name.';
COMMENT ON COLUMN amplitude_sync.syncs.source_view IS 'The view holding the source, owned by the sync''s owner.';
COMMENT ON COLUMN amplitude_sync.syncs.search_path IS 'The search_path the source was checked under; its functions run with it.';
COMMENT ON COLUMN amplitude_sync.syncs.operations IS 'Identify operations per column ($set, $setOnce, ...).';
COMMENT ON COLUMN amplitude_sync.syncs.nulls IS 'skip (leave NULL columns out) or unset (remove those properties).';
COMMENT ON COLUMN amplitude_sync.syncs.properties_event IS 'Users and devices: the event type also sent to make updates visible at once, or NULL.';
COMMENT ON COLUMN amplitude_sync.syncs.api IS 'Events: httpapi (/2/httpapi) or batch (/batch).';
COMMENT ON COLUMN amplitude_sync.syncs.batch_size IS 'Records per request (NULL: the endpoint''s maximum).';
COMMENT ON COLUMN amplitude_sync.syncs.min_id_length IS 'Shortest user_id/device_id accepted.';
COMMENT ON COLUMN amplitude_sync.syncs.created_at IS 'When the sync was created.';
COMMENT ON COLUMN amplitude_sync.syncs.updated_at IS 'When it was last changed.';
COMMENT ON COLUMN amplitude_sync.syncs.cursor_column IS 'Events: the column a watermark run reads new rows by (created_at, a serial id), or NULL.';
COMMENT ON COLUMN amplitude_sync.syncs.lookback IS 'Watermark mode: how far below the watermark a run reads again, for late rows (''1 hour'', or a number of ids).';
COMMENT ON COLUMN amplitude_sync.syncs.watermark IS 'Watermark mode: the highest cursor value of the last complete run (microseconds for times and dates).';
COMMENT ON COLUMN amplitude_sync.syncs.ledger_floor IS 'Watermark mode: rows below it are never read again, and their insert_ids are pruned from the state.';

-- The same run with its report in one INOUT argument, for PL/pgSQL (which
-- needs a variable for each INOUT argument of a CALL):
--   DECLARE r amplitude_sync.run_report; BEGIN CALL amplitude_sync.run_sync_into('s', r); ...
CREATE PROCEDURE amplitude_sync.run_sync_into(name pg_catalog.text, INOUT report amplitude_sync.run_report)
AS 'MODULE_PATHNAME', 'amplitude_sync_run_sync_into'
LANGUAGE C;
COMMENT ON PROCEDURE amplitude_sync.run_sync_into(pg_catalog.text, amplitude_sync.run_report) IS
    'Runs a saved sync like run_sync and returns its report in one amplitude_sync.run_report (for PL/pgSQL).';
REVOKE ALL ON PROCEDURE amplitude_sync.run_sync_into FROM PUBLIC;

-- Runs under way, from shared memory: one-shot calls and saved syncs alike,
-- while they run (a one-shot call's own transaction is invisible until it
-- ends). Needs amplitude_sync in shared_preload_libraries on PostgreSQL 15
-- and 16; works without on 17+.
CREATE FUNCTION amplitude_sync._run_progress(
    OUT pid                pg_catalog.int4,
    OUT run_id             pg_catalog.int8,
    OUT what               pg_catalog.text,
    OUT started_at         pg_catalog.timestamptz,
    OUT rows_read          pg_catalog.int8,
    OUT sent               pg_catalog.int8,
    OUT rejected           pg_catalog.int8,
    OUT requests_in_flight pg_catalog.int8)
RETURNS SETOF record AS 'MODULE_PATHNAME', 'amplitude_sync_run_progress' LANGUAGE C;
COMMENT ON FUNCTION amplitude_sync._run_progress() IS 'The rows of amplitude_sync.run_progress.';
CREATE VIEW amplitude_sync.run_progress AS SELECT * FROM amplitude_sync._run_progress();
COMMENT ON VIEW amplitude_sync.run_progress IS
    'Runs under way in this database (one-shot calls and saved syncs) of the roles you have the privileges of; all with pg_read_all_stats.';
COMMENT ON COLUMN amplitude_sync.run_progress.pid IS 'The backend running it.';
COMMENT ON COLUMN amplitude_sync.run_progress.run_id IS 'Its sync_runs row (visible to others once committed: saved syncs commit as they go).';
COMMENT ON COLUMN amplitude_sync.run_progress.what IS 'The function, or sync "name".';
COMMENT ON COLUMN amplitude_sync.run_progress.started_at IS 'When the run started.';
COMMENT ON COLUMN amplitude_sync.run_progress.rows_read IS 'Rows read from the query so far.';
COMMENT ON COLUMN amplitude_sync.run_progress.sent IS 'Records Amplitude accepted so far.';
COMMENT ON COLUMN amplitude_sync.run_progress.rejected IS 'Records rejected so far.';
COMMENT ON COLUMN amplitude_sync.run_progress.requests_in_flight IS 'Requests sent and not yet answered.';
GRANT SELECT ON amplitude_sync.run_progress TO PUBLIC;

------------------------------------------------------------------------------
-- The transactional outbox: track() and identify() write here, in the
-- caller's transaction (nothing leaves when it rolls back; a committed entry
-- survives a crash: the table is WAL-logged); flush_outbox() delivers the
-- entries and removes them. Each entry is the record exactly as it will be
-- sent (validated and encoded when it was written), under the role whose
-- user mapping sends it. Only the extension writes it; each role sees its
-- own entries.
------------------------------------------------------------------------------
CREATE TABLE amplitude_sync.outbox (
    entry_id       bigserial PRIMARY KEY,
    server         pg_catalog.name NOT NULL,
    endpoint       pg_catalog.text NOT NULL
                   CHECK (endpoint OPERATOR(pg_catalog.=) ANY (ARRAY['/2/httpapi', '/identify', '/groupidentify'])),
    queued_by      pg_catalog.regrole NOT NULL,
    queued_at      pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    user_id        pg_catalog.text,
    device_id      pg_catalog.text,
    insert_id      pg_catalog.text,
    event_type     pg_catalog.text,
    group_type     pg_catalog.text,
    group_value    pg_catalog.text,
    property_count pg_catalog.int4 NOT NULL DEFAULT 0,
    payload        pg_catalog.json NOT NULL
);
CREATE INDEX ON amplitude_sync.outbox (server, queued_by, endpoint, entry_id);
-- The history prune at each run's start (frequent with the outbox worker) reads by time.
CREATE INDEX ON amplitude_sync.sync_runs (started_at);
ALTER TABLE amplitude_sync.outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_entries ON amplitude_sync.outbox FOR SELECT
    USING (pg_catalog.pg_has_role(queued_by::pg_catalog.oid, 'MEMBER'));
GRANT SELECT ON amplitude_sync.outbox TO PUBLIC;
-- Committed entries are data: pg_dump keeps them.
SELECT pg_catalog.pg_extension_config_dump('amplitude_sync.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('amplitude_sync.outbox_entry_id_seq', '');
COMMENT ON TABLE amplitude_sync.outbox IS
    'Records written by track() and identify() (and table captures), delivered after commit by flush_outbox() and removed.';
COMMENT ON COLUMN amplitude_sync.outbox.entry_id IS 'The entry''s number: the order of delivery; rejected_records.row_number of a flush_outbox run.';
COMMENT ON COLUMN amplitude_sync.outbox.server IS 'The foreign server (Amplitude project) it goes to, by name (flush before renaming a server).';
COMMENT ON COLUMN amplitude_sync.outbox.endpoint IS '/2/httpapi (events), /identify (users, devices) or /groupidentify (groups).';
COMMENT ON COLUMN amplitude_sync.outbox.queued_by IS 'The role whose user mapping (API key) sends it.';
COMMENT ON COLUMN amplitude_sync.outbox.queued_at IS 'When it was written (the transaction commits later).';
COMMENT ON COLUMN amplitude_sync.outbox.user_id IS 'The record''s user_id, if any.';
COMMENT ON COLUMN amplitude_sync.outbox.device_id IS 'The record''s device_id, if any.';
COMMENT ON COLUMN amplitude_sync.outbox.insert_id IS 'Events: the insert_id (given, or derived when the entry was written).';
COMMENT ON COLUMN amplitude_sync.outbox.event_type IS 'Events: the event type.';
COMMENT ON COLUMN amplitude_sync.outbox.group_type IS 'Groups: the group type.';
COMMENT ON COLUMN amplitude_sync.outbox.group_value IS 'Groups: the group value.';
COMMENT ON COLUMN amplitude_sync.outbox.property_count IS 'Identifications: the properties carried (Amplitude limits them per request).';
COMMENT ON COLUMN amplitude_sync.outbox.payload IS 'The record exactly as it is sent, without the API key.';

CREATE FUNCTION amplitude_sync.track(server pg_catalog.name, event pg_catalog.jsonb)
RETURNS pg_catalog.int8
AS 'MODULE_PATHNAME', 'amplitude_sync_track'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.track(pg_catalog.name, pg_catalog.jsonb) IS
    'Queues one event (keys named like amplitude_send_events columns) in the outbox, in the current transaction; returns its entry_id.';

CREATE FUNCTION amplitude_sync.identify(server pg_catalog.name, object pg_catalog.text, identification pg_catalog.jsonb)
RETURNS pg_catalog.int8
AS 'MODULE_PATHNAME', 'amplitude_sync_outbox_identify'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.identify(pg_catalog.name, pg_catalog.text, pg_catalog.jsonb) IS
    'Queues one user, device or group identification (keys named like amplitude_identify columns) in the outbox; returns its entry_id.';

CREATE FUNCTION amplitude_sync.flush_outbox(server pg_catalog.name)
RETURNS SETOF amplitude_sync.run_report
AS 'MODULE_PATHNAME', 'amplitude_sync_flush_outbox'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.flush_outbox(pg_catalog.name) IS
    'Delivers the committed outbox entries of a server (of the roles you are a member of), each with its role''s key; one run per role and endpoint.';

REVOKE ALL ON FUNCTION amplitude_sync.track(pg_catalog.name, pg_catalog.jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION amplitude_sync.identify(pg_catalog.name, pg_catalog.text, pg_catalog.jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION amplitude_sync.flush_outbox(pg_catalog.name) FROM PUBLIC;

-- The outbox at a glance: what waits, per server, role and endpoint, since
-- when, and how that role's last flush to it went (security_invoker: each
-- role sees its own entries and runs).
CREATE VIEW amplitude_sync.outbox_health WITH (security_invoker = true) AS
SELECT g.server, g.queued_by, g.endpoint, g.waiting, g.oldest_queued_at,
       pg_catalog.now() OPERATOR(pg_catalog.-) g.oldest_queued_at AS oldest_age,
       last.started_at AS last_flush_at, last.status AS last_status, last.error AS last_error
FROM (SELECT o.server, o.queued_by, o.endpoint, pg_catalog.count(*) AS waiting,
             pg_catalog.min(o.queued_at) AS oldest_queued_at
      FROM amplitude_sync.outbox o GROUP BY o.server, o.queued_by, o.endpoint) g
LEFT JOIN LATERAL (SELECT r.started_at, r.status, r.error FROM amplitude_sync.sync_runs r
                   WHERE r.function_name OPERATOR(pg_catalog.=) 'flush_outbox'
                     AND r.server_name OPERATOR(pg_catalog.=) g.server::pg_catalog.text
                     AND r.run_by::pg_catalog.oid OPERATOR(pg_catalog.=) g.queued_by::pg_catalog.oid
                     AND r.endpoint OPERATOR(pg_catalog.=) g.endpoint
                   ORDER BY r.run_id DESC LIMIT 1) last ON true;
GRANT SELECT ON amplitude_sync.outbox_health TO PUBLIC;
COMMENT ON VIEW amplitude_sync.outbox_health IS
    'Outbox entries waiting, per server, role and endpoint: how many, the oldest, and that role''s last flush (status, error).';

------------------------------------------------------------------------------
-- Table capture: triggers that turn a table's row changes into outbox
-- entries through the field mapper. A capture's mapping (a select list over
-- the changed row, "new") is kept as a view, amplitude_sync.capture_<id>_mapping,
-- owned by the capture's owner, as a sync's source is: the mapping runs as
-- that owner (read-only), its entries go with that owner's key, DROP ROLE is
-- refused while it owns captures (DROP OWNED drops them), dropping the table
-- needs CASCADE (which drops the capture), and row-level security shows a
-- capture only to members of its owner. Only the extension writes this table.
------------------------------------------------------------------------------
CREATE TABLE amplitude_sync.captures (
    capture_id   serial PRIMARY KEY,
    source       pg_catalog.regclass NOT NULL,
    server       pg_catalog.name NOT NULL,
    object       pg_catalog.text NOT NULL
                 CHECK (object OPERATOR(pg_catalog.=) ANY (ARRAY['event', 'user', 'device', 'group'])),
    mapping      pg_catalog.text NOT NULL,
    mapping_view pg_catalog.regclass NOT NULL,
    search_path  pg_catalog.text NOT NULL,
    on_insert    pg_catalog.bool NOT NULL,
    on_update    pg_catalog.bool NOT NULL,
    on_delete    pg_catalog.bool NOT NULL,
    created_at   pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now()
);
ALTER TABLE amplitude_sync.captures ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_captures ON amplitude_sync.captures FOR SELECT
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c
                                   WHERE c.oid OPERATOR(pg_catalog.=) mapping_view::pg_catalog.oid), 'MEMBER'));
GRANT SELECT ON amplitude_sync.captures TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('amplitude_sync.captures', '');
SELECT pg_catalog.pg_extension_config_dump('amplitude_sync.captures_capture_id_seq', '');
COMMENT ON TABLE amplitude_sync.captures IS
    'Table captures: triggers that queue row changes in the outbox; change them with capture() and uncapture().';
COMMENT ON COLUMN amplitude_sync.captures.capture_id IS 'The capture''s number (its triggers are amplitude_sync_capture_<id>_<operation>).';
COMMENT ON COLUMN amplitude_sync.captures.source IS 'The captured table.';
COMMENT ON COLUMN amplitude_sync.captures.server IS 'The foreign server (Amplitude project) its entries go to.';
COMMENT ON COLUMN amplitude_sync.captures.object IS 'event, user, device or group: what each row change becomes.';
COMMENT ON COLUMN amplitude_sync.captures.mapping IS 'The select list over the changed row "new", as given (new.* when none was).';
COMMENT ON COLUMN amplitude_sync.captures.mapping_view IS 'The view holding the mapping, owned by the capture''s owner.';
COMMENT ON COLUMN amplitude_sync.captures.search_path IS 'The search_path the mapping was checked under; it runs with it.';
COMMENT ON COLUMN amplitude_sync.captures.on_insert IS 'Inserted rows are queued.';
COMMENT ON COLUMN amplitude_sync.captures.on_update IS 'Updated rows are queued (when the row changed).';
COMMENT ON COLUMN amplitude_sync.captures.on_delete IS 'Deleted rows are queued (events only; the mapping sees the deleted row as "new").';
COMMENT ON COLUMN amplitude_sync.captures.created_at IS 'When the capture was created.';

CREATE FUNCTION amplitude_sync.capture(
    source    pg_catalog.regclass,
    server    pg_catalog.name,
    object    pg_catalog.text,
    mapping   pg_catalog.text DEFAULT NULL,
    on_insert pg_catalog.bool DEFAULT true,
    on_update pg_catalog.bool DEFAULT true,
    on_delete pg_catalog.bool DEFAULT false)
RETURNS pg_catalog.int4
AS 'MODULE_PATHNAME', 'amplitude_sync_capture'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.capture(pg_catalog.regclass, pg_catalog.name, pg_catalog.text, pg_catalog.text, pg_catalog.bool, pg_catalog.bool, pg_catalog.bool) IS
    'Captures a table: each inserted (updated, deleted) row, mapped by a select list over "new", is queued in the outbox in the writing transaction; returns the capture_id.';

CREATE FUNCTION amplitude_sync.uncapture(source pg_catalog.regclass, server pg_catalog.name DEFAULT NULL,
                                         object pg_catalog.text DEFAULT NULL)
RETURNS pg_catalog.int4
AS 'MODULE_PATHNAME', 'amplitude_sync_uncapture'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION amplitude_sync.uncapture(pg_catalog.regclass, pg_catalog.name, pg_catalog.text) IS
    'Removes the captures of a table (of that server and object, when given) that you may manage, with their triggers; returns how many.';

CREATE FUNCTION amplitude_sync._capture_trigger()
RETURNS trigger
AS 'MODULE_PATHNAME', 'amplitude_sync_capture_trigger'
LANGUAGE C;
COMMENT ON FUNCTION amplitude_sync._capture_trigger() IS
    'The trigger of table captures (internal: capture() creates the triggers).';

REVOKE ALL ON FUNCTION amplitude_sync.capture(pg_catalog.regclass, pg_catalog.name, pg_catalog.text, pg_catalog.text, pg_catalog.bool, pg_catalog.bool, pg_catalog.bool) FROM PUBLIC;
REVOKE ALL ON FUNCTION amplitude_sync.uncapture(pg_catalog.regclass, pg_catalog.name, pg_catalog.text) FROM PUBLIC;
REVOKE ALL ON FUNCTION amplitude_sync._capture_trigger() FROM PUBLIC;

-- When a capture's mapping view is dropped (DROP OWNED BY its owner, DROP
-- TABLE ... CASCADE), the capture and its triggers go with it.
CREATE FUNCTION amplitude_sync._drop_captures_of_dropped_views()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    gone pg_catalog.record;
BEGIN
    IF pg_catalog.to_regclass('amplitude_sync.captures') IS NULL THEN
        RETURN;  -- DROP EXTENSION
    END IF;
    FOR gone IN
        DELETE FROM amplitude_sync.captures cap
        USING pg_catalog.pg_event_trigger_dropped_objects() o
        WHERE o.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
          AND o.objsubid OPERATOR(pg_catalog.=) 0
          AND cap.mapping_view::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid
        RETURNING cap.capture_id, cap.source::pg_catalog.oid AS source
    LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) gone.source) THEN
            EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s',
                                      'amplitude_sync_capture_' OPERATOR(pg_catalog.||) gone.capture_id OPERATOR(pg_catalog.||) '_insert',
                                      gone.source::pg_catalog.regclass);
            EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s',
                                      'amplitude_sync_capture_' OPERATOR(pg_catalog.||) gone.capture_id OPERATOR(pg_catalog.||) '_update',
                                      gone.source::pg_catalog.regclass);
            EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s',
                                      'amplitude_sync_capture_' OPERATOR(pg_catalog.||) gone.capture_id OPERATOR(pg_catalog.||) '_delete',
                                      gone.source::pg_catalog.regclass);
        END IF;
        RAISE NOTICE 'drop cascades to capture %', gone.capture_id;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION amplitude_sync._drop_captures_of_dropped_views() FROM PUBLIC;
COMMENT ON FUNCTION amplitude_sync._drop_captures_of_dropped_views() IS
    'Event trigger: removes the captures (and their triggers) whose mapping view was dropped.';
CREATE EVENT TRIGGER amplitude_sync_dropped_captures ON sql_drop
    EXECUTE FUNCTION amplitude_sync._drop_captures_of_dropped_views();

-- sync_state is keyed by its keys' 64-bit hash (see the install script).
CREATE FUNCTION amplitude_sync.record_key_hash(record_key pg_catalog.text)
RETURNS pg_catalog.int8
AS 'MODULE_PATHNAME', 'amplitude_sync_record_key_hash'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION amplitude_sync.record_key_hash(pg_catalog.text) IS
    'The 64-bit hash sync_state is keyed by: WHERE key_hash = amplitude_sync.record_key_hash(''user-1'') finds a record''s state.';
-- (Room on each page for HOT updates first: adding the column rewrites the table.)
ALTER TABLE amplitude_sync.sync_state SET (fillfactor = 90);
ALTER TABLE amplitude_sync.sync_state
    ADD COLUMN key_hash pg_catalog.int8 NOT NULL GENERATED ALWAYS AS (amplitude_sync.record_key_hash(record_key)) STORED;
-- Two keys of a sync with the same hash keep one row: an identification
-- is then sent again by the next run; an event stays taken for sent (1.1
-- runs look events up by the hash alone).
DELETE FROM amplitude_sync.sync_state a USING amplitude_sync.sync_state b
WHERE a.sync_id OPERATOR(pg_catalog.=) b.sync_id AND a.key_hash OPERATOR(pg_catalog.=) b.key_hash
  AND a.record_key OPERATOR(pg_catalog.>) b.record_key;
ALTER TABLE amplitude_sync.sync_state DROP CONSTRAINT sync_state_pkey, ADD PRIMARY KEY (sync_id, key_hash);

-- The state in two tables read through the view sync_state (see the install
-- script): 1.0's rows are the entries, and no run has changed them since.
DROP POLICY own_state ON amplitude_sync.sync_state;
ALTER TABLE amplitude_sync.sync_state RENAME TO state_entries;
ALTER INDEX amplitude_sync.sync_state_pkey RENAME TO state_entries_pkey;
ALTER INDEX amplitude_sync.sync_state_position RENAME TO state_entries_position;
CREATE TABLE amplitude_sync.state_changes (LIKE amplitude_sync.state_entries INCLUDING GENERATED,
    PRIMARY KEY (sync_id, key_hash)
) WITH (fillfactor = 90);
CREATE INDEX state_changes_position ON amplitude_sync.state_changes (sync_id, position) WHERE position IS NOT NULL;
CREATE VIEW amplitude_sync.sync_state WITH (security_invoker = true) AS
    SELECT c.sync_id, c.record_key, c.fingerprint, c.sent_at, c.rejected_reason, c.position, c.key_hash
    FROM amplitude_sync.state_changes c
    UNION ALL
    SELECT e.sync_id, e.record_key, e.fingerprint, e.sent_at, e.rejected_reason, e.position, e.key_hash
    FROM amplitude_sync.state_entries e
    WHERE NOT EXISTS (SELECT FROM amplitude_sync.state_changes c
                      WHERE c.sync_id OPERATOR(pg_catalog.=) e.sync_id AND c.key_hash OPERATOR(pg_catalog.=) e.key_hash);
ALTER TABLE amplitude_sync.state_changes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_state ON amplitude_sync.state_entries FOR SELECT
    USING (EXISTS (SELECT FROM amplitude_sync.syncs s
                   WHERE s.sync_id OPERATOR(pg_catalog.=) state_entries.sync_id));
CREATE POLICY own_state ON amplitude_sync.state_changes FOR SELECT
    USING (EXISTS (SELECT FROM amplitude_sync.syncs s
                   WHERE s.sync_id OPERATOR(pg_catalog.=) state_changes.sync_id));
REVOKE ALL ON amplitude_sync.state_changes, amplitude_sync.sync_state FROM PUBLIC;
GRANT SELECT ON amplitude_sync.state_changes, amplitude_sync.sync_state TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('amplitude_sync.state_changes', '');
COMMENT ON VIEW amplitude_sync.sync_state IS
    'Per saved sync and record: the fingerprint of the payload Amplitude last confirmed (state_changes over state_entries).';
COMMENT ON TABLE amplitude_sync.state_entries IS
    'The bulk of the saved syncs'' state (see sync_state); a record''s row in state_changes replaces its row here.';
COMMENT ON TABLE amplitude_sync.state_changes IS
    'What runs wrote to the saved syncs'' state since their last merge into state_entries (see sync_state).';
COMMENT ON COLUMN amplitude_sync.sync_state.sync_id IS 'The sync.';
COMMENT ON COLUMN amplitude_sync.sync_state.record_key IS 'user_id, device_id, group type and value, or insert_id.';
COMMENT ON COLUMN amplitude_sync.sync_state.fingerprint IS '128-bit hash of the column values of the row Amplitude confirmed (or refused), with the columns and settings that shape its payload.';
COMMENT ON COLUMN amplitude_sync.sync_state.sent_at IS 'When Amplitude confirmed (or refused) it.';
COMMENT ON COLUMN amplitude_sync.sync_state.rejected_reason IS 'Set when the record was rejected: it is not sent again until its row changes (resync forces it).';
COMMENT ON COLUMN amplitude_sync.sync_state.position IS 'Watermark syncs: the event''s cursor value; entries below the ledger floor are pruned.';
COMMENT ON COLUMN amplitude_sync.sync_state.key_hash IS 'record_key_hash(record_key): the key the state is looked up by.';

-- State rows are written by the million, and the foreign key to syncs
-- checked each one: a trigger deletes a dropped sync's state now.
ALTER TABLE amplitude_sync.state_entries DROP CONSTRAINT sync_state_sync_id_fkey;
-- A sync's state goes with the sync. (Not a foreign key: a run writes a state
-- row per record, millions for a large source, and a foreign key checks each
-- one with a query of its own. Instead a run locks its sync's row once per
-- batch of state rows, so a drop waits for the batch to commit; and
-- create_sync clears any state left under its new id.)
CREATE FUNCTION amplitude_sync._drop_state_of_dropped_syncs()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
        TRUNCATE amplitude_sync.state_entries, amplitude_sync.state_changes;
    ELSE
        DELETE FROM amplitude_sync.state_entries st USING dropped_syncs d
        WHERE st.sync_id OPERATOR(pg_catalog.=) d.sync_id;
        DELETE FROM amplitude_sync.state_changes st USING dropped_syncs d
        WHERE st.sync_id OPERATOR(pg_catalog.=) d.sync_id;
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION amplitude_sync._drop_state_of_dropped_syncs() FROM PUBLIC;
COMMENT ON FUNCTION amplitude_sync._drop_state_of_dropped_syncs() IS
    'Trigger: deletes the state of the syncs deleted from amplitude_sync.syncs (all of it on TRUNCATE).';
CREATE TRIGGER drop_state AFTER DELETE ON amplitude_sync.syncs REFERENCING OLD TABLE AS dropped_syncs
    FOR EACH STATEMENT EXECUTE FUNCTION amplitude_sync._drop_state_of_dropped_syncs();
CREATE TRIGGER truncate_state AFTER TRUNCATE ON amplitude_sync.syncs
    FOR EACH STATEMENT EXECUTE FUNCTION amplitude_sync._drop_state_of_dropped_syncs();
