"""An invalid message is acked once its dead letter is stored, not after the batch commits."""

from __future__ import annotations

import asyncio
import contextlib
import random
from urllib.parse import urlsplit

import nats

from services.ingest.consumer import BatchConsumer
from services.ingest.metrics import IngestMetrics
from shared.db import create_pool
from shared.subjects import Subjects
from tests.chaos.infra import proxy_to, via_port
from tests.ingest.conftest import Wired
from tests.ingest.events_factory import execution_events, to_wire


async def _ack_pending(js: nats.js.JetStreamContext, subjects: Subjects) -> int:
    info = await js.consumer_info(subjects.events_stream, "dlq-ack")
    return int(info.num_ack_pending)


async def test_a_dead_letter_is_acked_while_the_database_is_down(
    wired: Wired, database_url: str, subjects: Subjects, org: str
) -> None:
    js = wired.js
    async with proxy_to(urlsplit(database_url).port or 5432) as proxy:
        pool = await create_pool(via_port(database_url, proxy.port), min_size=1, max_size=1)
        consumer = BatchConsumer(
            pool=pool, js=js, subjects=subjects, metrics=IngestMetrics.create(), retry_min=0.1
        )
        (good,) = execution_events(org, "ruby", "dl1", random.Random(3))[:1]
        await js.publish(subjects.event(org, "ruby", "execution_started"), b"{broken")
        await js.publish(subjects.event(org, "ruby", good.type), to_wire(good))
        sub = await js.pull_subscribe(
            subjects.all_events, durable="dlq-ack", stream=subjects.events_stream
        )
        messages = await sub.fetch(2, timeout=5)
        assert len(messages) == 2
        proxy.cut()  # Postgres unreachable: the good event's batch waits and retries
        task = asyncio.create_task(consumer.handle(messages))
        try:
            async with asyncio.timeout(10):
                while await _ack_pending(js, subjects) != 1:
                    await asyncio.sleep(0.05)
            assert not task.done()
            dlq = await js.pull_subscribe(subjects.all_dlq, stream=subjects.dlq_stream)
            (dead,) = await dlq.fetch(1, timeout=5)
            assert dead.headers is not None
            assert dead.headers["Fleet-Dlq-Reason"] == "not_json"
            proxy.heal()
            async with asyncio.timeout(30):
                await task
            async with asyncio.timeout(10):  # the ack is written; the server counts it soon
                while await _ack_pending(js, subjects) != 0:
                    await asyncio.sleep(0.05)
            async with pool.acquire() as conn:
                stored = await conn.fetchval(
                    "SELECT count(*) FROM executions WHERE org = $1 AND id = 'dl1'", org
                )
            assert stored == 1
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await pool.close()
