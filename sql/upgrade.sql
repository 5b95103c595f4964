-- ALTER EXTENSION amplitude_sync UPDATE from 1.0 to 1.1 on a database that
-- holds syncs, their state and run history: everything carries over (state
-- keeps unchanged records unsent, history follows its sync by id), and the
-- upgraded catalog is the one a fresh 1.1 install makes.
\set SHOW_CONTEXT never
SELECT url AS mock_url FROM mock_config \gset
SELECT mock_reset();
SELECT format('host=%s port=%s dbname=%s user=%s', current_setting('unix_socket_directories'),
              current_setting('port'), current_database(), current_user) AS fresh_conn \gset

-- What the extension's catalog is made of, one line per fact (views' text
-- in one IntervalStyle: pg_regress sets another than dblink's session).
CREATE FUNCTION catalog_lines() RETURNS SETOF text LANGUAGE sql SET IntervalStyle = postgres AS $$
    WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'amplitude_sync'),
    tables AS (SELECT c.oid FROM pg_class c JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass
               WHERE d.refobjid = (SELECT oid FROM ext) AND d.deptype = 'e' AND c.relkind = 'r')
    SELECT 'member ' || pg_describe_object(classid, objid, 0) FROM pg_depend
    WHERE refobjid = (SELECT oid FROM ext) AND deptype = 'e'
    UNION ALL
    SELECT 'acl ' || c.relname || ' ' || coalesce((SELECT string_agg(CASE WHEN a.grantee = 0 THEN 'public' ELSE 'owner' END
                                                                      || ':' || a.privilege_type, ',' ORDER BY 1)
                                                   FROM aclexplode(c.relacl) a WHERE a.grantee IN (0, c.relowner)), 'default')
           || ' rls=' || c.relrowsecurity || ' options=' || coalesce(c.reloptions::text, 'none')
    FROM pg_class c WHERE c.oid IN (SELECT oid FROM tables)
    UNION ALL
    SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
           || CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END
           || coalesce(' collate ' || (SELECT collname FROM pg_collation WHERE oid = a.attcollation), '')
    FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    WHERE a.attrelid IN (SELECT oid FROM tables) AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid IN (SELECT oid FROM tables) AND NOT tgisinternal
    UNION ALL
    SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
    WHERE conrelid IN (SELECT oid FROM tables)
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid IN (SELECT oid FROM tables)
    UNION ALL
    SELECT 'policy ' || tablename || ' ' || policyname || ' ' || cmd || ' ' || qual FROM pg_policies
    WHERE schemaname = 'amplitude_sync'
    UNION ALL
    -- Grants to the test's roles differ between the databases: owner and PUBLIC only.
    SELECT 'function ' || p.oid::regprocedure || ' ' || md5(p.prosrc) || ' '
           || coalesce((SELECT string_agg(CASE WHEN a.grantee = 0 THEN 'public' ELSE 'owner' END || ':' || a.privilege_type,
                                          ',' ORDER BY 1)
                        FROM aclexplode(p.proacl) a WHERE a.grantee IN (0, p.proowner)), 'default')
           || ' ' || coalesce(p.proconfig::text, '') || ' ' || p.prosecdef || ' ' || coalesce(obj_description(p.oid, 'pg_proc'), '')
    FROM pg_proc p WHERE p.pronamespace = 'amplitude_sync'::regnamespace
    UNION ALL
    SELECT 'view ' || c.oid::regclass || ' ' || coalesce(c.reloptions::text, 'none') || ' '
           || coalesce((SELECT string_agg(CASE WHEN a.grantee = 0 THEN 'public' ELSE 'owner' END || ':' || a.privilege_type,
                                          ',' ORDER BY 1)
                        FROM aclexplode(c.relacl) a WHERE a.grantee IN (0, c.relowner)), 'default')
           || ' ' || md5(pg_get_viewdef(c.oid)) || ' ' || coalesce(obj_description(c.oid, 'pg_class'), '')
    FROM pg_class c JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass
    WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'amplitude_sync') AND d.deptype = 'e'
      AND c.relkind = 'v'
    UNION ALL
    SELECT 'comment ' || c.oid::regclass || '.' || a.attname || ' ' || col_description(c.oid, a.attnum)
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
    WHERE c.relnamespace = 'amplitude_sync'::regnamespace AND a.attnum > 0 AND col_description(c.oid, a.attnum) IS NOT NULL
    UNION ALL
    SELECT 'config dump ' || c::regclass FROM pg_extension, unnest(extconfig) c WHERE extname = 'amplitude_sync'
