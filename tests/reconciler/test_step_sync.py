"""Step sync and listings against real HTTP engines and the real Postgres: the background
sync reaches every stale run and is bounded like a pass; a run that may be another
execution's gives no steps; one unreadable run in a listing hides no other."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import nats
import pytest_asyncio

from services.reconciler.engines.http import HttpEngine, HttpEngineConfig
from services.reconciler.rules import Kind
from services.reconciler.settings import DEFAULT_STATUS_MAP
from shared.subjects import Subjects
from tests.reconciler.helpers import ago, insert_row, make_reconciler, silent_server
from tests.reconciler.http_engine import EngineState


@pytest_asyncio.fixture
async def silent() -> AsyncIterator[HttpEngine]:
    """An engine that never answers (3 attempts of 0.3 s each)."""
    async with silent_server() as url:
        adapter = HttpEngine(
            HttpEngineConfig(
                base_url=url,
                name="http",
                list_path=None,
                status_map=DEFAULT_STATUS_MAP,
                timeout_seconds=0.3,
                backoff_seconds=0.01,
            )
        )
        try:
            yield adapter
        finally:
            await adapter.close()


async def test_background_step_sync_reaches_runs_past_its_first_page(
    engine: tuple[EngineState, HttpEngine], database_url: str, db: asyncpg.Connection, org: str
) -> None:
    """Runs that sync without steps stay "stale" (no step row is ever written): they must not
    keep the 200 places of the first page from older runs."""
    state, adapter = engine
    await insert_row(
        db, org, "oldest", engine="http", external_id=f"{org}-oldest", status="success"
    )
    state.add(f"{org}-oldest", "succeeded")
    for i in range(230):
        await insert_row(
            db, org, f"r{i}", engine="http", external_id=f"{org}-{i}", status="success"
        )
        state.add(f"{org}-{i}", "succeeded")
    reconciler = await make_reconciler(
        database_url, {"http": adapter}, None, Subjects("unused"), component_engines=["http"]
    )
    try:
        await reconciler.sync_recent_components()
        assert state.calls[f"{org}-oldest"] == 1
        assert all(state.calls[f"{org}-{i}"] == 1 for i in range(230))
        # Synced at this version: not fetched again.
        await reconciler.sync_recent_components()
        assert state.calls[f"{org}-oldest"] == 1
    finally:
        await reconciler.pool.close()


async def test_background_step_sync_of_a_silent_engine_stops_at_its_breaker_and_time_limit(
    silent: HttpEngine, database_url: str, db: asyncpg.Connection, org: str
) -> None:
    """Unbounded, ten silent runs cost ten times three timeouts before the next pass."""
    for i in range(10):
        await insert_row(
            db, org, f"s{i}", engine="http", external_id=f"{org}-s{i}", status="failed"
        )
    # (breaker threshold, time limit, bound): each silent run costs ~1 s (3 attempts of 0.3 s),
    # so the bounded syncs take ~2 s and ~1.5 s; without the breaker or the limit all ten runs
    # are asked, at least 9 s. The bounds leave a loaded machine ~4 s and ~3.5 s of slack.
    for threshold, limit_s, within_s in ((2, 60.0, 6.0), (0, 1.5, 5.0)):
        reconciler = await make_reconciler(
            database_url,
            {"http": silent},
            None,
            Subjects("unused"),
            component_engines=["http"],
            breaker_threshold=threshold,
            engine_pass_timeout_s=limit_s,
        )
        try:
            began = time.monotonic()
            assert await reconciler.sync_recent_components() == 0
            took = time.monotonic() - began
        finally:
            await reconciler.pool.close()
        assert took < within_s, (threshold, limit_s, took)


async def test_steps_of_a_later_run_under_a_reused_id_are_not_copied(
    engine: tuple[EngineState, HttpEngine], database_url: str, db: asyncpg.Connection, org: str
) -> None:
    """The engine's run under our finished row's id names no execution and began after that
    execution ended: someone's later run (perhaps of an org that does not report to us)."""
    state, adapter = engine
    await insert_row(db, org, "done", engine="http", external_id=f"{org}-reused", status="success")
    await insert_row(db, org, "mine", engine="http", external_id=f"{org}-mine", status="success")
    state.add(f"{org}-reused", "running", started_at=ago(-60))  # after the row completed
    state.add(f"{org}-mine", "succeeded", started_at=ago(3600))
    reconciler = await make_reconciler(
        database_url, {"http": adapter}, None, Subjects("unused"), component_engines=["http"]
    )
    try:
        refused = await reconciler.sync_components(org, "done", "on_demand")
        assert not refused.ok
        assert "started after this one ended" in (refused.error or "")
        taken = await reconciler.sync_components(org, "mine", "on_demand")
        assert taken.ok, taken
    finally:
        await reconciler.pool.close()


async def test_one_unreadable_run_in_a_listing_hides_no_other(
    engine: tuple[EngineState, HttpEngine],
    database_url: str,
    nats_url: str,
    subjects: Subjects,
    org: str,
) -> None:
    state, adapter = engine
    state.add(
        f"{org}-orphan",
        "succeeded",
        started_at=ago(1800),
        org=org,
        agent_name="agent-1",
        execution_id=f"{org}-orphan-ex",
    )
    state.add(f"{org}-odd", "exploded", started_at=ago(1800), org=org, agent_name="agent-1")
    # A numeric job id and an error object of the engine's own shape are read, not refused.
    state.runs[f"{org}-numeric"] = {
        "id": 4242,
        "status": "FAILED",
        "started_at": ago(1800),
        "error": {"code": 7, "text": "quota"},
        "org": org,
        "agent_name": "agent-1",
    }
    nc = await nats.connect(nats_url)
    reconciler = await make_reconciler(database_url, {"http": adapter}, nc.jetstream(), subjects)
    try:
        report = await reconciler.run_pass(fix=False)
    finally:
        await reconciler.pool.close()
        await nc.close()
    orphans = {d.execution_id: d for d in report.decisions if d.kind is Kind.ORPHAN_RUN}
    assert set(orphans) >= {f"{org}-orphan-ex", "http-4242"}
    numeric = orphans["http-4242"].run
    assert numeric is not None
    assert numeric.error == '{"code":7,"text":"quota"}'
    problems = [d.reason for d in report.decisions if d.kind is Kind.ENGINE_ERROR]
    assert any("unknown status 'exploded'" in p for p in problems), problems
