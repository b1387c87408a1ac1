-- PostgreSQL 16 splits role membership into options (ADMIN, INHERIT, SET). A user with
-- CREATEROLE that creates a role (0003) is granted it back automatically with ADMIN alone
-- (`createrole_self_grant` is empty by default): a member that may not SET the role. 0017
-- tested membership only, so it granted nothing; /readyz said ready, and every scoped read
-- failed with "permission denied to set role". Here the user that migrates, the one the
-- services connect as, is given SET, which it may grant itself as the role's admin.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 160000 THEN
        IF NOT pg_has_role(current_user, 'fleetwatch_app', 'SET') THEN
            EXECUTE format('GRANT fleetwatch_app TO %I WITH SET TRUE', current_user);
        END IF;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'role % cannot take the role fleetwatch_app, which the query service '
        'needs', current_user
        USING HINT = format('As a superuser: GRANT fleetwatch_app TO %I WITH SET TRUE;',
                            current_user);
END
$$;
