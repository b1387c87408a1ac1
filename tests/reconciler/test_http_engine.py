"""The generic HTTP engine adapter and a full pass against a local engine that misbehaves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import nats
import orjson
import pytest
import pytest_asyncio

from services.reconciler.engines import EngineError
from services.reconciler.engines.http import HttpEngine, HttpEngineConfig
from services.reconciler.rules import Action, Kind, Policy
from services.reconciler.settings import ReconcilerSettings
from shared.events import Event, Status
from shared.subjects import Subjects
from tests.procs import running
from tests.reconciler.helpers import (
    ago,
    http_engine,
    insert_row,
    make_reconciler,
    stream_messages,
    wait_until,
)
from tests.reconciler.http_engine import EngineState


@pytest_asyncio.fixture
async def engine_state() -> AsyncIterator[tuple[EngineState, HttpEngine]]:
    state = EngineState(slow_s=1.0)
    async with http_engine(state, timeout_seconds=0.3) as engine:
        yield state, engine


async def test_found_runs_map_their_status(engine_state: tuple[EngineState, HttpEngine]) -> None:
    state, engine = engine_state
    state.add("r1", "SUCCEEDED", completed_at="2026-02-05T10:00:45Z", error=None)
    run = await engine.get_run("r1")
    assert run is not None
    assert (run.status, run.completed_at is not None) == (Status.SUCCESS, True)


async def test_not_found_is_retried_three_times(
    engine_state: tuple[EngineState, HttpEngine],
) -> None:
    state, engine = engine_state
    state.add("late-1", "running")
    found = await engine.get_run("late-1")
    assert found is not None
    assert found.status is Status.RUNNING
    assert state.calls["late-1"] == 3
    assert await engine.get_run("nowhere") is None
    assert state.calls["nowhere"] == 3


@pytest.mark.parametrize(
    ("run_id", "message"),
    [
        ("e500-1", "HTTP 500 (after 3 attempts)"),
        ("slow-1", "timed out after 0.3 s"),
        ("bad-1", "unknown status 'exploded'"),
        ("notjson-1", "not JSON"),
    ],
)
async def test_engine_failures_raise_a_clear_error(
    engine_state: tuple[EngineState, HttpEngine], run_id: str, message: str
) -> None:
    _, engine = engine_state
    with pytest.raises(EngineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        await engine.get_run(run_id)


async def test_a_listing_that_is_not_there_is_an_error_not_an_empty_list() -> None:
    # A wrong LIST_PATH would otherwise read as "no runs" forever: no orphan ever found, and
    # nothing reported.
    state = EngineState()
    async with http_engine(state, list_path="/no/such/listing") as engine:
        with pytest.raises(EngineError, match="HTTP 404, no listing there"):
            await engine.list_runs(datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC))
        state.runs["listing"] = {"runs": []}
    async with http_engine(state, list_path="/runs/listing") as engine:
        assert (
            await engine.list_runs(datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC)) == []
        )


def _started(state: EngineState, count: int) -> None:
    for i in range(count):
        state.add(
            f"p{i}", "running", started_at=(datetime.now(UTC) - timedelta(minutes=i)).isoformat()
        )


async def _listed(engine: HttpEngine) -> list[str]:
    now = datetime.now(UTC)
    return sorted(r.external_id for r in await engine.list_runs(now - timedelta(hours=1), now))


async def test_a_listing_in_pages_is_read_to_its_last_page() -> None:
    state = EngineState(page_size=3)
    _started(state, 7)
    async with http_engine(state) as engine:
        assert await _listed(engine) == [f"p{i}" for i in range(7)]
        assert engine.listing_problems == []
    assert state.calls["listing"] == 3


async def test_a_listing_longer_than_its_page_limit_is_cut_and_reported() -> None:
    state = EngineState(page_size=3)
    _started(state, 7)
    async with http_engine(state, list_max_pages=2) as engine:
        assert len(await _listed(engine)) == 6
        (problem,) = engine.listing_problems
        assert "more than 2 pages" in problem
    assert state.calls["listing"] == 2


async def test_a_cursor_that_points_back_ends_the_listing_and_is_reported() -> None:
    state = EngineState(page_size=3, cursor_loops=True)
    _started(state, 7)
    async with http_engine(state) as engine:
        # The first page twice: each run once.
        assert await _listed(engine) == ["p0", "p1", "p2"]
        (problem,) = engine.listing_problems
        assert "points back to cursor '0'" in problem
    assert state.calls["listing"] == 2


async def test_a_page_that_is_gone_keeps_the_pages_read_and_is_reported() -> None:
    state = EngineState(page_size=3, cursor_expires=True)
    _started(state, 7)
    async with http_engine(state) as engine:
        assert len(await _listed(engine)) == 3
        (problem,) = engine.listing_problems
        assert "page 2 of the listing is gone (HTTP 404)" in problem


async def test_flaky_engine_recovers_on_retry(
    engine_state: tuple[EngineState, HttpEngine],
) -> None:
    state, engine = engine_state
    state.add("flaky-1", "failed", error="quota")
    run = await engine.get_run("flaky-1")
    assert run is not None
    assert (run.status, run.error) == (Status.FAILED, "quota")


async def test_run_ids_are_escaped_in_the_path(
    engine_state: tuple[EngineState, HttpEngine],
) -> None:
    # Unescaped, `job 42` is no valid request target, and `a?x=1` / `a#frag` name run `a`.
    state, engine = engine_state
    statuses = {
        "a": "running",
        "job 42": "succeeded",
        "a?x=1": "failed",
        "a#frag": "cancelled",
        "50%": "succeeded",
        "\u00e9t\u00e9": "failed",
    }
    for run_id, status in statuses.items():
        state.add(run_id, status)
    found = {}
    for run_id in statuses:
        run = await engine.get_run(run_id)
        assert run is not None, run_id
        found[run_id] = run.status
    assert found == {
        "a": Status.RUNNING,
        "job 42": Status.SUCCESS,
        "a?x=1": Status.FAILED,
        "a#frag": Status.CANCELLED,
        "50%": Status.SUCCESS,
        "\u00e9t\u00e9": Status.FAILED,
    }
    assert state.calls == dict.fromkeys(statuses, 1)


async def test_a_request_that_cannot_be_sent_fails_at_once() -> None:
    # Not a transient engine error: the same request would be refused again, so no retries
    # (and no connection: nothing listens on port 1, yet the error is not a refused connection).
    engine = HttpEngine(HttpEngineConfig(base_url="http://127.0.0.1:1", list_path="/all runs"))
    now = datetime.now(UTC)
    with pytest.raises(
        EngineError,
        match=r"^http: cannot send GET '/all runs\?since=.*': Illegal target characters$",
    ):
        await engine.list_runs(now - timedelta(hours=1), now)
    await engine.close()


def test_illegal_headers_are_refused_without_quoting_them() -> None:
    with pytest.raises(ValueError, match="'Authorization': illegal name or value") as refused:
        HttpEngine(
            HttpEngineConfig(
                base_url="http://127.0.0.1:1", headers={"Authorization": "Bearer s3cr\nt"}
            )
        )
    assert "s3cr" not in str(refused.value)


async def test_pass_reports_every_kind_dry_run_changes_nothing_fix_is_applied(
    engine_state: tuple[EngineState, HttpEngine],
    db: asyncpg.Connection,
    database_url: str,
    org: str,
    nats_url: str,
    subjects: Subjects,
    service_env: dict[str, str],
) -> None:
    state, engine = engine_state
    state.add("done-1", "succeeded", completed_at="2026-02-05T10:00:45Z")
    state.add("fail-1", "failed", error="quota exceeded", error_type="QuotaError")
    state.add("run-1", "running")
    state.add("late-2", "succeeded")
    cases = {
        "x-done": "done-1",
        "x-fail": "fail-1",
        "x-running": "run-1",
        "x-late": "late-2",
        "x-orphan": "missing-1",
        "x-500": "e500-2",
        "x-slow": "slow-2",
        "x-bad": "bad-2",
    }
    for execution_id, external_id in cases.items():
        await insert_row(db, org, execution_id, engine="http", external_id=external_id)
    await insert_row(db, org, "x-noid", engine="http", external_id=None)
    # Its own run id: a newer row under `done-1` would make that run its, not x-done's.
    await insert_row(db, org, "x-young", engine="http", external_id="done-9", age_s=5)

    nc = await nats.connect(nats_url)
    policy = Policy(
        first_check_grace=timedelta(seconds=30),
        orphan_grace=timedelta(minutes=10),
        missing_external_id_timeout=timedelta(minutes=5),
    )
    reconciler = await make_reconciler(
        database_url, {"http": engine}, nc.jetstream(), subjects, policy
    )
    try:
        report = await reconciler.run_pass(fix=False)
        by_id = {d.execution_id: d for d in report.decisions if d.org == org}
        kinds = {eid: by_id[eid].kind for eid in [*cases, "x-noid", "x-young"]}
        assert kinds == {
            "x-done": Kind.STATUS_MISMATCH,
            "x-fail": Kind.STATUS_MISMATCH,
            "x-running": Kind.OK,
            "x-late": Kind.STATUS_MISMATCH,
            "x-orphan": Kind.ORPHAN_ROW,
            "x-500": Kind.ENGINE_ERROR,
            "x-slow": Kind.ENGINE_ERROR,
            "x-bad": Kind.ENGINE_ERROR,
            "x-noid": Kind.MISSING_EXTERNAL_ID,
            "x-young": Kind.IN_GRACE,
        }
        assert "HTTP 500" in by_id["x-500"].reason
        assert "timed out" in by_id["x-slow"].reason
        assert "exploded" in by_id["x-bad"].reason
        assert by_id["x-running"].action is Action.NONE
        # Dry run: nothing published, nothing changed.
        assert await stream_messages(nats_url, subjects) == []
        running_now = await db.fetchval(
            "SELECT count(*) FROM executions WHERE org = $1 AND status = 'running'", org
        )
        assert running_now == 10

        async with running("ingest", service_env) as ingest:
            report = await reconciler.run_pass(fix=True)
            assert report.fixed == 3
            done = await wait_until(
                db,
                "SELECT count(*) FROM executions WHERE org = $1 AND status <> 'running'",
                (org,),
                3,
            )
            events = await db.fetchval("SELECT count(*) FROM events WHERE org = $1", org)
            assert done == 3, (events, ingest.log_path, ingest.log()[-3000:])
        rows = {
            r["id"]: r
            for r in await db.fetch(
                "SELECT id, status, error, error_type FROM executions WHERE org = $1", org
            )
        }
        assert rows["x-done"]["status"] == "success"
        assert rows["x-late"]["status"] == "success"
        assert (rows["x-fail"]["status"], rows["x-fail"]["error"]) == ("failed", "quota exceeded")
        assert rows["x-fail"]["error_type"] == "QuotaError"
        for untouched in ("x-running", "x-orphan", "x-500", "x-slow", "x-bad", "x-noid"):
            assert rows[untouched]["status"] == "running", untouched
        messages = await stream_messages(nats_url, subjects)
        assert sorted(orjson.loads(data)["event_id"] for _, data in messages) == [
            f"reconcile:{org}:x-done:success",
            f"reconcile:{org}:x-fail:failed",
            f"reconcile:{org}:x-late:success",
        ]
        sample = reconciler.metrics.registry.get_sample_value
        assert sample("reconciler_mismatches_fixed_total", {"kind": "status_mismatch"}) == 3
        assert sample("reconciler_mismatches_found_total", {"kind": "engine_error"}) == 6
        assert sample("reconciler_engine_errors_total", {"engine": "http"}) == 6
        # A second fix pass publishes the same ids: JetStream drops them as duplicates.
        again = await reconciler.run_pass(fix=True)
        assert again.published == 0
    finally:
        await reconciler.pool.close()
        await nc.close()


def test_a_status_map_of_the_engines_own_words_keeps_the_common_ones() -> None:
    settings = ReconcilerSettings(
        http_status_map={"DONE": Status.SUCCESS, "Parked": Status.PENDING}
    )
    assert settings.http_status_map["done"] is Status.SUCCESS
    assert settings.http_status_map["parked"] is Status.PENDING
    assert settings.http_status_map["succeeded"] is Status.SUCCESS  # a default, kept
    engine = HttpEngine(
        HttpEngineConfig(base_url="http://127.0.0.1:9", status_map={"DONE": Status.SUCCESS})
    )
    assert engine.parse_run({"id": "a", "status": "Done"}).status is Status.SUCCESS


def test_a_run_is_read_despite_odd_optional_fields_but_never_with_odd_ids() -> None:
    engine = HttpEngine(
        HttpEngineConfig(base_url="http://127.0.0.1:9", status_map={"ok": Status.SUCCESS})
    )
    found = engine.parse_run(
        {"id": 42, "status": "ok", "started_at": "2026-01-01T00:00:00", "error": ["a", 1]}
    )
    assert (found.external_id, found.started_at, found.error) == ("42", None, '["a",1]')
    for odd in ({"org": ["acme"]}, {"execution_id": {"id": 1}}, {"id": None}):
        with pytest.raises(EngineError):
            engine.parse_run({"id": "a", "status": "ok", **odd})


async def test_a_status_the_agent_reports_again_after_a_correction_is_corrected_again(
    engine_state: tuple[EngineState, HttpEngine],
    db: asyncpg.Connection,
    database_url: str,
    org: str,
    nats_url: str,
    subjects: Subjects,
    service_env: dict[str, str],
) -> None:
    """The engine says failed, the agent success. The correction to failed had the id
    `reconcile:<org>:<id>:failed` whatever the row held, so once the agent reported success
    again (later than the correction) every further correction reused that id: JetStream or
    ingest dropped it, the row kept the agent's word, and each pass counted it fixed."""
    state, engine = engine_state
    state.add("flip-1", "failed", error="engine says no", started_at=ago(600))
    await insert_row(
        db, org, "x-flip", engine="http", external_id="flip-1", status="success", age_s=600
    )
    nc = await nats.connect(nats_url)
    policy = Policy(first_check_grace=timedelta(seconds=30), orphan_grace=timedelta(minutes=10))
    reconciler = await make_reconciler(
        database_url, {"http": engine}, nc.jetstream(), subjects, policy
    )
    status_sql = "SELECT count(*) FROM executions WHERE org = $1 AND id = 'x-flip' AND status = $2"
    try:
        async with running("ingest", service_env):
            assert (await reconciler.run_pass(fix=True)).published == 1
            assert await wait_until(db, status_sql, (org, "failed"), 1) == 1
            later = datetime.now(UTC)
            agent_says = Event.model_validate(
                {
                    "type": "execution_completed",
                    "event_id": "agent-flip-again",
                    "occurred_at": later,
                    "org": org,
                    "execution": {"id": "x-flip", "agent_name": "agent-1", "completed_at": later},
                }
            )
            await nc.jetstream().publish(
                subjects.event(org, "agent-1", agent_says.type),
                agent_says.model_dump_json(exclude_none=True).encode(),
            )
            assert await wait_until(db, status_sql, (org, "success"), 1) == 1
            again = await reconciler.run_pass(fix=True)
            assert again.published == 1
            assert await wait_until(db, status_sql, (org, "failed"), 1) == 1
            # The row agrees with the engine now: the next pass has nothing to publish.
            assert (await reconciler.run_pass(fix=True)).published == 0
    finally:
        await reconciler.pool.close()
        await nc.close()
