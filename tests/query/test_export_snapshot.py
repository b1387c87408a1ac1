"""An export reads one snapshot. It pages newest first by list time, and each batch read the
database afresh: a row that started while the export ran moved ahead of the page the export
had reached (its list time became its start) and was missing from the file."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from starlette.types import Message, Receive, Scope, Send

from services.query.app import create_app
from shared.db import connect
from tests.query.helpers import add_org, insert, make_rows, settings_for, token

ORG = "qsnap-org"


async def _seed(database_url: str, org: str, rows: list[dict[str, Any]]) -> None:
    conn = await connect(database_url)
    try:
        await add_org(conn, org)
        await insert(conn, rows)
    finally:
        await conn.close()


async def test_a_row_that_starts_during_an_export_is_exported_once(
    database_url: str, nats_url: str
) -> None:
    now = datetime.now(UTC)
    rows = make_rows(ORG, ("a1",), 30, seed=5, now=now)
    for row in rows:
        row.update(status="success", started_at=row["started_at"] or now - timedelta(hours=1))
    late = rows[0]
    # The oldest row of all, not started yet: the export reaches it last.
    late.update(status="pending", started_at=None, first_seen_at=now - timedelta(days=10))
    await _seed(database_url, ORG, rows)

    app = create_app(settings_for(database_url, nats_url, export_batch_size=10))
    moved = False

    async def starts_it_after_the_first_chunk(scope: Scope, receive: Receive, send: Send) -> None:
        async def noted(message: Message) -> None:
            nonlocal moved
            await send(message)
            if message["type"] == "http.response.body" and message.get("body") and not moved:
                moved = True
                writer = await connect(database_url)
                try:
                    await writer.execute(
                        "UPDATE executions SET status = 'running', started_at = now() "
                        "WHERE org = $1 AND id = $2",
                        ORG,
                        late["id"],
                    )
                finally:
                    await writer.close()

        await app(scope, receive, noted)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=starts_it_after_the_first_chunk)
        async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
            reply = await client.get(
                "/api/executions/export",
                params={"format": "ndjson"},
                headers=token(ORG, "ada", "admin"),
            )
    assert reply.status_code == 200, reply.text
    assert moved
    exported: list[dict[str, Any]] = [orjson.loads(line) for line in reply.text.splitlines()]
    ids = [r["id"] for r in exported]
    assert sorted(ids) == sorted(r["id"] for r in rows)
    assert exported[-1]["id"] == late["id"]  # as the database stood when the export began
    assert exported[-1]["status"] == "pending"


async def test_an_export_whose_client_stops_reading_does_not_hold_its_snapshot(
    database_url: str, nats_url: str
) -> None:
    """The snapshot holds back vacuum for the whole database while it is open; a client that
    stopped reading held it for as long as its socket stayed open."""
    org = "qsnap-idle"
    rows = make_rows(org, ("a1",), 30, seed=6)
    await _seed(database_url, org, rows)
    app = create_app(
        settings_for(database_url, nats_url, export_batch_size=10, export_idle_timeout_s=0.3)
    )
    chunks = 0

    async def stalls_after_the_first_chunk(scope: Scope, receive: Receive, send: Send) -> None:
        async def slow(message: Message) -> None:
            nonlocal chunks
            await send(message)
            if message["type"] == "http.response.body" and message.get("body"):
                chunks += 1
                if chunks == 1:
                    await asyncio.sleep(1.5)  # the client reads nothing for a while

        await app(scope, receive, slow)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=stalls_after_the_first_chunk)
        async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
            with contextlib.suppress(Exception):  # the export ends: an error or a cut body
                await client.get(
                    "/api/executions/export",
                    params={"format": "ndjson"},
                    headers=token(org, "ada", "admin"),
                )
        assert chunks == 1  # Postgres ended it: nothing was sent after the stall (of 3)
        watcher = await connect(database_url)
        try:
            idle = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'idle in transaction'"
            )
        finally:
            await watcher.close()
        assert idle == 0
