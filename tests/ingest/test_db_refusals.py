"""A database that cannot write now is waited out; only refused content is dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import pytest

from services.ingest.consumer import BatchConsumer
from services.ingest.db_errors import refused_content
from services.ingest.metrics import IngestMetrics
from shared.db import create_pool
from shared.subjects import Subjects
from tests.ingest.pulled import acks_pending_settle, one_event_per_execution


@pytest.mark.parametrize(
    ("exc", "content"),
    [
        (asyncpg.exceptions.NumericValueOutOfRangeError("out of range"), True),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), True),
        (asyncpg.exceptions.ProgramLimitExceededError("index row size"), True),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"), False),
        (asyncpg.exceptions.DiskFullError("no space"), False),
        (asyncpg.exceptions.UndefinedTableError("no executions"), False),
        (asyncpg.exceptions.InsufficientPrivilegeError("denied"), False),
        (asyncpg.exceptions.CrashShutdownError("crash"), False),
        (asyncpg.exceptions.InternalServerError("XX000"), False),
        (ConnectionResetError("reset"), False),
        (TimeoutError(), False),
        (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), False),
        (TypeError("Integer exceeds 64-bit range"), True),
        (OverflowError("date value out of range"), True),
    ],
)
def test_content_errors_are_told_from_database_trouble(exc: BaseException, content: bool) -> None:
    assert refused_content(exc) is content


async def test_a_read_only_database_is_waited_out_not_dead_lettered(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    """With the database refusing writes (a read-only replica after a failover, say), nothing
    is acked or dead-lettered; once it writes again, every event is stored."""
    read_only = {"on": True}

    async def setup(conn: asyncpg.Connection) -> None:
        flag = "on" if read_only["on"] else "off"
        await conn.execute(f"SET default_transaction_read_only = {flag}")

    count = 6
    async with one_event_per_execution(
        nats_url, database_url, subjects, org, count, "ro"
    ) as published:
        js = published.js
        pool = await create_pool(database_url, setup=setup)
        metrics = IngestMetrics.create()
        consumer = BatchConsumer(
            pool=pool, js=js, subjects=subjects, metrics=metrics, retry_min=0.05, retry_max=0.2
        )
        sub = await js.pull_subscribe(
            subjects.all_events, durable="ro", stream=subjects.events_stream
        )
        try:
            msgs = await sub.fetch(count, timeout=5)
            assert len(msgs) == count
            handling = asyncio.create_task(consumer.handle(msgs))
            # At least a second, and until the write was retried (a loaded machine is slower).
            started = time.monotonic()
            while True:
                await asyncio.sleep(0.05)
                transient = metrics.registry.get_sample_value(
                    "fleetwatch_ingest_db_errors_total", {"kind": "transient"}
                )
                elapsed = time.monotonic() - started
                if elapsed >= 1.0 and (transient or 0) >= 2:
                    break
                assert elapsed < 10, f"{transient} transient errors after {elapsed:.1f}s"
            assert not handling.done()
            info = await sub.consumer_info()
            assert info.num_ack_pending == count  # nothing acked while nothing is stored
            assert (await js.stream_info(subjects.dlq_stream)).state.messages == 0

            read_only["on"] = False
            await asyncio.wait_for(handling, timeout=10)
            async with pool.acquire() as conn:
                stored = await conn.fetchval("SELECT count(*) FROM executions WHERE org = $1", org)
            assert stored == count
            assert (await js.stream_info(subjects.dlq_stream)).state.messages == 0
            assert await acks_pending_settle(sub) == 0
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            await pool.close()
