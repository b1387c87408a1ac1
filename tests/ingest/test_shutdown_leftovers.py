"""On shutdown, messages the server delivered after the last fetch are committed and acked.

The last pull request can still bring messages into the subscription's queue once the pull
loop has fetched for the last time; nothing would take them, and they would sit
unacknowledged until ack_wait. Real JetStream and Postgres; faststream's broker is stood in
for by its two parts the shutdown uses (`subscribers` and `stop`).
"""

from __future__ import annotations

import asyncio
import random
import time
from types import SimpleNamespace

import nats
from nats.js import JetStreamContext

from services.ingest.app import _stop_consuming
from services.ingest.consumer import BatchConsumer
from services.ingest.metrics import IngestMetrics
from services.ingest.settings import IngestSettings
from shared.db import create_pool
from shared.streams import ensure_streams
from shared.subjects import Subjects
from tests.ingest.events_factory import execution_events
from tests.ingest.test_ingest_service import publish


async def test_messages_left_in_the_queue_are_finished_on_shutdown(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    rng = random.Random(5)
    events = [execution_events(org, "ruby", f"so{i:02d}", rng)[-1] for i in range(10)]
    settings = IngestSettings(
        NATS_URL=nats_url, DATABASE_URL=database_url, FLEETWATCH_SUBJECT_PREFIX=subjects.prefix
    )
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, settings)
    await publish(js, subjects, events)
    sub = await js.pull_subscribe(subjects.all_events, "ingest", stream=subjects.events_stream)
    # nats-py's own fetch from a busy loop: it returns one message, the rest of the server's
    # answer lands in the subscription's queue.
    fetch = JetStreamContext.PullSubscription.fetch
    unpatched = getattr(fetch, "__wrapped__", fetch)
    task = asyncio.create_task(unpatched(sub, 10, timeout=0.05))
    await asyncio.sleep(0)
    time.sleep(0.2)  # noqa: ASYNC251 - the loop is busy past the window as the answer arrives
    taken = await task
    assert 0 < len(taken) < 10

    pool = await create_pool(database_url)
    consumer = BatchConsumer(pool=pool, js=js, subjects=subjects, metrics=IngestMetrics.create())
    consumer.stopping.set()
    await consumer.finish(taken)  # what the pull loop had fetched: its last batch
    broker = SimpleNamespace(
        subscribers=[SimpleNamespace(running=False, subscription=sub)],
        stop=lambda: asyncio.sleep(0),
    )
    try:
        await _stop_consuming(broker, consumer, settings)  # type: ignore[arg-type]
        async with pool.acquire() as conn:
            stored = await conn.fetchval("SELECT count(*) FROM executions WHERE org = $1", org)
        assert stored == 10
        info = await js.consumer_info(subjects.events_stream, "ingest")
        assert info.num_ack_pending == 0
        assert info.num_pending == 0
    finally:
        await pool.close()
        await nc.close()
