"""The notifier reads a caller's scope under row-level security, as the query service does.

`load_scope` names the org in every statement; the transaction around it takes the
application role with the caller's org set, so a read that forgot the org would still see
only that org's rows (the second lock). The connecting user owns the tables, so without the
role the policies would not apply to it at all.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from services.notifier import repo
from shared.access import Scope
from shared.auth import Claims, Role
from shared.db import connect, create_pool

ORG_A, ORG_B = "nrls-a", "nrls-b"


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await connect(database_url)
    try:
        for org, agent in ((ORG_A, "a1"), (ORG_B, "b1")):
            await conn.execute(
                "INSERT INTO organizations (org) VALUES ($1) ON CONFLICT DO NOTHING", org
            )
            await conn.execute(
                "INSERT INTO agents (org, name, owner) VALUES ($1, $2, 'uma') "
                "ON CONFLICT DO NOTHING",
                org,
                agent,
            )
    finally:
        await conn.close()
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


def claims(org: str) -> Claims:
    return Claims(sub="uma", org=org, role=Role.USER, exp=int(time.time()) + 60)


async def test_each_org_reads_its_own_scope(pool: asyncpg.Pool) -> None:
    assert (await repo.fetch_scope(pool, claims(ORG_A))).agents == frozenset({"a1"})
    assert (await repo.fetch_scope(pool, claims(ORG_B))).agents == frozenset({"b1"})


async def test_a_read_without_the_org_still_sees_only_the_callers_org(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, list[str]]] = []

    async def careless_load_scope(conn: asyncpg.Connection, who: Claims) -> Scope:
        # A scope read that forgot `WHERE org = ...`: only the policies stand in its way.
        role = await conn.fetchval("SELECT current_user")
        orgs = [r["org"] for r in await conn.fetch("SELECT DISTINCT org FROM agents")]
        seen.append((role, sorted(orgs)))
        return Scope(org=who.org, user=who.sub, role=who.role, agents=frozenset())

    monkeypatch.setattr(repo, "load_scope", careless_load_scope)
    await repo.fetch_scope(pool, claims(ORG_A))
    await repo.fetch_scope(pool, claims(ORG_B))
    assert seen == [("fleetwatch_app", [ORG_A]), ("fleetwatch_app", [ORG_B])]
