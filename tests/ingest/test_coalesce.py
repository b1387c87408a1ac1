"""Small fetched chunks join the batch that waits for a slot, up to the batch size.

A busy event loop fetches small chunks (the pull window is wall-clock time). While every slot
is busy they must become one batch, not one transaction each; with a slot free a chunk must
start at once. Real JetStream messages, real Postgres; the one slot is kept busy by holding
the advisory lock of the first chunk's execution from another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from nats.js import JetStreamContext

from services.ingest import consumer as consumer_module
from services.ingest.consumer import BatchConsumer
from services.ingest.metrics import IngestMetrics
from services.ingest.repo import lock_key
from shared.db import connect, create_pool
from shared.subjects import Subjects
from shared.validation import validate
from tests.ingest.pulled import acks_pending_settle, one_event_per_execution


def _sizes(metrics: IngestMetrics) -> tuple[float | None, float | None]:
    registry = metrics.registry
    return (
        registry.get_sample_value("fleetwatch_ingest_batch_size_count"),
        registry.get_sample_value("fleetwatch_ingest_batch_size_sum"),
    )


@dataclass
class _OneSlot:
    consumer: BatchConsumer
    metrics: IngestMetrics
    pool: asyncpg.Pool
    blocker: asyncpg.Connection


@contextlib.asynccontextmanager
async def _one_slot(
    js: JetStreamContext, database_url: str, subjects: Subjects, org: str, held: str
) -> AsyncIterator[_OneSlot]:
    """A consumer with one slot and batches of up to 10, whose first batch cannot commit:
    execution `held` is locked from another connection until `blocker` unlocks it."""
    pool = await create_pool(database_url)
    blocker = await connect(database_url)
    metrics = IngestMetrics.create()
    consumer = BatchConsumer(
        pool=pool, js=js, subjects=subjects, metrics=metrics, max_in_flight=1, batch_size=10
    )
    try:
        await blocker.execute("SELECT pg_advisory_lock($1)", lock_key(org, held))
        yield _OneSlot(consumer, metrics, pool, blocker)
    finally:
        await blocker.close()
        await pool.close()


@pytest.mark.timeout(60)
async def test_chunks_waiting_for_a_slot_become_one_batch(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    async with one_event_per_execution(nats_url, database_url, subjects, org, 15, "co") as p:
        await _coalesce(p.js, database_url, subjects, org)


async def _coalesce(js: JetStreamContext, database_url: str, subjects: Subjects, org: str) -> None:
    pull = await js.pull_subscribe(subjects.all_events, "coalesce", stream=subjects.events_stream)
    chunks = [await pull.fetch(3, timeout=5) for _ in range(5)]
    assert [len(c) for c in chunks] == [3] * 5

    # The first chunk's execution is locked elsewhere: its batch holds the only slot.
    async with _one_slot(js, database_url, subjects, org, "co00") as slot:
        consumer, metrics = slot.consumer, slot.metrics
        await consumer.submit(chunks[0])  # a slot is free: it starts at once
        await asyncio.sleep(0.3)
        assert _sizes(metrics) == (1.0, 3.0)

        for chunk in chunks[1:4]:  # 3 + 3 + 3 = 9 <= 10: they join one waiting batch
            await asyncio.wait_for(consumer.submit(chunk), timeout=2)
        # 9 + 3 > 10: the fifth chunk waits until the waiting batch gets a slot.
        fifth = asyncio.create_task(consumer.submit(chunks[4]))
        await asyncio.sleep(0.3)
        assert not fifth.done()

        await slot.blocker.execute("SELECT pg_advisory_unlock_all()")
        await asyncio.wait_for(fifth, timeout=10)
        await asyncio.wait_for(consumer.drain(), timeout=20)
        assert _sizes(metrics) == (3.0, 15.0)  # batches of 3, 9 and 3

        async with slot.pool.acquire() as conn:
            stored = await conn.fetchval("SELECT count(*) FROM executions WHERE org = $1", org)
        assert stored == 15
        # Every message acked after its commit (the server applies acks asynchronously).
        assert await acks_pending_settle(pull) == 0


@pytest.mark.timeout(60)
async def test_a_chunk_waiting_for_a_slot_is_validated_on_arrival(
    nats_url: str,
    database_url: str,
    subjects: Subjects,
    org: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Validation is Python work that needs no slot: it runs while the batch in flight waits
    for Postgres, so that the slot holds only the transaction and the fold."""
    validated: list[str] = []

    def recording(subjects_: Subjects, subject: str, data: bytes) -> object:
        validated.append(subject)
        return validate(subjects_, subject, data)

    monkeypatch.setattr(consumer_module, "validate", recording)
    async with one_event_per_execution(nats_url, database_url, subjects, org, 6, "pv") as p:
        pull = await p.js.pull_subscribe(
            subjects.all_events, "prevalidate", stream=subjects.events_stream
        )
        first, second = [await pull.fetch(3, timeout=5) for _ in range(2)]
        async with _one_slot(p.js, database_url, subjects, org, "pv00") as slot:
            await slot.consumer.submit(first)  # takes the only slot, then waits for the lock
            await asyncio.sleep(0.3)
            assert len(validated) == 3

            await asyncio.wait_for(slot.consumer.submit(second), timeout=2)  # waits for a slot
            assert len(validated) == 6  # ... already validated

            await slot.blocker.execute("SELECT pg_advisory_unlock_all()")
            await asyncio.wait_for(slot.consumer.drain(), timeout=20)
            assert len(validated) == 6  # once each
            async with slot.pool.acquire() as conn:
                stored = await conn.fetchval("SELECT count(*) FROM executions WHERE org = $1", org)
            assert stored == 6
            assert await acks_pending_settle(pull) == 0
