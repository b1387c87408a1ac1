"""A full pass against a real HTTP engine where the engine's answers are awkward: text no event
may carry, run ids reused by later executions or used by two orgs, an earlier run of a live
execution. Each correction that is published must be one ingest takes; nothing is guessed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import nats
import orjson
import pytest_asyncio

from services.reconciler.engines.http import HttpEngine
from services.reconciler.loop import Reconciler
from services.reconciler.rules import Action, Kind
from shared.events import Event
from shared.subjects import Subjects
from shared.validation import validate
from tests.reconciler.helpers import ago, insert_row, make_reconciler, stream_messages
from tests.reconciler.http_engine import EngineState


@pytest_asyncio.fixture
async def reconciler(
    engine: tuple[EngineState, HttpEngine], database_url: str, nats_url: str, subjects: Subjects
) -> AsyncIterator[Reconciler]:
    nc = await nats.connect(nats_url)
    found = await make_reconciler(database_url, {"http": engine[1]}, nc.jetstream(), subjects)
    try:
        yield found
    finally:
        await found.pool.close()
        await nc.close()


async def _published(nats_url: str, subjects: Subjects) -> list[Event]:
    """What the pass published, each as ingest's validator judges it (all must pass)."""
    events = []
    for subject, data in await stream_messages(nats_url, subjects):
        verdict = validate(subjects, subject, data)
        assert isinstance(verdict, Event), (verdict, data[:300])
        events.append(verdict)
    return events


async def test_engine_text_no_event_may_carry_is_fitted_and_blocks_no_other_row(
    engine: tuple[EngineState, HttpEngine],
    reconciler: Reconciler,
    db: asyncpg.Connection,
    org: str,
    nats_url: str,
    subjects: Subjects,
) -> None:
    """Before: a 70 KB error (or NUL, a 1970 start, a 300-char error type, a 195-char id) made
    the pass raise, so no row was corrected on any pass."""
    state, _ = engine
    state.add("good-1", "succeeded", completed_at=ago(30))
    state.add("good-2", "failed", error="quota exceeded")
    state.add(
        "odd-1",
        "failed",
        error="Traceback\x00" + "x" * 70_000,
        error_type="E" * 300,
        started_at="1970-01-01T00:00:00+00:00",
    )
    await insert_row(db, org, "g1", engine="http", external_id="good-1")
    await insert_row(db, org, "g2", engine="http", external_id="good-2")
    await insert_row(db, org, "o" * 195, engine="http", external_id="odd-1")

    report = await reconciler.run_pass(fix=True)
    fixes = [d for d in report.decisions if d.org == org and d.action is Action.PUBLISH]
    assert len(fixes) == 3
    events = {e.execution_id: e for e in await _published(nats_url, subjects)}
    assert set(events) == {"g1", "g2", "o" * 195}
    odd = events["o" * 195].execution
    assert odd is not None
    assert odd.error is not None
    assert odd.error.startswith("Traceback\ufffd")
    assert odd.started_at is None
    assert odd.error_type == "E" * 200


async def test_a_workflow_id_reused_by_todays_run_leaves_yesterdays_row_alone(
    engine: tuple[EngineState, HttpEngine],
    reconciler: Reconciler,
    db: asyncpg.Connection,
    org: str,
    nats_url: str,
    subjects: Subjects,
) -> None:
    state, _ = engine
    state.add("nightly", "failed", started_at=ago(600), completed_at=ago(60), error="today's")
    await insert_row(
        db, org, "yesterday", engine="http", external_id="nightly", status="success", age_s=86_400
    )
    await insert_row(db, org, "today", engine="http", external_id="nightly", age_s=600)

    report = await reconciler.run_pass(fix=True)
    mine = [d for d in report.decisions if d.org == org and d.action is not Action.NONE]
    assert [(d.execution_id, d.kind) for d in mine] == [("today", Kind.STATUS_MISMATCH)]
    events = await _published(nats_url, subjects)
    assert [e.execution_id for e in events] == ["today"]


async def test_an_earlier_run_of_a_live_execution_is_not_created_as_an_orphan(
    engine: tuple[EngineState, HttpEngine],
    reconciler: Reconciler,
    db: asyncpg.Connection,
    org: str,
    nats_url: str,
    subjects: Subjects,
) -> None:
    """Execution X runs as run-2 (the engine agrees); its first attempt run-1 failed. Before,
    run-1 had no row under its id, so it was an "orphan" and X was published as failed."""
    state, _ = engine
    named = {"org": org, "agent_name": "agent-1", "execution_id": "X"}
    state.add("run-1", "failed", started_at=ago(3000), error="attempt 1 crashed", **named)
    state.add("run-2", "running", started_at=ago(1800), **named)
    await insert_row(db, org, "X", engine="http", external_id="run-2", age_s=1800)

    report = await reconciler.run_pass(fix=True)
    mine = [d for d in report.decisions if d.org == org]
    assert [(d.execution_id, d.kind) for d in mine] == [("X", Kind.OK)]
    assert await stream_messages(nats_url, subjects) == []


async def test_open_rows_of_two_orgs_sharing_a_run_id_are_flagged_not_both_failed(
    engine: tuple[EngineState, HttpEngine],
    reconciler: Reconciler,
    db: asyncpg.Connection,
    org: str,
    nats_url: str,
    subjects: Subjects,
) -> None:
    state, _ = engine
    other = f"{org}-b"
    state.add("job-7", "failed", started_at=ago(3600), completed_at=ago(5), error="boom")
    await insert_row(db, org, "a1", engine="http", external_id="job-7")
    await insert_row(db, other, "b1", engine="http", external_id="job-7")

    report = await reconciler.run_pass(fix=True)
    flagged = {
        (d.org, d.execution_id): (d.kind, d.action)
        for d in report.decisions
        if d.org in (org, other)
    }
    assert flagged == {
        (org, "a1"): (Kind.AMBIGUOUS_RUN, Action.FLAG),
        (other, "b1"): (Kind.AMBIGUOUS_RUN, Action.FLAG),
    }
    assert await stream_messages(nats_url, subjects) == []
    # Once the engine names the org, that org's row is corrected and only that one.
    state.add("job-7", "failed", started_at=ago(3600), completed_at=ago(5), error="boom", org=org)
    await reconciler.run_pass(fix=True)
    events = await _published(nats_url, subjects)
    assert [(e.org, e.execution_id) for e in events] == [(org, "a1")]
    assert orjson.loads(events[0].model_dump_json())["execution"]["error"] == "boom"
