"""A batch that needs more advisory locks than Postgres has room for is written in parts.

Ingest takes one advisory lock per execution of a batch. On a server whose lock table is
small (here a throwaway cluster with max_locks_per_transaction=10, max_connections=20, so a
few hundred locks in all), a batch of 2,000 executions gets "out of shared memory"; ingest
must write it in smaller transactions, not dead-letter it and not stall.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import nats
import pytest

from shared.db import connect
from shared.events import Event
from shared.subjects import Subjects
from tests.chaos.infra import own_postgres
from tests.checks import stored_equals_fold
from tests.ingest.events_factory import execution_events
from tests.ingest.test_ingest_service import publish
from tests.procs import running


async def _counter(url: str, name: str, label: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and label in line
    )


@pytest.mark.timeout(180)
async def test_batch_beyond_the_lock_table_is_written_in_parts(
    subjects: Subjects, service_env: dict[str, str], org: str
) -> None:
    rng = random.Random(3)
    events: list[Event] = []
    for i in range(2_000):
        # One event per execution: 2,000 executions, 2,000 locks in one batch.
        events.append(execution_events(org, f"agent-{i % 7}", f"lk{i:05d}", rng)[-1])
    async with own_postgres("max_locks_per_transaction=10", "max_connections=20") as pg:
        env = {
            **service_env,
            "DATABASE_URL": pg.url,
            "INGEST_BATCH_SIZE": "2000",
            "INGEST_BATCH_TIMEOUT": "1.0",
            "INGEST_DB_POOL_SIZE": "2",
        }
        nc = await nats.connect(service_env["NATS_URL"])
        conn = await connect(pg.url)
        try:
            async with running("ingest", env) as ingest:
                await publish(nc.jetstream(), subjects, events)
                deadline = time.monotonic() + 90
                stored = 0
                while time.monotonic() < deadline:
                    stored = await conn.fetchval("SELECT count(*) FROM events WHERE org = $1", org)
                    if stored >= len(events):
                        break
                    await asyncio.sleep(0.25)
                assert stored == len(events)
                rows = await conn.fetch("SELECT * FROM executions WHERE org = $1", org)
                assert stored_equals_fold(rows, events) == []
                transient = await _counter(
                    ingest.url, "fleetwatch_ingest_db_errors_total", 'kind="transient"'
                )
                dead = await _counter(ingest.url, "fleetwatch_ingest_dlq_total", "")
                assert transient > 0, "the lock table never overflowed: the test proves nothing"
                assert dead == 0
                assert "writing the batch in halves" in ingest.log()
        finally:
            await conn.close()
            await nc.close()
