"""An execution belongs to the agent that first reported it, even when that was a step."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from services.ingest.batch import Incoming, Outcome, apply_batch
from shared.events import Event

AT = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _step(org: str, agent: str, execution_id: str, node: str, type_: str) -> Event:
    return Event.model_validate(
        {
            "type": type_,
            "event_id": uuid.uuid4().hex,
            "occurred_at": AT,
            "org": org,
            "agent_name": agent,
            "component": {"execution_id": execution_id, "node_id": node, "name": node},
        }
    )


def _started(org: str, agent: str, execution_id: str) -> Event:
    return Event.model_validate(
        {
            "type": "execution_started",
            "event_id": uuid.uuid4().hex,
            "occurred_at": AT,
            "org": org,
            "execution": {"id": execution_id, "agent_name": agent, "message": f"by {agent}"},
        }
    )


async def _apply(conn: asyncpg.Connection, *events: Event) -> Outcome:
    async with conn.transaction():
        return await apply_batch(conn, [Incoming(e) for e in events])


async def test_a_step_reported_first_makes_its_agent_the_owner(
    db: asyncpg.Connection, org: str
) -> None:
    first = await _apply(db, _step(org, "a1", "x", "fetch", "component_started"))
    assert len(first.applied) == 1
    # Another agent of the org can neither create the execution nor add steps to it...
    intruder = await _apply(
        db, _started(org, "a2", "x"), _step(org, "a3", "x", "other", "component_started")
    )
    assert [r.reason for _, r in intruder.rejected] == ["agent_mismatch", "agent_mismatch"]
    assert await db.fetchval("SELECT count(*) FROM executions WHERE org = $1", org) == 0
    # ...while the owner goes on with its own steps and its execution.
    own = await _apply(
        db, _step(org, "a1", "x", "fetch", "component_completed"), _started(org, "a1", "x")
    )
    assert (len(own.applied), own.rejected) == (2, [])
    row = await db.fetchrow("SELECT agent_name, message FROM executions WHERE org=$1", org)
    assert tuple(row) == ("a1", "by a1")
    agents = await db.fetch(
        "SELECT DISTINCT agent_name FROM component_executions WHERE org = $1", org
    )
    assert [r["agent_name"] for r in agents] == ["a1"]
