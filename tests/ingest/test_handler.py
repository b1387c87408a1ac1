"""The ingest handler on faststream's TestNatsBroker, writing to the real Postgres."""

from __future__ import annotations

import contextlib
import random

from faststream.nats import TestNatsBroker

from services.ingest.app import IngestState, build_broker
from services.ingest.consumer import BatchConsumer
from services.ingest.metrics import IngestMetrics
from shared.db import create_pool
from shared.subjects import Subjects
from tests.ingest.conftest import Wired
from tests.ingest.events_factory import execution_events, to_wire


async def test_handler_stores_good_events_and_dead_letters_bad_ones(
    wired: Wired, database_url: str, subjects: Subjects, org: str
) -> None:
    settings, nc, js = wired.settings, wired.nc, wired.js
    pool = await create_pool(database_url)
    metrics = IngestMetrics.create()
    state = IngestState(pool=pool, nc=nc, js=js)
    state.consumer = BatchConsumer(pool=pool, js=js, subjects=subjects, metrics=metrics)
    broker = build_broker(settings, state)
    events = execution_events(org, "ruby", "h1", random.Random(2))
    try:
        async with TestNatsBroker(broker) as test_broker:
            for event in events:
                await test_broker.publish(to_wire(event), subjects.event(org, "ruby", event.type))
            await test_broker.publish(b"{broken", subjects.event(org, "ruby", "execution_started"))
            await state.consumer.drain()
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM executions WHERE org=$1 AND id='h1'", org)
        assert row is not None
        assert row["status"] == events[-1].status.value
        assert row["message"] == events[0].execution.message  # type: ignore[union-attr]
        dlq = await js.pull_subscribe(subjects.all_dlq, stream=subjects.dlq_stream)
        msgs = []
        with contextlib.suppress(TimeoutError):
            msgs = await dlq.fetch(1, timeout=5)
        assert [m.headers["Fleet-Dlq-Reason"] for m in msgs if m.headers] == ["not_json"]
        dlq_count = metrics.registry.get_sample_value(
            "fleetwatch_ingest_dlq_total", {"reason": "not_json"}
        )
        assert dlq_count == 1.0
    finally:
        await pool.close()
