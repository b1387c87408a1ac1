"""An engine that accepts connections and never answers must not hold up the pass: its
lookups stop after a run of failures (the breaker) or its time limit, and another engine's
corrections are published in the same pass."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import nats
import orjson
import pytest_asyncio

from services.reconciler.engines.http import HttpEngine, HttpEngineConfig
from services.reconciler.loop import Reconciler
from services.reconciler.rules import Kind
from services.reconciler.settings import DEFAULT_STATUS_MAP
from shared.subjects import Subjects
from tests.procs import free_port
from tests.reconciler.helpers import insert_row, make_reconciler, silent_server, stream_messages
from tests.reconciler.http_engine import EngineState, serving

ROWS = 40
CONCURRENCY = 4


@pytest_asyncio.fixture
async def engines(org: str) -> AsyncIterator[dict[str, HttpEngine]]:
    """`silent`: accepts and never answers (0.3 s timeout, 3 attempts); `good`: answers."""
    state = EngineState()
    state.add(f"job-{org}", "succeeded")  # its own id: the module shares a database
    async with silent_server() as silent_url, serving(state, free_port()) as url:
        found = {
            "silent": HttpEngine(
                HttpEngineConfig(
                    base_url=silent_url,
                    name="silent",
                    list_path=None,
                    status_map=DEFAULT_STATUS_MAP,
                    timeout_seconds=0.3,
                    backoff_seconds=0.01,
                    max_connections=CONCURRENCY,
                )
            ),
            "good": HttpEngine(
                HttpEngineConfig(
                    base_url=url, name="good", list_path=None, status_map=DEFAULT_STATUS_MAP
                )
            ),
        }
        try:
            yield found
        finally:
            for engine in found.values():
                await engine.close()


async def _pass(
    engines: dict[str, HttpEngine],
    database_url: str,
    db: asyncpg.Connection,
    org: str,
    nats_url: str,
    subjects: Subjects,
    **options: Any,
) -> tuple[Reconciler, list[str]]:
    for i in range(ROWS):
        await insert_row(db, org, f"s{i}", engine="silent", external_id=f"job-{i}")
    await insert_row(db, org, "g1", engine="good", external_id=f"job-{org}")
    nc = await nats.connect(nats_url)
    reconciler = await make_reconciler(
        database_url, engines, nc.jetstream(), subjects, concurrency=CONCURRENCY, **options
    )
    try:
        report = await reconciler.run_pass(fix=True)
    finally:
        await reconciler.pool.close()
        await nc.close()
    by_id = {d.execution_id: d for d in report.decisions if d.org == org}
    assert by_id["g1"].kind is Kind.STATUS_MISMATCH
    published = await stream_messages(nats_url, subjects)
    assert [orjson.loads(data)["execution"]["id"] for _, data in published] == ["g1"]
    silent = [by_id[f"s{i}"] for i in range(ROWS)]
    assert {d.kind for d in silent} == {Kind.ENGINE_ERROR}
    return reconciler, [d.reason for d in silent]


async def test_a_run_of_failures_stops_the_engines_other_lookups_for_the_pass(
    engines: dict[str, HttpEngine],
    database_url: str,
    db: asyncpg.Connection,
    org: str,
    nats_url: str,
    subjects: Subjects,
) -> None:
    """Without the breaker all 40 lookups wait out three timeouts each (~10 s at 4 at once)."""
    threshold = 4
    _, reasons = await _pass(
        engines, database_url, db, org, nats_url, subjects, breaker_threshold=threshold
    )
    asked = [r for r in reasons if "not asked" not in r]
    # Lookups already past the breaker's check when it opened still ran: at most one per slot.
    assert len(asked) <= threshold + CONCURRENCY, asked
    skipped = [r for r in reasons if "not asked: silent failed" in r]
    assert len(skipped) >= ROWS - threshold - CONCURRENCY
    assert "timed out" in skipped[0]


async def test_an_engines_lookups_stop_at_its_time_limit(
    engines: dict[str, HttpEngine],
    database_url: str,
    db: asyncpg.Connection,
    org: str,
    nats_url: str,
    subjects: Subjects,
) -> None:
    _, reasons = await _pass(
        engines,
        database_url,
        db,
        org,
        nats_url,
        subjects,
        breaker_threshold=0,
        engine_pass_timeout_s=1.5,
    )
    late = [r for r in reasons if "not checked: silent took over 1.5 s" in r]
    # ~1 s per lookup, 4 at once: at most 8 finish inside 1.5 s.
    assert len(late) >= ROWS - 2 * CONCURRENCY, reasons[:5]
