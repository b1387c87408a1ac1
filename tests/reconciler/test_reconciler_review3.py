"""Third review of the reconciler, against the real Postgres and the local HTTP engine: a
listing read only in part is no clean pass for `fleetwatch reconcile`, runs of two orgs that
share a run id are both listed, find-running lists a run whose start is a little ahead of
our clock, as just started, and (on the real Temporal dev server) a finished row corrected to
failed from the listing carries the run's error."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from services.reconciler.corrections import execution_event
from services.reconciler.engines.temporal import MEMO_EXECUTION_ID, MEMO_ORG, TemporalEngine
from services.reconciler.rules import Action, Kind, Policy
from shared import cli
from shared.events import Status
from shared.subjects import Subjects
from tests.procs import free_port
from tests.reconciler.helpers import (
    ago,
    decided_once_listed,
    http_engine,
    insert_row,
    make_reconciler,
)
from tests.reconciler.http_engine import EngineState, serving
from tests.reconciler.temporal_workflows import ACTIVITIES, WORKFLOWS, Failing


@contextlib.contextmanager
def engine_in_thread(state: EngineState) -> Iterator[str]:
    """The local engine served from a thread of its own, for the CLI's own event loop."""
    port = free_port()
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        async with serving(state, port):
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.02)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the local engine did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.parametrize("json_output", [False, True])
def test_a_listing_cut_at_its_page_limit_is_no_clean_pass(
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    json_output: bool,
) -> None:
    """Runs past the last page read are orphans nobody sees: a cron job must not read the
    pass as clean (exit 0, "0 engine error(s)") while its own table shows the cut."""
    state = EngineState(page_size=2)
    prefix = uuid.uuid4().hex[:8]
    for i in range(5):  # three pages; only two are read
        state.add(f"{prefix}-{i}", "running", started_at=ago(60 * i))
    with engine_in_thread(state) as url:
        monkeypatch.setenv("RECONCILER_HTTP_BASE_URL", url)
        monkeypatch.setenv("RECONCILER_HTTP_LIST_MAX_PAGES", "2")
        argv = ["reconcile", "--dry-run", *(["--json"] if json_output else [])]
        code = cli.main(argv)
    out = capsys.readouterr().out
    assert code == 1, out
    if json_output:
        report = orjson.loads(out)
        (error,) = report["engine_errors"]
        assert "more than 2 pages" in error
        assert any(d["kind"] == "engine_error" for d in report["decisions"])
    else:
        assert "more than 2 pages" in out
        assert "1 engine error(s)" in out


async def test_runs_of_two_orgs_under_one_run_id_are_both_listed(
    database_url: str, org: str
) -> None:
    """Run ids are unique per org only: an engine serving several teams lists org A's job 42
    and org B's job 42. The listing kept one run per id, so B's run was never seen: no
    orphan created for it, no correction of B's finished row."""
    other = f"{org}-b"
    job = f"job-{uuid.uuid4().hex[:8]}"
    state = EngineState()
    state.runs["listing"] = {
        "runs": [
            {"id": job, "status": "succeeded", "org": org, "agent_name": "a",
             "execution_id": "exec-a", "started_at": ago(3000)},
            {"id": job, "status": "failed", "org": other, "agent_name": "b",
             "execution_id": "exec-b", "started_at": ago(2000)},
        ]
    }  # fmt: skip
    async with http_engine(state, list_path="/runs/listing") as adapter:
        now = datetime.now(UTC)
        listed = await adapter.list_runs(now - timedelta(hours=1), now)
        assert sorted((r.org, r.execution_id) for r in listed) == [
            (org, "exec-a"),
            (other, "exec-b"),
        ]
        reconciler = await make_reconciler(database_url, {"http": adapter}, None, Subjects("x"))
        try:
            report = await reconciler.run_pass(fix=False)
        finally:
            await reconciler.pool.close()
    created = {
        (d.org, d.execution_id, d.publish_status.value if d.publish_status else None)
        for d in report.decisions
        if d.kind is Kind.ORPHAN_RUN and d.action is Action.PUBLISH and d.external_id == job
    }
    assert created == {(org, "exec-a", "success"), (other, "exec-b", "failed")}


async def test_a_run_on_two_pages_still_counts_once() -> None:
    """Keying the listing by more than the id must not list a run twice when pages overlap."""
    state = EngineState(page_size=3, cursor_loops=True)
    for i in range(5):
        state.add(f"p{i}", "running", started_at=ago(60 * i))
    async with http_engine(state) as adapter:
        now = datetime.now(UTC)
        listed = await adapter.list_runs(now - timedelta(hours=1), now)
    assert sorted(r.external_id for r in listed) == ["p0", "p1", "p2"]


def test_find_running_shows_a_start_ahead_of_our_clock_as_just_started(
    cli_env: None,
    database_url: str,
    org: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An agent's clock a few seconds ahead of ours (NTP drift) puts the start just after our
    now: the run was left out of find-running altogether (its age below the default
    `--older-than 0`), and its age would have read "-1h59m"."""

    async def insert() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            ahead = datetime.now(UTC) + timedelta(seconds=30)
            await conn.execute(
                "INSERT INTO executions (org, id, agent_name, status, started_at, first_seen_at)"
                " VALUES ($1, 'ahead', 'agent-1', 'running', $2, $2)",
                org,
                ahead,
            )
        finally:
            await conn.close()

    asyncio.run(insert())
    assert cli.main(["reconcile", "find-running", "--org", org]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if "ahead" in line]
    assert line.split()[-1] == "0m00s", out


async def test_a_finished_row_corrected_to_failed_from_the_listing_carries_the_error(
    temporal_env: WorkflowEnvironment, database_url: str, db: asyncpg.Connection, org: str
) -> None:
    """Our agent said success; Temporal says the workflow failed. A finished row is checked
    against the listing only, and Temporal's listing has no failure: the correction said
    "failed" with no error or type, and being sent once over that row, it stayed so."""
    client, queue = temporal_env.client, f"tq-{uuid.uuid4().hex}"
    wid = f"said-ok-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        handle = await client.start_workflow(
            Failing.run,
            "http://billing",
            id=wid,
            task_queue=queue,
            memo={MEMO_ORG: org, MEMO_EXECUTION_ID: "said-ok"},
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    await insert_row(
        db, org, "said-ok", engine="temporal", external_id=wid, status="success", age_s=120
    )
    engine = TemporalEngine(client)
    reconciler = await make_reconciler(
        database_url, {"temporal": engine}, None, Subjects("x"), Policy()
    )
    try:
        found = await decided_once_listed(reconciler, lambda d: d.execution_id == "said-ok")
    finally:
        await reconciler.pool.close()
    (decision,) = found
    assert (decision.kind, decision.publish_status) == (Kind.STATUS_MISMATCH, Status.FAILED)
    event = execution_event(decision, datetime.now(UTC))
    assert event is not None
    assert event.execution is not None
    assert "upstream http://billing down" in (event.execution.error or "")
    assert event.execution.error_type == "UpstreamError"