$$;

-- The same sync under 1.1, for the fingerprints 1.1 would have stored.
CREATE TABLE upgrade_customers AS SELECT 'upgrade-' || g AS user_id, 'free' AS plan FROM generate_series(1, 20) g;
SELECT name FROM amplitude_sync.create_sync('upgrade_reference', 'amplitude_mock', 'user', 'upgrade_customers');
CALL amplitude_sync.run_sync('upgrade_reference') \gset
SELECT string_agg(format('(%L, %L)', record_key, fingerprint), ', ') AS state_rows
FROM amplitude_sync.sync_state st JOIN amplitude_sync.syncs s USING (sync_id)
WHERE s.name = 'upgrade_reference' \gset
SELECT amplitude_sync.drop_sync('upgrade_reference');

CREATE DATABASE regress_amp_upgrade;
\c regress_amp_upgrade
SET client_min_messages = warning;
CREATE EXTENSION amplitude_sync VERSION '1.0';
CREATE EXTENSION dblink;
RESET client_min_messages;
CREATE SERVER amplitude_mock FOREIGN DATA WRAPPER amplitude_sync OPTIONS (endpoint :'mock_url');
DO $$ BEGIN EXECUTE format('CREATE USER MAPPING FOR PUBLIC SERVER amplitude_mock OPTIONS (api_key %L)',
                           btrim(pg_read_file('amplitude_test_key'), E' \n')); END $$;
CREATE ROLE regress_upgrade_owner;
GRANT USAGE ON FOREIGN SERVER amplitude_mock TO regress_upgrade_owner;
-- A role whose name needs quotes, who rewrote its 1.0 sync's source_query
-- (1.0 let owners UPDATE it unchecked) into statements the update must not run.
CREATE ROLE "Regress Upgrade Rogue";
CREATE TABLE upgrade_customers AS SELECT 'upgrade-' || g AS user_id, 'free' AS plan FROM generate_series(1, 20) g;
GRANT SELECT ON upgrade_customers TO regress_upgrade_owner;
-- As 1.0 left them: two syncs (a table source and a query source; the user
-- sync with a min_id_length /identify never honoured), the state of a first
-- run, its history and a rejected row.
INSERT INTO amplitude_sync.syncs (name, owner, server, object, behaviour, source, source_query, min_id_length)
VALUES ('users', 'regress_upgrade_owner', 'amplitude_mock', 'user', 'update_or_create',
        'upgrade_customers', 'SELECT * FROM upgrade_customers', 3),
       ('signups', 'regress_upgrade_owner', 'amplitude_mock', 'event', 'append',
        $$SELECT 'Signed Up' AS event_type, user_id, 'signup-' || user_id AS insert_id FROM upgrade_customers$$,
        $$SELECT 'Signed Up' AS event_type, user_id, 'signup-' || user_id AS insert_id FROM upgrade_customers$$, 3),
       ('rogue', '"Regress Upgrade Rogue"', 'amplitude_mock', 'user', 'update_or_create', 'x',
        $$SELECT 'rogue-1' AS user_id; ALTER ROLE "Regress Upgrade Rogue" SUPERUSER; SELECT 1$$, 5);
INSERT INTO amplitude_sync.sync_state (sync_id, record_key, fingerprint, sent_at)
SELECT s.sync_id, k, f::uuid, now() FROM amplitude_sync.syncs s, (VALUES :state_rows) AS v(k, f) WHERE s.name = 'users';
INSERT INTO amplitude_sync.sync_runs (sync_name, function_name, server_name, endpoint, run_by, started_at,
                                      finished_at, status, rows_read, sent, rejected)
VALUES ('users', 'run_sync', 'amplitude_mock', '/identify', 'regress_upgrade_owner', now() - interval '1 hour',
        now() - interval '1 hour', 'succeeded', 21, 20, 1),
       (NULL, 'amplitude_send_events', 'amplitude_mock', '/2/httpapi', 'regress_upgrade_owner', now(), now(),
        'succeeded', 1, 1, 0);
