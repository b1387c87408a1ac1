"""Second review of the reconciler, against the real Postgres, NATS and the local HTTP engine."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import nats
import pytest

from services.ingest.merge import event_version
from services.reconciler import repo
from services.reconciler.engines import EngineRun
from services.reconciler.engines.http import HttpEngine
from services.reconciler.leader import LeaderLock
from services.reconciler.loop import PassReport
from services.reconciler.rules import Action, Kind, Policy
from shared.events import Event, EventType, ExecutionFields
from shared.subjects import Subjects
from tests.reconciler.helpers import (
    FAILING,
    ago,
    http_engine,
    insert_row,
    make_reconciler,
    stream_messages,
)
from tests.reconciler.http_engine import EngineState

LEASE_S = 1.0


class PausingEngine:
    """Wraps an engine; its first lookup blocks the whole process for `pause_s`, as a SIGSTOP
    (or a long GC / VM pause) would: no heartbeat, no socket read, nothing runs meanwhile."""

    def __init__(self, inner: HttpEngine, pause_s: float) -> None:
        self._inner = inner
        self._pause_s = pause_s
        self.paused = False

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def lists_runs(self) -> bool:
        return self._inner.lists_runs

    async def list_runs(self, since: datetime, until: datetime) -> list[EngineRun]:
        return await self._inner.list_runs(since, until)

    async def get_run(self, external_id: str, *, with_steps: bool = False) -> EngineRun | None:
        run = await self._inner.get_run(external_id, with_steps=with_steps)
        if not self.paused:
            self.paused = True
            time.sleep(self._pause_s)  # noqa: ASYNC251 - the point: the event loop stops too
        return run

    async def close(self) -> None:
        await self._inner.close()


async def test_a_leader_paused_past_its_lease_publishes_nothing_when_it_wakes(
    engine: tuple[EngineState, HttpEngine],
    database_url: str,
    nats_url: str,
    db: asyncpg.Connection,
    org: str,
    subjects: Subjects,
) -> None:
    """A leader stopped mid-pass (SIGSTOP) loses its session, and with it the lock, to
    `idle_session_timeout`; another replica takes over. When the old one wakes it must not go
    on to publish the corrections of its stale pass: two replicas would act at once."""
    state, adapter = engine
    state.add(f"{org}-job", "succeeded")
    await insert_row(db, org, "drifted", engine="http", external_id=f"{org}-job")
    pausing = PausingEngine(adapter, pause_s=3 * LEASE_S)
    key = random.randint(-(2**63), 2**63 - 1)
    lock = LeaderLock(database_url, key, lease_s=LEASE_S)
    other = LeaderLock(database_url, key, lease_s=LEASE_S)
    nc = await nats.connect(nats_url)
    reconciler = await make_reconciler(database_url, {"http": pausing}, nc.jetstream(), subjects)
    reports: list[PassReport] = []
    stop = asyncio.Event()
    task = asyncio.create_task(
        reconciler.run(lock, 60.0, fix=True, stop=stop, on_pass=reports.append)
    )
    try:
        deadline = time.monotonic() + 20
        while not pausing.paused:
            assert time.monotonic() < deadline, "the pass never looked the run up"
            await asyncio.sleep(0.05)
        # The old leader is awake again (the pause blocked this test too); its lock went
        # while it slept. Let its pass end, however it ends.
        deadline = time.monotonic() + 20
        while sum(_loops(reconciler, o) for o in ("ok", "error", "lost_leadership")) == 0:
            assert time.monotonic() < deadline, "the pass never ended"
            await asyncio.sleep(0.05)
        assert await other.try_acquire(), "the paused leader's lock was not freed"
        assert await stream_messages(nats_url, subjects) == []
        assert reports == []
        assert _loops(reconciler, "lost_leadership") == 1
        assert not reconciler.is_leader
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await other.release()
        await reconciler.pool.close()
        await nc.close()


def _loops(reconciler: object, outcome: str) -> float:
    registry = reconciler.metrics.registry  # type: ignore[attr-defined]
    value = registry.get_sample_value("reconciler_loops_total", {"outcome": outcome})
    return 0.0 if value is None else float(value)


async def test_a_heartbeat_failing_oddly_releases_leadership(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session broken mid-statement makes asyncpg raise `InternalClientError` (not an
    `InterfaceError`): the heartbeat must treat it as a lost lock, not die with it leaving the
    replica claiming leadership, nor re-raise it from `release` (ending the service's loop)."""
    key = random.randint(-(2**63), 2**63 - 1)
    lock = LeaderLock(database_url, key, lease_s=0.3)
    other = LeaderLock(database_url, key, lease_s=0.3)
    try:
        assert await lock.try_acquire()
        conn = lock._conn
        assert conn is not None

        real = asyncpg.Connection.execute

        async def broken(self: asyncpg.Connection, *args: Any, **kwargs: Any) -> str:
            if self is conn:
                raise asyncpg.InternalClientError("cannot switch to state 15")
            return str(await real(self, *args, **kwargs))

        monkeypatch.setattr(asyncpg.Connection, "execute", broken)
        deadline = time.monotonic() + 5
        while lock.held:
            assert time.monotonic() < deadline, "still claims to lead"
            await asyncio.sleep(0.05)
        assert await other.try_acquire()
        await lock.release()
    finally:
        await other.release()


