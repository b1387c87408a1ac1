"""Waiting on NATS holds no pooled connection: terminates to an agent that never answers and
detail opens waiting on the reconciler leave the pool to every other request, of every org."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import nats
import pytest_asyncio

from shared.db import connect
from shared.subjects import Subjects
from tests.query.helpers import (
    add_agent,
    add_org,
    client_for,
    insert,
    make_rows,
    settings_for,
    token,
    wait_nats,
)

ORG, OTHER_ORG = "qw-org", "qw-other"
ADMIN = token(ORG, "ada", "admin")
OTHER_ADMIN = token(OTHER_ORG, "oda", "admin")


@pytest_asyncio.fixture(scope="module")
async def seeded(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        for org in (ORG, OTHER_ORG):
            await add_org(conn, org)
            await add_agent(conn, org, "a1", owner="uma")
            await insert(conn, make_rows(org, ("a1",), 20, seed=8))
        extra = make_rows(ORG, ("a1",), 2, seed=9)
        extra[0].update(id="qw-running", status="running", completed_at=None, duration_ms=None)
        extra[1].update(id="qw-engine", engine="temporal", external_id="wf-9", status="success")
        await insert(conn, extra)
    finally:
        await conn.close()


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def _others_still_served(client: httpx.AsyncClient) -> None:
    """While every pooled connection would be taken if the waits held one: both orgs' lists."""
    for headers in (ADMIN, OTHER_ADMIN):
        reply = await asyncio.wait_for(client.get("/api/executions", headers=headers), 5)
        assert reply.status_code == 200, reply.text
        assert reply.json()["executions"]


async def _with_silent_responder(
    nats_url: str, subject: str, work: Callable[[list[str]], Awaitable[None]]
) -> None:
    """`work` runs while something listens on `subject` and never answers (a hung agent)."""
    nc = await nats.connect(nats_url)
    heard: list[str] = []

    async def silent(msg: Any) -> None:
        heard.append(msg.subject)

    await nc.subscribe(subject, cb=silent)
    await nc.flush()
    try:
        await work(heard)
    finally:
        await nc.close()


async def test_terminates_to_a_silent_agent_leave_the_pool_free(
    database_url: str, nats_url: str, subjects: Subjects, seeded: None
) -> None:
    pool = 3
    settings = settings_for(
        database_url,
        nats_url,
        subjects.prefix,
        pool_min_size=1,
        pool_max_size=pool,
        pool_acquire_timeout_s=0.5,
        terminate_timeout_s=3.0,
    )
    async with client_for(settings) as client:
        await wait_nats(client)

        async def work(heard: list[str]) -> None:
            started = datetime.now(UTC)

            def terminate() -> asyncio.Task[httpx.Response]:
                path = "/api/executions/qw-running/terminate"
                return asyncio.create_task(client.post(path, headers=ADMIN))

            # As many waiting on the agent as the pool has connections.
            pending = [terminate() for _ in range(pool)]
            await _until(lambda: len(heard) == pool, "the terminates to reach the agent")
            await _others_still_served(client)
            # Detail and another terminate's checks find a connection meanwhile too.
            detail = await client.get("/api/executions/qw-running", headers=ADMIN)
            assert detail.status_code == 200, detail.text
            done = await client.post("/api/executions/qw-engine/terminate", headers=ADMIN)
            assert done.status_code == 409, done.text
            pending.append(terminate())
            await _until(lambda: len(heard) == pool + 1, "one more terminate to reach the agent")
            replies = await asyncio.gather(*pending)
            assert [r.status_code for r in replies] == [504] * (pool + 1), replies[0].text
            assert (datetime.now(UTC) - started).total_seconds() < 10

        await _with_silent_responder(nats_url, subjects.terminate(ORG, "a1"), work)
        state = client._transport.app.state.query  # type: ignore[attr-defined]
        assert state.pool.get_size() <= pool


async def test_detail_waiting_on_the_reconciler_leaves_the_pool_free(
    database_url: str, nats_url: str, subjects: Subjects, seeded: None
) -> None:
    pool = 2
    settings = settings_for(
        database_url,
        nats_url,
        subjects.prefix,
        pool_min_size=1,
        pool_max_size=pool,
        pool_acquire_timeout_s=0.3,
        sync_timeout_s=1.0,
    )
    async with client_for(settings) as client:
        await wait_nats(client)

        async def work(heard: list[str]) -> None:
            pending = [
                asyncio.create_task(client.get("/api/executions/qw-engine", headers=ADMIN))
                for _ in range(pool)
            ]
            await _until(lambda: len(heard) == pool, "the details to ask the reconciler")
            await _others_still_served(client)
            for reply in await asyncio.gather(*pending):
                assert reply.status_code == 200, reply.text
                assert reply.json()["components"] == []  # no answer: shown without steps

        await _with_silent_responder(nats_url, subjects.sync_components(), work)


async def test_detail_shows_the_steps_the_reconciler_brought(
    database_url: str, nats_url: str, subjects: Subjects, seeded: None
) -> None:
    """The steps are re-read after the answer, on a connection taken then."""
    settings = settings_for(database_url, nats_url, subjects.prefix, pool_max_size=2)
    writer = await connect(database_url)
    nc = await nats.connect(nats_url)

    async def reconciler(msg: Any) -> None:
        # As ingest would, once the reconciler's component events arrived: committed first.
        await writer.execute(
            "INSERT INTO component_executions (org, execution_id, node_id, attempt, agent_name, "
            "name, status, first_seen_at) VALUES ($1, 'qw-engine', 'n1', 1, 'a1', 'fetch', "
            "'success', now()) ON CONFLICT DO NOTHING",
            ORG,
        )
        await msg.respond(b'{"synced": 1}')

    await nc.subscribe(subjects.sync_components(), cb=reconciler)
    await nc.flush()
    try:
        async with client_for(settings) as client:
            await wait_nats(client)
            reply = await client.get("/api/executions/qw-engine", headers=ADMIN)
            assert reply.status_code == 200, reply.text
            assert [c["node_id"] for c in reply.json()["components"]] == ["n1"]
    finally:
        await nc.close()
        await writer.execute(
            "DELETE FROM component_executions WHERE org = $1 AND execution_id = 'qw-engine'", ORG
        )
        await writer.close()
