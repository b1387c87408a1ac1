"""On-demand step syncs against a real HTTP engine: a run is fetched at most once per TTL.

The query service asks on every view of a detail page that shows no steps; before, a run with
no steps, or an erring engine, was fetched from the engine on each view.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest_asyncio

from services.reconciler.engines.http import HttpEngine
from services.reconciler.loop import Reconciler
from shared.subjects import Subjects
from tests.reconciler.helpers import http_engine, insert_row, make_reconciler
from tests.reconciler.http_engine import EngineState

TTL_S = 0.5


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[tuple[EngineState, HttpEngine]]:
    state = EngineState()
    async with http_engine(state, error_attempts=2) as adapter:
        yield state, adapter


@pytest_asyncio.fixture
async def reconciler(
    engine: tuple[EngineState, HttpEngine], database_url: str, subjects: Subjects
) -> AsyncIterator[Reconciler]:
    found = await make_reconciler(
        database_url,
        {"http": engine[1]},
        None,  # no publisher: the answer only counts the steps
        subjects,
        component_engines=["http"],
        on_demand_ttl=timedelta(seconds=TTL_S),
    )
    try:
        yield found
    finally:
        await found.pool.close()


async def test_a_run_is_fetched_once_per_ttl_on_demand_and_every_time_in_the_background(
    engine: tuple[EngineState, HttpEngine], reconciler: Reconciler, db: asyncpg.Connection, org: str
) -> None:
    state, _ = engine
    state.add("run-quiet", "running")  # an engine run with no steps (yet)
    await insert_row(db, org, "x-quiet", engine="http", external_id="run-quiet")
    await insert_row(db, org, "x-down", engine="http", external_id="e500-down")

    answers = [await reconciler.sync_components(org, "x-quiet", "on_demand") for _ in range(5)]
    assert all(a.ok and a.steps == 0 for a in answers)
    assert state.calls["run-quiet"] == 1

    # An erring engine: the error is the answer for the TTL too (2 attempts, once).
    errors = [await reconciler.sync_components(org, "x-down", "on_demand") for _ in range(3)]
    assert all(not e.ok and "500" in (e.error or "") for e in errors)
    assert state.calls["e500-down"] == 2
    assert reconciler.metrics.on_demand_cached._value.get() == 6

    # Other executions and the background fill are not held back by it.
    assert (await reconciler.sync_components(org, "x-quiet", "background")).ok
    assert state.calls["run-quiet"] == 2

    await asyncio.sleep(TTL_S + 0.1)
    assert (await reconciler.sync_components(org, "x-quiet", "on_demand")).ok
    assert state.calls["run-quiet"] == 3
