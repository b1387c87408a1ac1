"""Fourth review of the reconciler, against the local HTTP engine, the real Postgres and, for
the correction that must take effect twice, the real ingest: a row whose run outlives the
listing window is flagged, not failed; a correction over a finished row differs from the last
one once the agent has reported its own status again, even with its old end time; a
correction keeps a finished row's end time when the engine gives none; `--org` keeps the
orphan runs `ORPHAN_ORG` attributes to that org; and (on the real Temporal dev server) an
orphan run that failed is created with the run's error."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import nats
import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from services.reconciler import repo
from services.reconciler.corrections import execution_event
from services.reconciler.engines.http import HttpEngine
from services.reconciler.engines.temporal import MEMO_EXECUTION_ID, TemporalEngine
from services.reconciler.rules import Action, Kind, Policy
from shared.events import Event, Status
from shared.subjects import Subjects
from tests.procs import running
from tests.reconciler.helpers import (
    FAILING,
    ago,
    decided_once_listed,
    dry_pass,
    http_engine,
    insert_row,
    make_reconciler,
    wait_until,
)
from tests.reconciler.http_engine import EngineState
from tests.reconciler.temporal_workflows import ACTIVITIES, WORKFLOWS, Failing


async def test_a_row_whose_run_outlives_the_listing_window_is_flagged_not_failed(
    engine: tuple[EngineState, HttpEngine], database_url: str, db: asyncpg.Connection, org: str
) -> None:
    """The listing holds runs started in the last LOOKBACK_SECONDS (1 h): a run naming a row
    that lost its run id leaves it after an hour while still running, and nothing then shows
    the row must not be failed. A row well inside the window with no run is still failed."""
    state, adapter = engine
    for ex, age in (("young", 900), ("old", 7200)):
        await insert_row(db, org, ex, engine="http", external_id=None, age_s=age)
        state.add(f"{org}-{ex}-run", "running", started_at=ago(age), execution_id=ex, org=org)
    await insert_row(db, org, "lost", engine="http", external_id=None, age_s=1200)
    report = await dry_pass(database_url, {"http": adapter}, FAILING)
    by_id = {d.execution_id: d for d in report.decisions if d.org == org}
    assert by_id["old"].kind is Kind.MISSING_EXTERNAL_ID
    assert by_id["old"].action is Action.FLAG
    assert by_id["old"].publish_status is None
    assert "before http's listing window" in by_id["old"].reason
    assert by_id["young"].action is Action.FLAG
    assert "lists run" in by_id["young"].reason
    assert by_id["lost"].action is Action.PUBLISH
    assert by_id["lost"].publish_status is Status.FAILED


async def test_an_engine_without_a_listing_has_no_window_to_spare_a_row(
    database_url: str, db: asyncpg.Connection, org: str
) -> None:
    """An HTTP engine with `LIST_PATH` empty lists nothing: no listing could spare a row, at
    any age, so an old row lacking its run id is failed as a young one is (the operator turned
    failing on knowing that), not flagged for a window that engine does not have."""
    await insert_row(db, org, "old", engine="http", external_id=None, age_s=7200)
    async with http_engine(EngineState(), list_path="") as adapter:
        assert not adapter.lists_runs
        report = await dry_pass(database_url, {"http": adapter}, FAILING)
    (old,) = [d for d in report.decisions if d.org == org]
    assert (old.kind, old.action) == (Kind.MISSING_EXTERNAL_ID, Action.PUBLISH)


async def test_a_row_just_inside_the_window_is_flagged_within_the_margin(
    engine: tuple[EngineState, HttpEngine], database_url: str, db: asyncpg.Connection, org: str
) -> None:
    """A run may start a little before its row says (clocks differ, the agent starts the run
    first): a row started less than the margin inside the window is not failed either."""
    _state, adapter = engine
    await insert_row(db, org, "edge", engine="http", external_id=None, age_s=3600 - 120)
    await insert_row(db, org, "inside", engine="http", external_id=None, age_s=3600 - 600)
    report = await dry_pass(database_url, {"http": adapter}, FAILING)
    by_id = {d.execution_id: d for d in report.decisions if d.org == org}
    assert by_id["edge"].action is Action.FLAG
    assert by_id["inside"].action is Action.PUBLISH


async def test_a_correction_takes_effect_again_after_the_agent_repeats_its_status(
    engine: tuple[EngineState, HttpEngine],
    db: asyncpg.Connection,
    database_url: str,
    org: str,
    nats_url: str,
    subjects: Subjects,
    service_env: dict[str, str],
) -> None:
    """The engine says failed, the agent success. After the first correction the agent sends
    `execution_completed` again (a new event, its own old completed_at): the next correction
    must be a new event, not the first one's duplicate that ingest drops for good."""
    state, adapter = engine
    state.add("flip-1", "failed", error="engine says no", started_at=ago(600))
    await insert_row(
        db, org, "x-flip", engine="http", external_id="flip-1", status="success", age_s=600
    )
    completed = await db.fetchval(
        "SELECT completed_at FROM executions WHERE org = $1 AND id = 'x-flip'", org
    )
    status_sql = "SELECT status FROM executions WHERE org = $1 AND id = 'x-flip'"
    nc = await nats.connect(nats_url)
    policy = Policy(first_check_grace=timedelta(seconds=30), orphan_grace=timedelta(minutes=10))
    reconciler = await make_reconciler(
        database_url, {"http": adapter}, nc.jetstream(), subjects, policy
    )
    try:
        async with running("ingest", service_env):
            first = await reconciler.run_pass(fix=True)
            assert first.published == 1
            await wait_until(db, status_sql, (org,), "failed")
            again = Event.model_validate(
                {
                    "type": "execution_completed",
                    "event_id": "agent-again",
                    "occurred_at": datetime.now(UTC),
                    "org": org,
                    "execution": {
                        "id": "x-flip",
                        "agent_name": "agent-1",
                        "completed_at": completed,
                    },
                }
            )
            await nc.jetstream().publish(
                subjects.event(org, "agent-1", again.type),
                again.model_dump_json(exclude_none=True).encode(),
            )
            await wait_until(db, status_sql, (org,), "success")
            second = await reconciler.run_pass(fix=True)
            assert second.published == 1
            await wait_until(db, status_sql, (org,), "failed")
            ids = await db.fetch(
                "SELECT event_id FROM events WHERE org = $1 AND event_id LIKE 'reconcile:%'", org
            )
            assert len(ids) == 2, ids
            # Repeats over the row as it now stands stay one event.
            third = await reconciler.run_pass(fix=True)
            assert not [d for d in third.mismatches if d.execution_id == "x-flip"]
            await asyncio.sleep(0.5)
            assert await db.fetchval(status_sql, org) == "failed"
    finally:
        await reconciler.pool.close()
        await nc.close()


