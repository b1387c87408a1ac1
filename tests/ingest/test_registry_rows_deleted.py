"""Registry rows deleted behind ingest's back (an org removed, with its agents and projects)
come back with the next events; those events are stored, never dead-lettered."""

from __future__ import annotations

import random

from services.ingest.consumer import BatchConsumer
from services.ingest.metrics import IngestMetrics
from shared.db import create_pool
from shared.events import Event
from shared.subjects import Subjects
from tests.ingest.conftest import Wired
from tests.ingest.events_factory import execution_events, to_wire
from tests.ingest.pulled import acks_pending_settle


async def _ingest(wired: Wired, subjects: Subjects, consumer: BatchConsumer, event: Event) -> None:
    js = wired.js
    await js.publish(subjects.event(event.org, event.agent, event.type), to_wire(event))
    sub = await js.pull_subscribe(
        subjects.all_events, durable="registry", stream=subjects.events_stream
    )
    msgs = await sub.fetch(1, timeout=5)
    assert len(msgs) == 1
    await consumer.handle(msgs)
    assert await acks_pending_settle(sub) == 0


async def test_events_of_an_org_deleted_while_cached_are_stored(
    wired: Wired, database_url: str, subjects: Subjects, org: str
) -> None:
    pool = await create_pool(database_url)
    metrics = IngestMetrics.create()
    consumer = BatchConsumer(pool=pool, js=wired.js, subjects=subjects, metrics=metrics)
    rng = random.Random(11)
    first = execution_events(org, "ruby", "before", rng)[0]
    later = execution_events(org, "opal", "after", rng)[0]
    try:
        await _ingest(wired, subjects, consumer, first)
        async with pool.acquire() as conn:
            # The org goes (its agents and projects with it), while ingest remembers them.
            await conn.execute("DELETE FROM organizations WHERE org = $1", org)
        await _ingest(wired, subjects, consumer, later)
        async with pool.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT count(*) FROM executions WHERE org = $1 AND id = 'after'", org
            )
            orgs = await conn.fetchval("SELECT count(*) FROM organizations WHERE org = $1", org)
            agents = await conn.fetch("SELECT name FROM agents WHERE org = $1", org)
        assert stored == 1
        assert orgs == 1
        assert [r["name"] for r in agents] == ["opal"]
        assert (await wired.js.stream_info(subjects.dlq_stream)).state.messages == 0
        assert (
            metrics.registry.get_sample_value(
                "fleetwatch_ingest_dlq_total", {"reason": "db_rejected"}
            )
            is None
        )
    finally:
        await pool.close()
