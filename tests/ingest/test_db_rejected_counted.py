"""An event Postgres refuses is dead-lettered and counted under its own type."""

from __future__ import annotations

import random

from services.ingest.consumer import BatchConsumer
from services.ingest.metrics import IngestMetrics
from shared.db import create_pool
from shared.subjects import Subjects
from tests.ingest.conftest import streams_of
from tests.ingest.events_factory import execution_events, to_wire
from tests.ingest.pulled import acks_pending_settle


async def test_a_refused_event_is_counted_by_its_type(
    nats_url: str, fresh_database_url: str, subjects: Subjects, org: str
) -> None:
    pool = await create_pool(fresh_database_url)
    async with pool.acquire() as conn:
        # A rule of this database's own stands for any value Postgres may refuse.
        await conn.execute(
            "ALTER TABLE executions ADD CONSTRAINT no_refused CHECK (id <> 'refused')"
        )
    metrics = IngestMetrics.create()
    rng = random.Random(5)
    good = execution_events(org, "ruby", "fine", rng)[-1]
    bad = execution_events(org, "ruby", "refused", rng)[-1]
    try:
        async with streams_of(nats_url, fresh_database_url, subjects) as wired:
            js = wired.js
            consumer = BatchConsumer(pool=pool, js=js, subjects=subjects, metrics=metrics)
            for event in (good, bad):
                await js.publish(subjects.event(org, "ruby", event.type), to_wire(event))
            sub = await js.pull_subscribe(
                subjects.all_events, durable="refused", stream=subjects.events_stream
            )
            msgs = await sub.fetch(2, timeout=5)
            assert len(msgs) == 2
            await consumer.handle(msgs)
            assert await acks_pending_settle(sub) == 0
        value = metrics.registry.get_sample_value
        assert value("fleetwatch_ingest_dlq_total", {"reason": "db_rejected"}) == 1
        assert (
            value(
                "fleetwatch_ingest_events_total",
                {"type": bad.type.value, "outcome": "dead_lettered"},
            )
            == 1
        )
        assert (
            value("fleetwatch_ingest_events_total", {"type": "invalid", "outcome": "dead_lettered"})
            is None
        )
    finally:
        await pool.close()
