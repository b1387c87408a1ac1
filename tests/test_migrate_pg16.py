"""`fleetwatch migrate` by a database owner with CREATEROLE on PostgreSQL 16 (the embedded
server of the `pgserver` wheel, a cluster of its own): there a role's creator is granted it
back without the SET option, and the query service's role switch needs SET."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from services.query.routes.health import APP_ROLE_USABLE
from shared.access import ENTER_ORG
from shared.embedded import _pgserver
from shared.migrate import migrate


@pytest.fixture
def pg16(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A new PostgreSQL 16 cluster: (its socket directory, a superuser DSN)."""
    server = _pgserver().get_server(tmp_path / "pgdata", cleanup_mode="stop")
    try:
        socket_dir = str(tmp_path / "pgdata")
        yield socket_dir, f"postgresql://postgres@/postgres?host={quote(socket_dir)}"
    finally:
        server.cleanup()


async def test_a_createrole_owner_on_postgres_16_can_take_the_app_role(
    pg16: tuple[str, str],
) -> None:
    """Before: every migration applied, /readyz's check said the role was usable, and every
    scoped read failed with "permission denied to set role"."""
    socket_dir, admin_dsn = pg16
    admin = await asyncpg.connect(admin_dsn)
    try:
        assert await admin.fetchval("SHOW server_version_num") >= "160000"
        await admin.execute('CREATE ROLE "owner16" LOGIN CREATEROLE NOSUPERUSER')
        await admin.execute('CREATE DATABASE "fw16" OWNER "owner16"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(f"postgresql://owner16@/fw16?host={quote(socket_dir)}")
    try:
        assert await conn.fetchval(APP_ROLE_USABLE) is False
        await migrate(conn)
        assert await conn.fetchval(APP_ROLE_USABLE) is True
        await conn.execute(
            "INSERT INTO executions (org, id, agent_name, status, first_seen_at, versions) "
            "VALUES ('acme', 'e1', 'bot', 'running', now(), '{}'), "
            "('globex', 'e2', 'bot', 'running', now(), '{}')"
        )
        async with conn.transaction():  # what the query service does in each scoped read
            await conn.execute(ENTER_ORG, "acme")
            assert await conn.fetchval("SELECT current_user") == "fleetwatch_app"
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM executions")]
        assert ids == ["e1"]
    finally:
        await conn.close()
