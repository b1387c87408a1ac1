"""A stored execution deleted between a batch's read and its write (retention takes row locks,
not ingest's advisory locks) must not swallow the batch's event: the write notices the rows it
updated are fewer than it read, the batch is rolled back, and its retry writes the row anew."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from services.ingest import repo
from services.ingest.batch import Incoming, apply_batch
from services.ingest.consumer import BatchConsumer
from services.ingest.merge import RowState
from services.ingest.metrics import IngestMetrics
from shared.db import connect, create_pool
from shared.events import Event
from shared.subjects import Subjects
from tests.ingest.conftest import Wired
from tests.ingest.events_factory import execution_events, to_wire


async def test_an_execution_deleted_mid_batch_is_written_again_on_retry(
    db: asyncpg.Connection, database_url: str, org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, *rest = execution_events(org, "agent-1", "late", random.Random(7))
    terminal = rest[-1]
    async with db.transaction():
        await apply_batch(db, [Incoming(started)])

    fetch = repo.fetch_executions
    retention = await connect(database_url)

    async def read_then_retention_deletes(
        conn: asyncpg.Connection, keys: Sequence[Any]
    ) -> dict[Any, RowState]:
        found = await fetch(conn, keys)
        # What retention commits between the batch's look-up and its UPDATE.
        await retention.execute("DELETE FROM executions WHERE org = $1", org)
        return found

    monkeypatch.setattr(repo, "fetch_executions", read_then_retention_deletes)
    try:
        with pytest.raises(repo.RowsVanished, match="1 of 1 stored executions"):
            async with db.transaction():
                await apply_batch(db, [Incoming(terminal)])
    finally:
        await retention.close()
    monkeypatch.setattr(repo, "fetch_executions", fetch)

    # The consumer retries a batch that failed so (a transient error): the row is new now.
    async with db.transaction():
        outcome = await apply_batch(db, [Incoming(terminal)])
    assert [e.event_id for e in outcome.applied] == [terminal.event_id]
    row = await db.fetchrow("SELECT status FROM executions WHERE org = $1 AND id = 'late'", org)
    assert row is not None
    assert row["status"] == terminal.status.value


async def test_the_consumer_writes_such_a_batch_again_at_once(
    wired: Wired, database_url: str, subjects: Subjects, org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, *rest = execution_events(org, "agent-1", "late", random.Random(8))
    terminal = rest[-1]
    pool = await create_pool(database_url, max_size=2)
    consumer = BatchConsumer(
        pool=pool, js=wired.js, subjects=subjects, metrics=IngestMetrics.create()
    )
    sub = await wired.js.pull_subscribe(subjects.org_events(org), durable="vanish")

    async def deliver(event: Event) -> None:
        await wired.js.publish(subjects.event(org, "agent-1", event.type), to_wire(event))
        await consumer.handle(await sub.fetch(1, timeout=5))

    fetch = repo.fetch_executions
    deleted: list[str] = []

    async def retention_strikes_once(
        conn: asyncpg.Connection, keys: Sequence[Any]
    ) -> dict[Any, RowState]:
        found = await fetch(conn, keys)
        if found and not deleted:
            async with pool.acquire() as other:
                deleted.append(await other.execute("DELETE FROM executions WHERE org = $1", org))
        return found

    try:
        await deliver(started)
        monkeypatch.setattr(repo, "fetch_executions", retention_strikes_once)
        await deliver(terminal)
        assert deleted == ["DELETE 1"]
        async with pool.acquire() as conn:
            status = await conn.fetchval(
                "SELECT status FROM executions WHERE org = $1 AND id = 'late'", org
            )
        assert status == terminal.status.value
        assert consumer._metrics.db_errors.labels("transient")._value.get() == 0
    finally:
        await pool.close()
