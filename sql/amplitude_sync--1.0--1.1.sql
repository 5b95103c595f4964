-- amplitude_sync 1.0 -> 1.1: every write through the extension (no write
-- grants for PUBLIC), sources kept as views owned by the syncs' owners,
-- run history linked to syncs by id, the overlap guard, skipped runs.
\echo Use "ALTER EXTENSION amplitude_sync UPDATE TO '1.1'" to load this file. \quit

-- Run history by sync id; skipped runs.
ALTER TABLE amplitude_sync.sync_runs ADD COLUMN sync_id pg_catalog.int4;
-- (1.0 linked runs by name: a run is the sync's if it ran as a member of its owner.)
UPDATE amplitude_sync.sync_runs r SET sync_id = s.sync_id
FROM amplitude_sync.syncs s WHERE s.name OPERATOR(pg_catalog.=) r.sync_name
  AND pg_catalog.pg_has_role(r.run_by::pg_catalog.oid, s.owner::pg_catalog.oid, 'MEMBER');
ALTER TABLE amplitude_sync.sync_runs DROP CONSTRAINT sync_runs_status_check;
ALTER TABLE amplitude_sync.sync_runs ADD CONSTRAINT sync_runs_status_check
    CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'succeeded', 'failed', 'skipped']));
CREATE INDEX ON amplitude_sync.sync_runs (sync_id, run_id);

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
CREATE FUNCTION amplitude_sync._upgrade_source_view(pg_catalog.int4, pg_catalog.text, pg_catalog.text, pg_catalog.oid)
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
            view := amplitude_sync._upgrade_source_view(s.sync_id, s.name, s.source_query, s.owner::pg_catalog.oid);
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
DROP FUNCTION amplitude_sync._upgrade_source_view(pg_catalog.int4, pg_catalog.text, pg_catalog.text, pg_catalog.oid);
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
    min_id_length    pg_catalog.int4  DEFAULT 5)
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
    new_name         pg_catalog.text  DEFAULT NULL)
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
CREATE FUNCTION amplitude_sync.schedule_sync(name pg_catalog.text, schedule pg_catalog.text)
RETURNS pg_catalog.int8 LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    sync_name pg_catalog.text;
    job pg_catalog.int8;
BEGIN
    SELECT s.name INTO sync_name FROM amplitude_sync.syncs s WHERE s.name OPERATOR(pg_catalog.=) schedule_sync.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sync "%" does not exist', schedule_sync.name USING ERRCODE = '42704',
            HINT = 'Syncs of roles you are not a member of are not visible; see amplitude_sync.syncs.';
    END IF;
    IF pg_catalog.to_regnamespace('cron') IS NULL THEN
        RAISE EXCEPTION 'pg_cron is not installed in this database' USING ERRCODE = '55000',
            HINT = 'Install pg_cron (shared_preload_libraries = ''pg_cron'', then CREATE EXTENSION pg_cron), or run CALL amplitude_sync.run_sync(...) from any scheduler.';
    END IF;
    EXECUTE 'SELECT cron.schedule($1, $2, $3)' INTO job
        USING 'amplitude_sync:' OPERATOR(pg_catalog.||) sync_name, schedule,
              pg_catalog.format('CALL amplitude_sync.run_sync(%L)', sync_name);
    RETURN job;
END $$;

CREATE FUNCTION amplitude_sync.unschedule_sync(name pg_catalog.text)
RETURNS pg_catalog.bool LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done pg_catalog.bool;
BEGIN
    IF pg_catalog.to_regnamespace('cron') IS NULL THEN
        RAISE EXCEPTION 'pg_cron is not installed in this database' USING ERRCODE = '55000';
    END IF;
    EXECUTE 'SELECT cron.unschedule($1)' INTO done USING 'amplitude_sync:' OPERATOR(pg_catalog.||) name;
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
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION amplitude_sync._drop_syncs_of_dropped_views() FROM PUBLIC;
CREATE EVENT TRIGGER amplitude_sync_dropped_sources ON sql_drop
    EXECUTE FUNCTION amplitude_sync._drop_syncs_of_dropped_views();
