-- The query service switches to fleetwatch_app in each scoped transaction
-- (`set_config('role', 'fleetwatch_app', true)`), which takes membership in that role. A
-- superuser has it without asking; the owner of a managed database (RDS, Cloud SQL) does
-- not, and every /api call failed with "permission denied to set role" while /readyz said
-- ready. The user that runs the migrations, the one the services connect as, is made a
-- member; where it may not grant that to itself, the migration stops and says what to run.
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'fleetwatch_app', 'MEMBER') THEN
        EXECUTE format('GRANT fleetwatch_app TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'role % cannot take the role fleetwatch_app, which the query service '
        'needs', current_user
        USING HINT = format('As a superuser: GRANT fleetwatch_app TO %I;', current_user);
END
$$;
