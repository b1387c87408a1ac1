"""A background stats refresh that ends late never replaces newer cached figures."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.query import repo
from shared.db import connect
from tests.query.helpers import (
    add_agent,
    add_org,
    client_for,
    insert,
    make_rows,
    settings_for,
    token,
)

ORG = "stats-order-org"
ADMIN = token(ORG, "ada", "admin")
TTL_S = 4.0


async def test_a_late_background_refresh_does_not_bring_back_older_figures(
    database_url: str, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh past half an entry's life reads its figures, then its other statements
    are held up (a loaded database) until the entry has expired and a request has recomputed
    it, with a row written in between. When the refresh ends, the figures served must stay
    the recomputed ones (11 rows), not go back to the refresh's 10 for a whole new TTL."""
    now = datetime.now(UTC)
    rows = make_rows(ORG, ("a1",), 10, seed=3, now=now)
    for row in rows:
        row["started_at"] = row["first_seen_at"] = now - timedelta(minutes=5)
    conn = await connect(database_url)
    await add_org(conn, ORG)
    await add_agent(conn, ORG, "a1")
    await insert(conn, rows)

    original = repo.stats_groups
    hold = asyncio.Event()
    held = asyncio.Event()
    holding = {"next": False}

    async def stats_groups(c: asyncpg.Connection, where: Any) -> Any:
        result = await original(c, where)  # the figures are read here...
        if holding["next"]:
            holding["next"] = False
            held.set()
            await hold.wait()  # ...and what follows is held up
        return result

    monkeypatch.setattr(repo, "stats_groups", stats_groups)
    start = 0.0

    async def until(moment: float) -> None:
        await asyncio.sleep(max(0.0, start + moment - time.monotonic()))

    try:
        async with client_for(settings_for(database_url, nats_url, stats_ttl_s=TTL_S)) as client:

            async def stats() -> dict[str, Any]:
                reply = await client.get("/api/executions/stats", headers=ADMIN)
                assert reply.status_code == 200, reply.text
                body: dict[str, Any] = reply.json()
                return body

            assert (await stats())["total"] == 10
            # The entry was stored by now: the times below are at least its age.
            start = time.monotonic()
            await until(TTL_S / 2 + 0.2)
            holding["next"] = True
            assert (await stats())["total"] == 10  # a hit past half its life: refresh starts
            await asyncio.wait_for(held.wait(), 5)
            late = make_rows(ORG, ("a1",), 1, seed=4, now=now)[0]
            late["id"] = "late-row"
            late["started_at"] = late["first_seen_at"] = datetime.now(UTC)
            await insert(conn, [late])
            await until(TTL_S + 0.2)  # the entry has expired: recomputed in the foreground
            recomputed = await stats()
            assert recomputed["total"] == 11
            hold.set()
            await asyncio.sleep(0.5)  # the refresh ends and would store its figures
            after = await stats()
            assert after["total"] == 11, after
            assert after["computed_at"] == recomputed["computed_at"]
    finally:
        hold.set()
        await conn.close()
