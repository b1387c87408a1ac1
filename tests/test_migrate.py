"""`fleetwatch migrate` on the real Postgres: run twice at once, and by a database owner that
is no superuser (a managed database), after which the query service's role switch works."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from services.query.routes.health import APP_ROLE_USABLE
from shared.db import connect
from shared.migrate import load_migrations, migrate
from tests.conftest import DATABASE_URL, with_database

pytestmark = pytest.mark.asyncio


def _as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.asynccontextmanager
async def _owned_database(
    role_options: str,
) -> AsyncIterator[tuple[asyncpg.Connection, str, str]]:
    """A fresh database owned by a fresh login role with `role_options`; yields the superuser
    connection, the role and the database, and drops both after."""
    suffix = uuid.uuid4().hex[:10]
    user, name = f"fwowner_{suffix}", f"fwmig_{suffix}"
    admin = await asyncpg.connect(DATABASE_URL)
    await admin.execute(f'CREATE ROLE "{user}" LOGIN {role_options}')
    await admin.execute(f'CREATE DATABASE "{name}" OWNER "{user}"')
    try:
        yield admin, user, name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{user}"')
        await admin.close()


@pytest_asyncio.fixture
async def empty_database() -> AsyncIterator[str]:
    name = f"fwmig_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(DATABASE_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_two_migrators_at_once_on_a_fresh_database_both_succeed(
    empty_database: str,
) -> None:
    url = with_database(DATABASE_URL, empty_database)
    conns = [await connect(url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        for conn in conns:
            await conn.close()
    # Each migration was applied by exactly one of them.
    names = sorted(name for result in results for name in result)
    assert names == sorted(m.name for m in load_migrations())
    assert applied == len(names)


async def test_a_database_owner_without_superuser_can_migrate_and_serve_scoped_reads() -> None:
    """The owner of a managed database: may create roles, is no superuser."""
    async with _owned_database("CREATEROLE NOSUPERUSER") as (_admin, user, name):
        conn = await connect(_as_user(with_database(DATABASE_URL, name), user))
        try:
            assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = $1", user)
            # The query service's readiness check: not ready while the role is out of reach.
            assert await conn.fetchval(APP_ROLE_USABLE) is False
            await migrate(conn)
            assert await conn.fetchval(APP_ROLE_USABLE) is True
            await conn.execute(
                "INSERT INTO executions (org, id, agent_name, status, first_seen_at, versions) "
                "VALUES ('acme', 'e1', 'bot', 'running', now(), '{}'), "
                "('globex', 'e2', 'bot', 'running', now(), '{}')"
            )
            # What the query service does in each scoped transaction.
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('role', 'fleetwatch_app', true), "
                    "set_config('fleetwatch.org', 'acme', true)"
                )
                assert await conn.fetchval("SELECT current_user") == "fleetwatch_app"
                ids = [r["id"] for r in await conn.fetch("SELECT id FROM executions")]
            assert ids == ["e1"]  # and the other org's row stays hidden
        finally:
            await conn.close()


async def test_an_owner_without_createrole_migrates_once_an_admin_made_the_role() -> None:
    """A database owner that may not create roles: a superuser makes `fleetwatch_app` and
    grants it (as docs/deploy.md says), and then the owner's own `migrate` must go through."""
    async with _owned_database("NOCREATEROLE NOSUPERUSER") as (admin, user, name):
        await admin.execute(
            "DO $$ BEGIN CREATE ROLE fleetwatch_app NOLOGIN; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
        await admin.execute(f'GRANT fleetwatch_app TO "{user}"')
        conn = await connect(_as_user(with_database(DATABASE_URL, name), user))
        try:
            applied = await migrate(conn)
            assert applied == [m.name for m in load_migrations()]
            assert await conn.fetchval(APP_ROLE_USABLE) is True
        finally:
            await conn.close()


async def test_pg_trgm_in_a_schema_off_the_search_path_still_gets_its_indexes(
    empty_database: str,
) -> None:
    """Managed databases often keep extensions in a schema of their own. 0002 named the
    operator class unqualified, failed there every time, and blocked every later migration."""
    conn = await connect(with_database(DATABASE_URL, empty_database))
    try:
        await conn.execute("CREATE SCHEMA ext; CREATE EXTENSION pg_trgm SCHEMA ext")
        assert await migrate(conn) == [m.name for m in load_migrations()]
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename = 'executions' AND indexname LIKE '%trgm'"
        )
        assert sorted(r["indexname"] for r in indexes) == [
            "executions_message_trgm",
            "executions_response_trgm",
        ]
        assert all("ext.gin_trgm_ops" in r["indexdef"] for r in indexes)
    finally:
        await conn.close()
