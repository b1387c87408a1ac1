"""Execution detail, second review: a step's attempts stay together in attempt order, and only
the execution's own agent's steps are shown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest_asyncio

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

ORG = "qr2-org"
ADMIN = token(ORG, "ada", "admin")
OWNER = token(ORG, "uma", "user")
NOW = datetime.now(UTC)

#: (node, attempt, started_at, agent): node `b`'s first attempt reported only its end (no
#: start); its retry started at +5 s. `z` was written under another agent of the org.
STEPS = (
    ("a", 1, NOW + timedelta(seconds=1), "a1"),
    ("b", 1, None, "a1"),
    ("b", 2, NOW + timedelta(seconds=5), "a1"),
    ("c", 1, NOW + timedelta(seconds=2), "a1"),
    ("z", 1, NOW + timedelta(seconds=3), "b1"),
)


@pytest_asyncio.fixture(scope="module")
async def client(database_url: str, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await add_agent(conn, ORG, "a1", owner="uma")
        await add_agent(conn, ORG, "b1", owner="bob")
        rows = make_rows(ORG, ("a1",), 1, seed=41)
        rows[0].update(id="run")
        await insert(conn, rows)
        for node, attempt, started, agent in STEPS:
            await conn.execute(
                "INSERT INTO component_executions (org, execution_id, node_id, attempt, "
                "agent_name, status, retry_policy, max_attempts, input, started_at, "
                "first_seen_at) VALUES ($1, 'run', $2, $3, $4, 'failed', 'fixed', 3, $5, $6, $7)",
                ORG,
                node,
                attempt,
                agent,
                {"secret": f"{agent} input"},
                started,
                NOW,
            )
    finally:
        await conn.close()
    async with client_for(settings_for(database_url, nats_url)) as found:
        yield found


async def test_a_retry_follows_its_first_attempt_whose_start_is_unknown(
    client: httpx.AsyncClient,
) -> None:
    """Ordered by start alone, `b`'s first attempt (no start) came last, after its retry."""
    reply = await client.get("/api/executions/run", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    parts = reply.json()["components"]
    order = [(c["node_id"], c["attempt"]) for c in parts if c["node_id"] != "z"]
    # The steps by their first known start (`b`'s is its retry's), each step's attempts in order.
    assert order == [("a", 1), ("c", 1), ("b", 1), ("b", 2)]


async def test_steps_written_under_another_agent_are_not_part_of_the_run(
    client: httpx.AsyncClient,
) -> None:
    """Steps were read by execution id alone: a row written under agent b1 showed (input and
    all) in a1's run, to a1's owner too, who may not see b1."""
    for who in (ADMIN, OWNER):
        body = (await client.get("/api/executions/run", headers=who)).json()
        assert {c["node_id"] for c in body["components"]} == {"a", "b", "c"}
        assert all(c["input"] == {"secret": "a1 input"} for c in body["components"])
        assert body["retries"] == {"expected": 1, "unexpected": 0}
