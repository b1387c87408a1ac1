-- The second lock: the application role reads only rows of the org set in `fleetwatch.org`
-- for its transaction; with no org set it reads nothing.
-- Made only where missing: CREATE ROLE checks CREATEROLE before it looks for the role, so a
-- database owner without that right migrates once a superuser has made it (docs/deploy.md).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fleetwatch_app') THEN
        CREATE ROLE fleetwatch_app NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another migrator made it meanwhile
END
$$;

GRANT USAGE ON SCHEMA public TO fleetwatch_app;
GRANT SELECT ON organizations, users, projects, workflows, agents, agent_shares,
    executions, component_executions, events TO fleetwatch_app;
GRANT INSERT, UPDATE, DELETE ON agents, agent_shares TO fleetwatch_app;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['organizations', 'users', 'projects', 'workflows', 'agents',
                             'agent_shares', 'executions', 'component_executions', 'events']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY org_isolation ON %I TO fleetwatch_app '
            'USING (org = current_setting(''fleetwatch.org'', true)) '
            'WITH CHECK (org = current_setting(''fleetwatch.org'', true))', t);
    END LOOP;
END
$$;
