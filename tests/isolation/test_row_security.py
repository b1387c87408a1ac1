"""Row-level security, the second lock: as `fleetwatch_app`, no org set means no rows."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from services.ingest.batch import Incoming, apply_batch
from shared.db import connect
from tests.ingest.events_factory import execution_events

TABLES = ("executions", "events", "agents", "organizations")


@pytest_asyncio.fixture
async def two_orgs(database_url: str) -> AsyncIterator[tuple[asyncpg.Connection, str, str]]:
    conn = await connect(database_url)
    rng = random.Random(5)
    orgs = (f"rls-a-{rng.randrange(10**9)}", f"rls-b-{rng.randrange(10**9)}")
    for org in orgs:
        events = execution_events(org, "agent-1", f"{org}-x", rng)
        async with conn.transaction():
            await apply_batch(conn, [Incoming(e) for e in events])
    try:
        yield conn, orgs[0], orgs[1]
    finally:
        await conn.close()


async def _count_as_app(conn: asyncpg.Connection, table: str, org: str | None) -> list[str]:
    """Orgs of the rows `fleetwatch_app` sees in `table`, with `fleetwatch.org` set or not."""
    async with conn.transaction():
        await conn.execute("SET LOCAL ROLE fleetwatch_app")
        if org is not None:
            await conn.execute("SELECT set_config('fleetwatch.org', $1, true)", org)
        rows = await conn.fetch(f"SELECT DISTINCT org FROM {table}")
    return [r["org"] for r in rows]


async def test_no_org_set_reads_no_rows(two_orgs: tuple[asyncpg.Connection, str, str]) -> None:
    conn, _, _ = two_orgs
    for table in TABLES:
        assert await _count_as_app(conn, table, None) == [], table


async def test_an_org_set_reads_only_that_org(
    two_orgs: tuple[asyncpg.Connection, str, str],
) -> None:
    conn, a, b = two_orgs
    for table in TABLES:
        assert await _count_as_app(conn, table, a) == [a], table
        assert await _count_as_app(conn, table, b) == [b], table
        assert await _count_as_app(conn, table, "nobody") == [], table


async def test_the_app_role_cannot_write_executions_or_another_orgs_agents(
    two_orgs: tuple[asyncpg.Connection, str, str],
) -> None:
    conn, a, b = two_orgs
    async with conn.transaction():
        await conn.execute("SET LOCAL ROLE fleetwatch_app")
        await conn.execute("SELECT set_config('fleetwatch.org', $1, true)", a)
        try:
            await conn.execute("UPDATE executions SET status='failed'")
        except asyncpg.InsufficientPrivilegeError:
            pass
        else:
            raise AssertionError("fleetwatch_app may not write executions (one writer)")
    async with conn.transaction():
        await conn.execute("SET LOCAL ROLE fleetwatch_app")
        await conn.execute("SELECT set_config('fleetwatch.org', $1, true)", a)
        changed = await conn.execute("UPDATE agents SET display_name='pwned' WHERE org=$1", b)
        assert changed == "UPDATE 0"
    # Nor write rows into another org: a share of b's agent planted, or a's agent moved to b
    # (the policy's WITH CHECK; reading alone would not stop them).
    for statement, args in (
        (
            "INSERT INTO agent_shares (org, agent_name, user_id) VALUES ($1, $2, 'mallory')",
            (b, "agent-1"),
        ),
        ("UPDATE agents SET org = $1 WHERE org = $2", (b, a)),
    ):
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE fleetwatch_app")
            await conn.execute("SELECT set_config('fleetwatch.org', $1, true)", a)
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await conn.execute(statement, *args)