@pytest.mark.parametrize("listing", ["cut_short", "down"])
async def test_a_row_lacking_its_run_id_is_not_failed_while_its_engines_listing_is_unread(
    database_url: str, db: asyncpg.Connection, org: str, listing: str
) -> None:
    """Failing a row that lacks its run id is safe only when the engine's listing shows no
    run naming it. A listing that failed (engine down) or was cut short (an expired cursor,
    too many pages, an unreadable run) shows nothing of the kind: the row must be flagged, not
    failed while the engine may still run it."""
    state = EngineState(page_size=1, cursor_expires=True)
    state.add(f"{org}-other", "running", started_at=ago(1700))
    state.add(f"{org}-lost-run", "running", started_at=ago(1800), execution_id="lost")
    await insert_row(db, org, "lost", engine="http", external_id=None, age_s=3600)
    config = {"list_path": "/runs/gone"} if listing == "down" else {}
    async with http_engine(state, **config) as adapter:
        reconciler = await make_reconciler(
            database_url, {"http": adapter}, None, Subjects("x"), FAILING
        )
        try:
            report = await reconciler.run_pass(fix=False)
        finally:
            await reconciler.pool.close()
    (decision,) = [d for d in report.decisions if d.org == org and d.execution_id == "lost"]
    assert decision.kind is Kind.MISSING_EXTERNAL_ID
    assert (decision.action, decision.publish_status) == (Action.FLAG, None)
    assert "listing" in decision.reason


async def test_rows_an_engine_had_no_time_for_are_checked_first_on_the_next_pass(
    database_url: str, db: asyncpg.Connection, org: str
) -> None:
    """With more open rows than an engine answers within `ENGINE_PASS_TIMEOUT_SECONDS`, each
    pass must not spend its time on the same rows (the first by org and start): the rest
    would never be checked, their drift never fixed, however many passes ran."""
    state = EngineState(delay_s=0.5)
    for n in range(3):
        state.add(f"{org}-job{n}", "succeeded")
        await insert_row(db, org, f"row{n}", engine="http", external_id=f"{org}-job{n}")
    async with http_engine(state) as adapter:
        reconciler = await make_reconciler(
            database_url,
            {"http": adapter},
            None,
            Subjects("x"),
            Policy(first_check_grace=timedelta(seconds=0)),
            concurrency=1,
            engine_pass_timeout_s=0.8,  # room for one answer a pass, not two
        )
        checked: set[str] = set()
        try:
            for _ in range(6):  # 3 would do; spare passes for a slow machine
                # This org's rows only: the module's database holds other tests' rows too.
                report = await reconciler.run_pass(repo.Filters(org=org), fix=False)
                checked |= {
                    d.execution_id or ""
                    for d in report.decisions
                    if d.org == org and d.kind is Kind.STATUS_MISMATCH
                }
        finally:
            await reconciler.pool.close()
    assert checked == {"row0", "row1", "row2"}


async def test_a_correction_wins_over_a_status_stamped_by_a_clock_ahead_of_ours(
    engine: tuple[EngineState, HttpEngine],
    database_url: str,
    nats_url: str,
    db: asyncpg.Connection,
    org: str,
    subjects: Subjects,
) -> None:
    """Ingest keeps, among terminal statuses, the one whose event says it happened last. An
    agent whose clock runs 10 minutes ahead reported success; the engine says failed. A
    correction stamped with our clock loses to it: never applied, published again every pass."""
    state, adapter = engine
    state.add(f"{org}-skew", "failed", started_at=ago(1800), completed_at=ago(1200), error="x")
    await insert_row(db, org, "skewed", engine="http", external_id=f"{org}-skew", status="success")
    agent_said = Event(
        type=EventType.EXECUTION_COMPLETED,
        event_id="agent-1",
        occurred_at=datetime.now(UTC) + timedelta(minutes=10),
        org=org,
        source="agent",
        execution=ExecutionFields(id="skewed", agent_name="agent-1"),
    )
    stored = event_version(agent_said)
    await db.execute(
        "UPDATE executions SET versions = jsonb_build_object('status', $3::text)"
        " WHERE org = $1 AND id = $2",
        org,
        "skewed",
        stored,
    )
    nc = await nats.connect(nats_url)
    reconciler = await make_reconciler(database_url, {"http": adapter}, nc.jetstream(), subjects)
    try:
        report = await reconciler.run_pass(repo.Filters(org=org), fix=True)
    finally:
        await reconciler.pool.close()
        await nc.close()
    assert report.published == 1
    ((_, body),) = await stream_messages(nats_url, subjects)
    correction = Event.model_validate_json(body)
    assert correction.type is EventType.EXECUTION_FAILED
    assert event_version(correction) > stored, (correction.occurred_at, agent_said.occurred_at)
