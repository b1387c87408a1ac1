"""Batches in flight that share an execution: the rest of the later batch does not wait.

Two batches writing the same execution serialize on its advisory lock. The later batch
commits the executions nobody else is writing first and the shared one once the earlier
batch is done (services/ingest/inflight.py).
"""

from __future__ import annotations

import asyncio
import random

import asyncpg
import nats
from nats.js.api import StreamConfig

from services.ingest.consumer import BatchConsumer
from services.ingest.inflight import KeysInFlight
from services.ingest.metrics import IngestMetrics
from services.ingest.repo import lock_key
from shared.db import connect, create_pool
from shared.subjects import Subjects
from tests.ingest.events_factory import execution_events
from tests.ingest.test_ingest_service import publish


async def test_keys_held_by_one_batch_wait_for_its_release() -> None:
    keys = KeysInFlight()
    free, busy = keys.take_free({("o", "a"), ("o", "b")})
    assert (free, busy) == ({("o", "a"), ("o", "b")}, set())
    free, busy = keys.take_free({("o", "b"), ("o", "c")})
    assert (free, busy) == ({("o", "c")}, {("o", "b")})
    waiter = asyncio.create_task(keys.take_when_free(busy))
    await asyncio.sleep(0.01)
    keys.release({("o", "c")})  # not the key it waits for
    await asyncio.sleep(0.01)
    assert not waiter.done()
    keys.release({("o", "a"), ("o", "b")})
    await asyncio.wait_for(waiter, 1)
    assert ("o", "b") in keys
    assert ("o", "a") not in keys


async def _status(conn: asyncpg.Connection, org: str, ex_id: str) -> str | None:
    status: str | None = await conn.fetchval(
        "SELECT status FROM executions WHERE org = $1 AND id = $2", org, ex_id
    )
    return status


async def test_a_batch_sharing_an_execution_commits_its_other_executions_first(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    rng = random.Random(8)
    shared = execution_events(org, "ruby", "shared", rng)
    stalled = execution_events(org, "ruby", "stalled", rng)[-1]
    other = execution_events(org, "ruby", "other", rng)[-1]
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=subjects.events_stream, subjects=[subjects.all_events]))
    await publish(js, subjects, [shared[0], stalled])
    await publish(js, subjects, [shared[-1], other])
    sub = await js.pull_subscribe(subjects.all_events, "inflight", stream=subjects.events_stream)
    first, second = await sub.fetch(2, timeout=5), await sub.fetch(2, timeout=5)
    pool = await create_pool(database_url)
    blocker, watcher = await connect(database_url), await connect(database_url)
    consumer = BatchConsumer(pool=pool, js=js, subjects=subjects, metrics=IngestMetrics.create())
    try:
        # Another writer holds one execution of the first batch: it stalls in its lock.
        await blocker.execute("SELECT pg_advisory_lock($1)", lock_key(org, "stalled"))
        earlier = asyncio.create_task(consumer.handle(first))
        await asyncio.sleep(0.3)
        later = asyncio.create_task(consumer.handle(second))
        for _ in range(100):
            if await _status(watcher, org, "other") is not None:
                break
            await asyncio.sleep(0.05)
        assert await _status(watcher, org, "other") == other.status.value
        assert not earlier.done()
        assert not later.done()
        assert await _status(watcher, org, "shared") is None  # waits for the first batch
        await blocker.execute("SELECT pg_advisory_unlock($1)", lock_key(org, "stalled"))
        await asyncio.wait_for(asyncio.gather(earlier, later), 10)
        assert await _status(watcher, org, "shared") == shared[-1].status.value
        assert await _status(watcher, org, "stalled") == stalled.status.value
    finally:
        await blocker.close()
        await watcher.close()
        await pool.close()
        await nc.close()
