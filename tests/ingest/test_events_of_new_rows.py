"""Events of rows not stored yet are recorded without a look-up, and still counted once.

An event can be on record while its execution is not: retention deleted the execution (its
events are kept by their own age), or a publisher reused an event_id for another execution.
Such an event, delivered again, is a duplicate: the batch must neither fail nor re-create
the row.
"""

from __future__ import annotations

import random

import asyncpg

from services.ingest.batch import Incoming, apply_batch
from shared.events import Event
from tests.ingest.events_factory import execution_events


async def _apply(conn: asyncpg.Connection, events: list[Event]) -> tuple[int, int]:
    async with conn.transaction():
        outcome = await apply_batch(conn, [Incoming(e) for e in events])
    return len(outcome.applied), len(outcome.duplicates)


async def test_events_of_new_executions_are_recorded(db: asyncpg.Connection, org: str) -> None:
    events = execution_events(org, "agent-1", "n1", random.Random(1))
    assert await _apply(db, events) == (len(events), 0)
    assert await db.fetchval("SELECT count(*) FROM events WHERE org = $1", org) == len(events)
    assert await _apply(db, events) == (0, len(events))


async def test_an_event_of_a_deleted_execution_is_a_duplicate(
    db: asyncpg.Connection, org: str
) -> None:
    old = execution_events(org, "agent-1", "gone", random.Random(2))
    await _apply(db, old)
    await db.execute("DELETE FROM executions WHERE org = $1 AND id = 'gone'", org)
    fresh = execution_events(org, "agent-1", "next", random.Random(3))
    # One batch: a redelivered event of the deleted execution beside a new execution.
    applied, duplicates = await _apply(db, [old[-1], *fresh])
    assert (applied, duplicates) == (len(fresh), 1)
    ids = await db.fetch("SELECT id FROM executions WHERE org = $1", org)
    assert [r["id"] for r in ids] == ["next"]
    assert await db.fetchval("SELECT count(*) FROM events WHERE org = $1", org) == len(old) + len(
        fresh
    )


async def test_an_event_id_reused_by_another_execution_is_a_duplicate(
    db: asyncpg.Connection, org: str
) -> None:
    first = execution_events(org, "agent-1", "a", random.Random(4))
    await _apply(db, first)
    reused = Event.model_validate(
        {
            **execution_events(org, "agent-1", "b", random.Random(5))[0].model_dump(),
            "event_id": first[0].event_id,
        }
    )
    other = execution_events(org, "agent-1", "c", random.Random(6))
    assert await _apply(db, [reused, *other]) == (len(other), 1)
    ids = await db.fetch("SELECT id FROM executions WHERE org = $1 ORDER BY id", org)
    assert [r["id"] for r in ids] == ["a", "c"]


def _started(org: str, agent: str, execution_id: str, event_id: str, second: int) -> Event:
    return Event.model_validate(
        {
            "type": "execution_started",
            "event_id": event_id,
            "occurred_at": f"2026-02-05T10:00:{second:02d}Z",
            "org": org,
            "execution": {"id": execution_id, "agent_name": agent, "message": f"by {agent}"},
        }
    )


async def test_a_reused_event_id_claims_no_execution_whatever_the_batching(
    db: asyncpg.Connection, org: str
) -> None:
    """Agent b's id `b-1`, used before for its own execution, comes again naming a new
    execution x, in one batch with agent a's first event of x. A duplicate changes nothing:
    arriving alone it would not make x b's. In one batch it did, and a's event was refused
    (`agent_mismatch`, dead-lettered): the row depended on the batching."""
    await _apply(db, [_started(org, "b", "y", "b-1", 0)])
    reused, own = _started(org, "b", "x", "b-1", 1), _started(org, "a", "x", "a-1", 2)
    async with db.transaction():
        outcome = await apply_batch(db, [Incoming(reused), Incoming(own)])
    assert outcome.rejected == []
    assert [e.event_id for e in outcome.duplicates] == ["b-1"]
    assert [e.event_id for e in outcome.applied] == ["a-1"]
    row = await db.fetchrow(
        "SELECT agent_name, message FROM executions WHERE org = $1 AND id = 'x'", org
    )
    assert dict(row or {}) == {"agent_name": "a", "message": "by a"}
    # b's own later event of x is now refused as another agent's, as in any batching.
    later = _started(org, "b", "x", "b-2", 3)
    async with db.transaction():
        refused = await apply_batch(db, [Incoming(later)])
    assert [r.reason for _, r in refused.rejected] == ["agent_mismatch"]