async def test_a_correction_keeps_a_finished_rows_end_time_when_the_engine_gives_none(
    engine: tuple[EngineState, HttpEngine], database_url: str, db: asyncpg.Connection, org: str
) -> None:
    """An HTTP engine's completed_at is optional. Over a finished row the correction leaves the
    end time and duration out (the row keeps the agent's); over an open row it ends now."""
    state, adapter = engine
    started = datetime.now(UTC) - timedelta(minutes=50)
    await db.execute(
        "INSERT INTO executions (org, id, agent_name, status, engine, external_id, started_at,"
        " first_seen_at, completed_at, duration_ms)"
        " VALUES ($1, 'done', 'agent-1', 'failed', 'http', 'job-done', $2, $2, $3, 300000)",
        org,
        started,
        started + timedelta(minutes=5),
    )
    state.add("job-done", "succeeded", started_at=started.isoformat(), org=org, execution_id="done")
    await insert_row(db, org, "open", engine="http", external_id="job-open", age_s=600)
    state.add("job-open", "succeeded", started_at=ago(600), org=org, execution_id="open")
    report = await dry_pass(database_url, {"http": adapter})
    now = datetime.now(UTC)
    events = {
        d.execution_id: execution_event(d, now)
        for d in report.decisions
        if d.org == org and d.action is Action.PUBLISH
    }
    done, open_ = events["done"], events["open"]
    assert done is not None
    assert open_ is not None
    assert done.execution is not None
    assert open_.execution is not None
    assert done.execution.status is Status.SUCCESS
    assert done.execution.completed_at is None
    assert done.execution.duration_ms is None
    assert open_.execution.completed_at == now
    assert open_.execution.duration_ms is not None
    assert open_.execution.duration_ms >= 600_000


async def test_the_org_filter_keeps_orphans_that_orphan_org_attributes_to_it(
    engine: tuple[EngineState, HttpEngine], database_url: str, org: str
) -> None:
    """A run naming no org is attributed to `ORPHAN_ORG`: `--org` with that org reports it."""
    state, adapter = engine
    state.add(f"{org}-job", "succeeded", started_at=ago(1200), completed_at=ago(1100))
    policy = Policy(orphan_org=org, orphan_agent="agent-1")
    reconciler = await make_reconciler(database_url, {"http": adapter}, None, Subjects("x"), policy)
    try:
        found = {}
        for narrowed in (None, repo.Filters(org=org), repo.Filters(org=f"{org}-other")):
            report = await reconciler.run_pass(narrowed, fix=False)
            found[narrowed] = [
                (d.kind, d.org) for d in report.decisions if d.external_id == f"{org}-job"
            ]
    finally:
        await reconciler.pool.close()
    assert found[None] == [(Kind.ORPHAN_RUN, org)]
    assert found[repo.Filters(org=org)] == [(Kind.ORPHAN_RUN, org)]
    assert found[repo.Filters(org=f"{org}-other")] == []


async def test_an_orphan_run_that_failed_is_created_with_its_error(
    temporal_env: WorkflowEnvironment, database_url: str, org: str
) -> None:
    """A failed workflow we have no row of: Temporal's listing carries no failure, and the row
    is created from it once, so without a look-up it would say failed with no reason for good."""
    client, queue = temporal_env.client, f"tq-{uuid.uuid4().hex}"
    wid = f"orphan-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        handle = await client.start_workflow(
            Failing.run,
            "http://billing",
            id=wid,
            task_queue=queue,
            # No org in its memo: attributed here through ORPHAN_ORG, it stays unattributed
            # (flagged, never created) for the other tests' passes over the shared server.
            memo={MEMO_EXECUTION_ID: "orphan-x"},
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    policy = Policy(orphan_run_grace=timedelta(0), orphan_org=org, orphan_agent="agent-1")
    reconciler = await make_reconciler(
        database_url, {"temporal": TemporalEngine(client)}, None, Subjects("x"), policy
    )
    try:
        found = await decided_once_listed(
            reconciler,
            lambda d: d.external_id == wid,
            lambda found: bool(found) and found[0].publish_status is Status.FAILED,
        )
    finally:
        await reconciler.pool.close()
    (decision,) = found
    assert (decision.kind, decision.publish_status) == (Kind.ORPHAN_RUN, Status.FAILED)
    event = execution_event(decision, datetime.now(UTC))
    assert event is not None
    assert event.execution is not None
    assert event.execution.id == "orphan-x"
    assert "upstream http://billing down" in (event.execution.error or "")
    assert event.execution.error_type == "UpstreamError"
