"""Where one ingest batch spends its time, step by step (a diagnostic, not a figure to reach).

Runs `apply_batch` (lock, look-ups, event records, fold, COPY, registry) serially on the bench
database of bench/ingest.py (>= 1M rows, every index), one transaction per batch, and reports
the wall time of each of its SQL steps, of validation and of the commit, in µs per event,
beside a raw COPY of the rows those events make, in the same batches, in the same round.
While a step's statement runs, the Python process waits for Postgres, so its wall time is
about Postgres's CPU for it (plus the client's encoding, for the COPYs); what is left of the
batch's time is Python's (the fold, building rows). No NATS: the messages are validated from
bytes as the consumer does, then applied. The registry cache is off, so its upserts run in
every batch (in the service they run once per new org or agent).

Use it to see which step a change of ingest's shape would have to cut; bench/ingest.py gives
the ratio to a raw COPY, bench/ingest_cpu.py the CPU per event.

Run: .venv/bin/python -m bench.ingest_steps [--batch-size 2000] [--batches 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from bench.common import write_result
from bench.ingest import (
    COPY_COLUMNS,
    PRELOAD_ROWS,
    db_name,
    ensure_preloaded,
    loaded_rows,
    one_per_row,
    rows_for,
)
from services.ingest import repo
from services.ingest.batch import Incoming, apply_batch
from shared.db import create_pool
from shared.gc_tuning import tune_for_throughput
from shared.subjects import Subjects
from shared.validation import Rejected, validate

#: The SQL steps of `apply_batch`, each a function of services/ingest/repo.py.
STEPS = (
    "lock_executions",
    "fetch_executions",
    "fetch_components",
    "fetch_step_owners",
    "insert_events",
    "write_rows",
    "upsert_registry",
)


def _timed(
    spent: dict[str, float], name: str, step: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return await step(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - began

    return timed


async def _round(
    pool: asyncpg.Pool, subjects: Subjects, batch_size: int, batches: int
) -> dict[str, float]:
    spent: dict[str, float] = defaultdict(float)
    originals = {name: getattr(repo, name) for name in STEPS}
    events = one_per_row(f"steps{uuid.uuid4().hex[:8]}", batch_size * batches)
    wire = [
        (subjects.event(e.org, e.agent, e.type), e.model_dump_json(exclude_none=True).encode())
        for e in events
    ]
    gc.collect()
    began = time.perf_counter()
    items = []
    for seq, (subject, data) in enumerate(wire, 1):
        checked = validate(subjects, subject, data)
        assert not isinstance(checked, Rejected), checked
        items.append(Incoming(checked, seq))
    spent["validate"] = time.perf_counter() - began
    for name, step in originals.items():
        setattr(repo, name, _timed(spent, name, step))
    try:
        for start in range(0, len(items), batch_size):
            async with pool.acquire() as conn:
                began = time.perf_counter()
                transaction = conn.transaction()
                await transaction.start()
                await apply_batch(conn, items[start : start + batch_size])
                committing = time.perf_counter()
                await transaction.commit()
                spent["commit"] += time.perf_counter() - committing
                spent["batch"] += time.perf_counter() - began
    finally:
        for name, step in originals.items():
            setattr(repo, name, step)
    sql = sum(spent[name] for name in STEPS)
    spent["python_in_batch"] = spent["batch"] - sql - spent["commit"]
    spent["raw_copy"] = await _raw_copy(pool, batch_size, batches)
    return {name: round(seconds / len(items) * 1e6, 2) for name, seconds in spent.items()}


async def _raw_copy(pool: asyncpg.Pool, batch_size: int, batches: int) -> float:
    """Seconds to COPY the rows ingest would write for as many new executions, in the same
    batches, one transaction each: the baseline of `write_rows` (and of the whole batch)."""
    records = rows_for(one_per_row(f"raw{uuid.uuid4().hex[:8]}", batch_size * batches))
    gc.collect()
    took = 0.0
    for start in range(0, len(records), batch_size):
        async with pool.acquire() as conn:
            began = time.perf_counter()
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "executions", records=records[start : start + batch_size], columns=COPY_COLUMNS
                )
            took += time.perf_counter() - began
    return took


async def main(batch_size: int, batches: int, rounds: int) -> None:
    name = db_name(False)
    url = await ensure_preloaded(name, PRELOAD_ROWS, reuse=True)
    table_rows = await loaded_rows(name)
    pool = await create_pool(url, min_size=1, max_size=1)
    tune_for_throughput()  # as the ingest service does
    runs = []
    try:
        for r in range(rounds):
            runs.append(await _round(pool, Subjects("fleet"), batch_size, batches))
            shown = sorted(runs[-1].items(), key=lambda kv: -kv[1])
            print(f"round {r + 1} (µs/event): " + ", ".join(f"{k} {v}" for k, v in shown))
    finally:
        await pool.close()
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    result = {
        "table_rows_before": table_rows,
        "batch_size": batch_size,
        "events_per_round": batch_size * batches,
        "rounds": rounds,
        "us_per_event_median": medians,
        "each_round": runs,
    }
    print("median µs/event: " + ", ".join(f"{k} {v}" for k, v in medians.items()))
    ratios = [run["raw_copy"] / run["batch"] for run in runs]
    result["raw_copy_over_batch_each_round"] = [round(r, 3) for r in ratios]
    print(f"a raw COPY of the same rows takes {statistics.median(ratios):.3f} x a batch's time")
    print(f"written to {write_result('ingest_steps', result)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=2000, help="events per batch")
    parser.add_argument("--batches", type=int, default=10, help="batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.batch_size, args.batches, args.rounds))
