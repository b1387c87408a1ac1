"""CPU per event of the ingest handler, without NATS: a steadier gauge than bench/ingest.py.

The end-to-end benchmark's rounds differ by up to 1.6x on this 2-core machine, because
Python, Postgres and nats-server share the cores with other work. This one runs the real
handler (`BatchConsumer.handle`: validate, lock, look up, fold, COPY, commit, metrics, ack)
serially, batch after batch, on the real Postgres and the bench database of
bench/ingest.py (>= 1M rows, every index), and reports the CPU it took per event: the
Python process's and Postgres's (the bench database's backends and the server's shared
processes; other databases' backends on a shared server are not counted). Only the NATS
side is left out: the messages are plain objects with a subject, a body and a JetStream
reply subject, acked in memory.

Use it to compare two checkouts of the ingest code (run it in each, alternately); the
ratio to a raw COPY is bench/ingest.py's job.

Run: .venv/bin/python -m bench.ingest_cpu [--batches 20] [--rounds 5] [--two-events] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import uuid
from typing import Any

from bench.common import cpu_used, postgres_cpu, write_result
from bench.ingest import (
    PRELOAD_ROWS,
    QUICK_PRELOAD_ROWS,
    db_name,
    ensure_preloaded,
    loaded_rows,
    one_per_row,
    started_event,
)
from services.ingest.consumer import BatchConsumer
from services.ingest.fleet_metrics import FleetMetrics
from services.ingest.metrics import IngestMetrics
from shared.db import create_pool
from shared.gc_tuning import tune_for_throughput
from shared.subjects import Subjects

#: Messages per batch: fixed, so that results stay comparable across checkouts.
BATCH_SIZE = 1000


class _Delivered:
    """A fetched JetStream message as the handler reads it; `ack` only records the call."""

    __slots__ = ("_ackd", "acked", "data", "reply", "subject")

    def __init__(self, subject: str, data: bytes, seq: int) -> None:
        self.subject = subject
        self.data = data
        self.reply = f"$JS.ACK.EVENTS.ingest.1.{seq}.{seq}.1700000000000000000.0"
        self.acked = False
        self._ackd = False  # nats-py's own flag (set by the handler on a message it holds back)

    @property
    def is_acked(self) -> bool:
        return self.acked or self._ackd

    async def ack(self) -> None:
        self.acked = True

    async def in_progress(self) -> None:
        pass


async def _round(
    consumer: BatchConsumer, subjects: Subjects, batches: int, two: bool, database: str
) -> Any:
    tag = f"cpu{uuid.uuid4().hex[:8]}"
    events = one_per_row(tag, BATCH_SIZE * batches // (2 if two else 1))
    if two:
        events = [e for done in events for e in (started_event(done), done)]
    messages = [
        _Delivered(
            subjects.event(e.org, e.agent, e.type), e.model_dump_json(exclude_none=True).encode(), i
        )
        for i, e in enumerate(events, 1)
    ]
    gc.collect()
    pg_before, py_before = postgres_cpu(database), time.process_time()
    began = time.perf_counter()
    for start in range(0, len(messages), BATCH_SIZE):
        await consumer.handle(messages[start : start + BATCH_SIZE])  # type: ignore[arg-type]
    elapsed = time.perf_counter() - began
    python = time.process_time() - py_before
    postgres = cpu_used(pg_before, postgres_cpu(database))
    assert all(m.acked for m in messages), "a message was not acked"
    n = len(messages)
    return {
        "events": n,
        "python_cpu_us_per_event": round(python / n * 1e6, 1),
        "postgres_cpu_us_per_event": round(postgres / n * 1e6, 1),
        "serial_events_per_s": round(n / elapsed, 1),
    }


async def main(batches: int, rounds: int, two: bool, quick: bool = False) -> None:
    name = db_name(quick)
    url = await ensure_preloaded(name, QUICK_PRELOAD_ROWS if quick else PRELOAD_ROWS, reuse=True)
    table_rows = await loaded_rows(name)
    subjects = Subjects("fleet")
    pool = await create_pool(url, min_size=1, max_size=2)
    metrics = IngestMetrics.create()
    consumer = BatchConsumer(
        pool=pool,
        js=None,  # type: ignore[arg-type]  # dead letters only; these events are all valid
        subjects=subjects,
        metrics=metrics,
        fleet=FleetMetrics(metrics.registry),
    )
    tune_for_throughput()  # as the ingest service does
    runs = []
    try:
        for r in range(rounds):
            runs.append(await _round(consumer, subjects, batches, two, name))
            print(f"round {r + 1}: {runs[-1]}", flush=True)
    finally:
        await pool.close()
    result = {
        "events_per_row": 2 if two else 1,
        "quick": quick,
        "table_rows_before": table_rows,
        "batch_size": BATCH_SIZE,
        "rounds": rounds,
        "each_round": runs,
        "python_cpu_us_per_event": statistics.median(r["python_cpu_us_per_event"] for r in runs),
        "postgres_cpu_us_per_event": statistics.median(
            r["postgres_cpu_us_per_event"] for r in runs
        ),
    }
    print(
        f"median CPU per event: Python {result['python_cpu_us_per_event']} µs, "
        f"Postgres {result['postgres_cpu_us_per_event']} µs"
    )
    path = write_result("ingest_cpu" + ("_two" if two else ""), result, quick)
    print(f"written to {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=20, help="batches of 1,000 per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--two-events", action="store_true", help="started + completed per row")
    parser.add_argument(
        "--quick", action="store_true", help="5 batches, 2 rounds, on the 100k-row quick database"
    )
    args = parser.parse_args()
    if args.quick:
        args.batches, args.rounds = 5, 2
    asyncio.run(main(args.batches, args.rounds, args.two_events, args.quick))