INSERT INTO amplitude_sync.rejected_records (run_id, row_number, outcome, field, reason, user_id)
SELECT run_id, 21, 'rejected', 'user_id', 'user_id is shorter than 5 characters', 'u1'
FROM amplitude_sync.sync_runs WHERE sync_name = 'users';

ALTER EXTENSION amplitude_sync UPDATE TO '1.1';
SELECT extversion FROM pg_extension WHERE extname = 'amplitude_sync';
SELECT rolsuper AS rogue_is_superuser FROM pg_roles WHERE rolname = 'Regress Upgrade Rogue';

-- The syncs, with their sources as views owned by their owner (and the
-- user sync's min_id_length at the 5 /identify enforces).
SELECT s.name, s.source, s.source_view, pg_get_userbyid(c.relowner) AS owner, s.search_path, s.min_id_length
FROM amplitude_sync.syncs s JOIN pg_class c ON c.oid = s.source_view ORDER BY s.sync_id;
-- The history follows its sync by id; the rejected row is kept.
SELECT r.sync_name, r.sync_id = s.sync_id AS linked, r.status, r.sent, r.rejected
FROM amplitude_sync.sync_runs r LEFT JOIN amplitude_sync.syncs s ON s.name = r.sync_name ORDER BY r.run_id;
SELECT count(*) AS rejected_rows FROM amplitude_sync.rejected_records;
-- The state carried over: nothing is resent; one changed record is.
SET ROLE regress_upgrade_owner;
SELECT count(*) AS visible_state FROM amplitude_sync.sync_state;
RESET ROLE;
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status sent=:sent unchanged=:unchanged
UPDATE upgrade_customers SET plan = 'pro' WHERE user_id = 'upgrade-7';
CALL amplitude_sync.run_sync('users') \gset
\echo status=:status sent=:sent unchanged=:unchanged
-- 1.0's state is the entries; the changed record went to state_changes.
SELECT (SELECT count(*) FROM amplitude_sync.state_entries) AS entries,
       (SELECT count(*) FROM amplitude_sync.state_changes) AS changes,
       (SELECT count(*) FROM amplitude_sync.sync_state) AS current;
CALL amplitude_sync.run_sync('signups') \gset
\echo status=:status sent=:sent unchanged=:unchanged
SELECT u->>'user_id' AS user_id, u->'user_properties'->>'plan' AS plan FROM dblink(:'fresh_conn',
    'SELECT * FROM mock_users()') AS m(u jsonb) WHERE u->>'user_id' = 'upgrade-7';
-- The upgraded catalog is a fresh install's (lines only one of them has).
\c contrib_regression
SELECT pg_get_functiondef('catalog_lines'::regproc) AS catalog_fn \gset
\c regress_amp_upgrade
:catalog_fn;
SELECT count(*) > 100 AS compared_lines FROM catalog_lines();
(SELECT 'only upgraded: ' || l FROM catalog_lines() l
 EXCEPT SELECT 'only upgraded: ' || l FROM dblink(:'fresh_conn', 'SELECT * FROM catalog_lines()') AS f(l text))
UNION ALL
(SELECT 'only fresh: ' || l FROM dblink(:'fresh_conn', 'SELECT * FROM catalog_lines()') AS f(l text)
 EXCEPT SELECT 'only fresh: ' || l FROM catalog_lines() l)
ORDER BY 1;
-- TRUNCATE of syncs (surgery by the extension's owner) takes the state with
-- it, both tables (the state has no foreign key): no later sync inherits it.
SELECT count(*) > 0 AS has_state FROM amplitude_sync.sync_state;
TRUNCATE amplitude_sync.syncs CASCADE;
SELECT (SELECT count(*) FROM amplitude_sync.state_entries) AS entries_left,
       (SELECT count(*) FROM amplitude_sync.state_changes) AS changes_left;

\c contrib_regression
DROP DATABASE regress_amp_upgrade;
DROP FUNCTION catalog_lines();
DROP TABLE upgrade_customers;
DROP ROLE regress_upgrade_owner, "Regress Upgrade Rogue";
