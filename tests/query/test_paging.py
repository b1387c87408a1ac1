"""Cursor paging through 1,000 rows while new ones arrive: no row skipped, none repeated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from shared.access import enter_org
from shared.db import connect
from tests.query.helpers import add_org, client_for, insert, make_rows, settings_for, token


async def test_cursor_is_stable_while_rows_arrive(
    fresh_database_url: str, nats_url: str, org: str
) -> None:
    conn = await connect(fresh_database_url)
    try:
        await add_org(conn, org)
        now = datetime.now(UTC)
        original = make_rows(org, ("p1", "p2"), 1000, seed=7, now=now)
        # Ties on sort_at: the id decides the order, and the cursor must carry it.
        for row in original[:100]:
            row.update(started_at=now - timedelta(hours=1), first_seen_at=now)
        await insert(conn, original)
        headers = token(org, "ada", "admin")
        seen: list[str] = []
        cursor = None
        extra = 0
        async with client_for(settings_for(fresh_database_url, nats_url)) as client:
            while True:
                params: dict[str, str | int] = {"limit": 37}
                if cursor:
                    params["cursor"] = cursor
                body = (await client.get("/api/executions", params=params, headers=headers)).json()
                seen += [e["id"] for e in body["executions"]]
                # New executions arrive between pages: newer ones and a late older one.
                fresh = make_rows(org, ("p1",), 3, seed=100 + extra, now=now + timedelta(hours=1))
                for i, row in enumerate(fresh):
                    row["id"] = f"{org}-new{extra}-{i}"
                fresh[0]["started_at"] = fresh[0]["first_seen_at"] = now - timedelta(days=30)
                await insert(conn, fresh)
                extra += 1
                if not body["has_more"]:
                    break
                cursor = body["next_cursor"]
        assert len(seen) == len(set(seen)), "a row was repeated"
        originals = {r["id"] for r in original}
        assert originals <= set(seen), "a row was skipped"
        assert extra > 25
    finally:
        await conn.close()


async def test_row_level_security_hides_other_orgs(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        await insert(
            conn, make_rows("rls-a", ("x",), 5, seed=1) + make_rows("rls-b", ("x",), 7, seed=2)
        )
        async with conn.transaction():
            await enter_org(conn, "rls-a")
            # Even a statement that forgets the org filter sees only its own org.
            assert await conn.fetchval("SELECT count(*) FROM executions") == 5
            assert await conn.fetchval("SELECT count(*) FROM executions WHERE org = 'rls-b'") == 0
        async with conn.transaction():
            await conn.execute("SELECT set_config('role', 'fleetwatch_app', true)")
            assert await conn.fetchval("SELECT count(*) FROM executions") == 0
    finally:
        await conn.close()
    assert isinstance(conn, asyncpg.Connection)
