"""On shutdown, messages the server delivered after the last fetch are committed and acked.

The last pull request can still bring messages into the subscription's queue once the pull
loop has fetched for the last time; nothing would take them, and they would sit
unacknowledged until ack_wait. Real JetStream and Postgres; faststream's broker is stood in
for by its two parts the shutdown uses (`subscribers` and `stop`).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from nats.js import JetStreamContext

from services.ingest.app import _stop_consuming
from services.ingest.consumer import BatchConsumer
from services.ingest.metrics import IngestMetrics
from services.ingest.settings import IngestSettings
from shared.db import create_pool
from shared.subjects import Subjects
from tests.ingest.pulled import (
    acks_pending_settle,
    fetch_from_busy_loop,
    one_event_per_execution,
    unpatched_fetch,
)


async def test_messages_left_in_the_queue_are_finished_on_shutdown(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    async with one_event_per_execution(nats_url, database_url, subjects, org, 10, "so") as p:
        await _shutdown(p.js, p.settings, database_url, subjects, org)


async def _shutdown(
    js: JetStreamContext,
    settings: IngestSettings,
    database_url: str,
    subjects: Subjects,
    org: str,
) -> None:
    sub = await js.pull_subscribe(subjects.all_events, "ingest", stream=subjects.events_stream)
    # nats-py's own fetch from a busy loop: it returns one message, the rest of the server's
    # answer lands in the subscription's queue.
    taken = await fetch_from_busy_loop(sub, 10, unpatched_fetch())
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
        assert await acks_pending_settle(sub) == 0  # the server applies acks asynchronously
        info = await js.consumer_info(subjects.events_stream, "ingest")
        assert info.num_pending == 0
    finally:
        await pool.close()
