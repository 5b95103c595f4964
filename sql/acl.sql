-- Least privilege, pinned: every object of the extension with its grants,
-- row-level security and (for functions) how they run. A change that widens
-- a grant, drops a function's search_path or makes one SECURITY DEFINER
-- changes this output.
SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS object,
       -- Privileges of anyone but the owner (PUBLIC included), defaults made
       -- explicit: what least privilege is about, the same on every version.
       coalesce((SELECT string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
                                   || ':' || a.privilege_type, ', ' ORDER BY 1)
                 FROM aclexplode(coalesce(c.relacl, p.proacl, n.nspacl, w.fdwacl, t.typacl,
                                          acldefault(CASE WHEN c.oid IS NOT NULL THEN (CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char"
                                                          WHEN p.oid IS NOT NULL THEN 'f'
                                                          WHEN n.oid IS NOT NULL THEN 'n'
                                                          WHEN w.oid IS NOT NULL THEN 'F'
                                                          WHEN t.oid IS NOT NULL THEN 'T' END,
                                                     coalesce(c.relowner, p.proowner, n.nspowner, w.fdwowner, t.typowner)))) a
                 WHERE a.grantee <> coalesce(c.relowner, p.proowner, n.nspowner, w.fdwowner, t.typowner)), '') AS granted,
       coalesce(CASE WHEN c.relkind = 'r' THEN 'rls=' || c.relrowsecurity END,
                CASE WHEN p.oid IS NOT NULL THEN
                    l.lanname || CASE WHEN p.prosecdef THEN ' security definer' ELSE '' END
                    || coalesce(' ' || array_to_string(p.proconfig, ','), '') END, '') AS runs
FROM pg_depend d
LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
LEFT JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
LEFT JOIN pg_language l ON l.oid = p.prolang
LEFT JOIN pg_namespace n ON d.classid = 'pg_namespace'::regclass AND n.oid = d.objid
LEFT JOIN pg_foreign_data_wrapper w ON d.classid = 'pg_foreign_data_wrapper'::regclass AND w.oid = d.objid
LEFT JOIN pg_type t ON d.classid = 'pg_type'::regclass AND t.oid = d.objid
WHERE d.refclassid = 'pg_extension'::regclass
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'amplitude_sync')
  AND d.deptype = 'e'
  -- Row and array types go with their tables (PostgreSQL 17 lists them too).
  AND NOT (t.oid IS NOT NULL AND (t.typcategory = 'A' OR EXISTS (SELECT FROM pg_class r
                                                                WHERE r.oid = t.typrelid AND r.relkind <> 'c')))
ORDER BY 1;
-- The schema: USAGE for every role (to read its own history).
SELECT nspname, (SELECT string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
                                   || ':' || a.privilege_type, ', ' ORDER BY 1)
                 FROM aclexplode(nspacl) a WHERE a.grantee <> nspowner) AS granted
FROM pg_namespace WHERE nspname = 'amplitude_sync';
-- No column-level grants.
SELECT a.attrelid::regclass, a.attname, a.attacl FROM pg_attribute a
JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = a.attrelid AND d.deptype = 'e'
WHERE a.attacl IS NOT NULL;
-- The row-level security policies.
SELECT tablename, policyname, cmd, roles FROM pg_policies WHERE schemaname = 'amplitude_sync' ORDER BY 1, 2;
-- Every SQL or PL/pgSQL function of the extension pins its search_path.
SELECT p.oid::regprocedure AS without_search_path FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE p.pronamespace = 'amplitude_sync'::regnamespace AND l.lanname IN ('sql', 'plpgsql')
  AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false);
