"""The pool under load: an export holds one connection, and a request that finds none free in
time (or an export that finds no slot) gets a clear 503 instead of waiting forever."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

import httpx
import orjson
import pytest_asyncio

from services.query.deps import export_slot
from shared.db import connect
from tests.query.helpers import add_org, client_for, insert, make_rows, settings_for, token

ORG = "pool-org"
ADMIN = token(ORG, "ada", "admin")


@pytest_asyncio.fixture(scope="module")
async def rows(database_url: str) -> list[dict[str, Any]]:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        data = make_rows(ORG, ("a1", "a2"), 120, seed=3)
        await insert(conn, data)
        return data
    finally:
        await conn.close()


def _exported_ids(reply: httpx.Response) -> list[str]:
    if reply.headers["content-type"].startswith("text/csv"):
        return [r["id"] for r in csv.DictReader(io.StringIO(reply.text))]
    return [orjson.loads(line)["id"] for line in reply.text.splitlines()]


async def test_more_concurrent_exports_than_the_pool_all_complete(
    database_url: str, nats_url: str, rows: list[dict[str, Any]]
) -> None:
    settings = settings_for(
        database_url,
        nats_url,
        pool_min_size=1,
        pool_max_size=3,
        export_concurrency=16,  # the gate out of the way: only the pool limits them
        export_batch_size=10,  # several batches each, so exports overlap
        pool_acquire_timeout_s=20,
    )
    async with client_for(settings) as client:

        async def export(i: int) -> httpx.Response:
            params = {"format": ("csv", "ndjson")[i % 2]}
            return await client.get("/api/executions/export", headers=ADMIN, params=params)

        replies = await asyncio.wait_for(asyncio.gather(*(export(i) for i in range(8))), 30)
        for reply in replies:
            assert reply.status_code == 200, reply.text[:300]
            assert len(_exported_ids(reply)) == len(rows)
        listing = await asyncio.wait_for(client.get("/api/executions", headers=ADMIN), 5)
        assert listing.status_code == 200


async def test_no_free_connection_in_time_is_503(
    database_url: str, nats_url: str, rows: Any
) -> None:
    settings = settings_for(
        database_url, nats_url, pool_min_size=1, pool_max_size=1, pool_acquire_timeout_s=0.2
    )
    async with client_for(settings) as client:
        state = client._transport.app.state.query  # type: ignore[attr-defined]
        async with state.pool.acquire():  # the only connection, busy elsewhere
            reply = await asyncio.wait_for(client.get("/api/executions", headers=ADMIN), 10)
        assert reply.status_code == 503, reply.text
        assert reply.headers["retry-after"] == "1"
        assert "connection" in reply.json()["detail"]
        assert (await client.get("/api/executions", headers=ADMIN)).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'fleetwatch_query_busy_total{wait="connection"} 1.0' in metrics


async def test_exports_beyond_their_slots_are_503_and_leave_the_rest_alone(
    database_url: str, nats_url: str, rows: Any
) -> None:
    settings = settings_for(
        database_url, nats_url, export_concurrency=1, pool_acquire_timeout_s=0.2
    )
    async with client_for(settings) as client:
        state = client._transport.app.state.query  # type: ignore[attr-defined]
        async with state.export_slots:  # one export streaming
            reply = await asyncio.wait_for(client.get("/api/executions/export", headers=ADMIN), 10)
            assert reply.status_code == 503, reply.text
            assert reply.headers["retry-after"] == "1"
            listing = await client.get("/api/executions", headers=ADMIN)
            assert listing.status_code == 200
        reply = await client.get("/api/executions/export", headers=ADMIN)
        assert reply.status_code == 200
        assert len(_exported_ids(reply)) == len(rows)


async def test_a_statement_past_the_timeout_is_cancelled_503_and_frees_its_connection(
    database_url: str, nats_url: str, rows: Any
) -> None:
    """A list that cannot finish (here: the table locked by someone else) is cancelled by
    Postgres after `statement_timeout_s`; the one pool connection then serves the next."""
    settings = settings_for(
        database_url, nats_url, pool_min_size=1, pool_max_size=1, statement_timeout_s=0.3
    )
    blocker = await connect(database_url)
    try:
        async with client_for(settings) as client:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE executions IN ACCESS EXCLUSIVE MODE")
                reply = await asyncio.wait_for(client.get("/api/executions", headers=ADMIN), 10)
            assert reply.status_code == 503, reply.text
            assert reply.headers["retry-after"] == "5"
            assert "longer than 0.3 s" in reply.json()["detail"]
            after = await asyncio.wait_for(client.get("/api/executions", headers=ADMIN), 10)
            assert after.status_code == 200, after.text
            assert after.json()["executions"]
            metrics = (await client.get("/metrics")).text
            assert 'fleetwatch_query_busy_total{wait="statement"} 1.0' in metrics
    finally:
        await blocker.close()


async def test_one_org_cannot_hold_every_export_slot(
    database_url: str, nats_url: str, rows: Any
) -> None:
    """With 4 export slots, one org's exports (a tenant exporting in a loop) took all of them,
    and every other org's export waited, then got 503. An org now holds at most its share."""
    other = "pool-other-org"
    conn = await connect(database_url)
    try:
        await add_org(conn, other)
        await insert(conn, make_rows(other, ("b1",), 5, seed=4))
    finally:
        await conn.close()
    settings = settings_for(
        database_url,
        nats_url,
        export_concurrency=4,
        export_per_org=2,
        pool_acquire_timeout_s=0.2,
    )
    async with client_for(settings) as client:
        state = client._transport.app.state.query  # type: ignore[attr-defined]
        async with export_slot(state, ORG), export_slot(state, ORG):  # ORG streams two
            mine = await asyncio.wait_for(client.get("/api/executions/export", headers=ADMIN), 10)
            assert mine.status_code == 503, mine.text
            assert "this organization's 2 exports" in mine.json()["detail"]
            theirs = await asyncio.wait_for(
                client.get("/api/executions/export", headers=token(other, "bo", "admin")), 10
            )
            assert theirs.status_code == 200, theirs.text
            assert len(_exported_ids(theirs)) == 5
        assert state.org_export_slots == {}  # nothing kept per org once its exports end
        again = await client.get("/api/executions/export", headers=ADMIN)
        assert again.status_code == 200
