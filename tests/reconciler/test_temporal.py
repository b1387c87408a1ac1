"""Against a real Temporal dev server: each drift kind found, dry run inert, fixes applied by
ingest, running workflows left alone, component rows matching the activity history."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import nats
import orjson
import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from services.reconciler.app import sync_handler
from services.reconciler.engines.temporal import (
    MEMO_AGENT,
    MEMO_EXECUTION_ID,
    MEMO_ORG,
    TemporalEngine,
)
from services.reconciler.rules import Action, Kind, Policy
from shared import cli
from shared.events import RetryPolicy, Status
from shared.subjects import Subjects
from tests.procs import running
from tests.reconciler.helpers import insert_row, make_reconciler, stream_messages, wait_until
from tests.reconciler.temporal_workflows import (
    ACTIVITIES,
    WORKFLOWS,
    Completing,
    Failing,
    Retrying,
    Waiting,
)

POLICY = Policy(
    first_check_grace=timedelta(seconds=0),
    orphan_grace=timedelta(minutes=5),
    orphan_run_grace=timedelta(seconds=0),
    missing_external_id_timeout=timedelta(minutes=5),
)


@dataclass
class Fleet:
    org: str
    ids: dict[str, str]  # our execution id -> workflow id
    waiting: WorkflowHandle[Waiting, str]
    client: Client


@pytest_asyncio.fixture
async def fleet(
    temporal_env: WorkflowEnvironment, db: asyncpg.Connection, org: str
) -> AsyncIterator[Fleet]:
    client = temporal_env.client
    queue = f"tq-{uuid.uuid4().hex}"
    tag = uuid.uuid4().hex[:8]
    async with Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        done = await client.start_workflow(
            Completing.run, "ada", id=f"done-{tag}", task_queue=queue
        )
        wrong = await client.start_workflow(
            Completing.run, "bob", id=f"wrong-{tag}", task_queue=queue
        )
        failing = await client.start_workflow(
            Failing.run, "http://billing", id=f"fail-{tag}", task_queue=queue
        )
        waiting = await client.start_workflow(Waiting.run, "cy", id=f"wait-{tag}", task_queue=queue)
        orphan = await client.start_workflow(
            Completing.run,
            "dee",
            id=f"orphan-{tag}",
            task_queue=queue,
            memo={MEMO_ORG: org, MEMO_AGENT: "agent-9", MEMO_EXECUTION_ID: f"orph-{tag}"},
        )
        await done.result()
        await wrong.result()
        await orphan.result()
        with pytest.raises(WorkflowFailureError):
            await failing.result()
        ids = {
            "x-done": done.id,
            "x-wrong": wrong.id,
            "x-fail": failing.id,
            "x-wait": waiting.id,
            "x-gone": f"gone-{tag}",
        }
        for execution_id, workflow_id in ids.items():
            status = "failed" if execution_id == "x-wrong" else "running"
            await insert_row(
                db, org, execution_id, engine="temporal", external_id=workflow_id, status=status
            )
        await insert_row(db, org, "x-noid", engine="temporal", external_id=None)
        await insert_row(db, org, "x-other", engine=None, external_id=None)
        # Visibility lags the history by a second or two: wait until the listing has them all.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            listed = [wf.id async for wf in client.list_workflows(f"WorkflowId = '{orphan.id}'")]
            if listed:
                break
            await asyncio.sleep(0.2)
        yield Fleet(org=org, ids=ids, waiting=waiting, client=client)
        await waiting.signal(Waiting.finish)
        await waiting.result()


async def test_drift_found_dry_run_inert_fix_applied_running_left_alone(
    fleet: Fleet,
    db: asyncpg.Connection,
    database_url: str,
    nats_url: str,
    subjects: Subjects,
    service_env: dict[str, str],
) -> None:
    org = fleet.org
    nc = await nats.connect(nats_url)
    engine = TemporalEngine(fleet.client)
    reconciler = await make_reconciler(
        database_url,
        {"temporal": engine},
        nc.jetstream(),
        subjects,
        POLICY,
        component_engines=["temporal"],
    )
    # Run ids are unique per org only: another org's rows with the id of this org's run (one
    # open, one finished) are neither corrected nor do they hide the orphan.
    other = f"{org}-b"
    orphan_run_id = fleet.ids["x-done"].replace("done", "orphan")
    await insert_row(db, other, "x-foreign", engine="temporal", external_id=orphan_run_id)
    await insert_row(
        db,
        other,
        "x-foreign-done",
        engine="temporal",
        external_id=fleet.ids["x-fail"],
        status="success",
    )
    try:
        report = await reconciler.run_pass(fix=False)
        foreign = {d.execution_id: d for d in report.decisions if d.org == other}
        assert (foreign["x-foreign"].kind, foreign["x-foreign"].action) == (
            Kind.FOREIGN_RUN,
            Action.FLAG,
        )
        assert "x-foreign-done" not in foreign
        mine = [d for d in report.decisions if d.org == org]
        by_id = {d.execution_id: d for d in mine}
        assert by_id["x-done"].kind is Kind.STATUS_MISMATCH
        assert by_id["x-done"].publish_status is Status.SUCCESS
        assert by_id["x-fail"].publish_status is Status.FAILED
        assert "upstream http://billing down" in (by_id["x-fail"].run.error or "")  # type: ignore[union-attr]
        assert by_id["x-wrong"].kind is Kind.STATUS_MISMATCH
        assert (by_id["x-wait"].kind, by_id["x-wait"].action) == (Kind.OK, Action.NONE)
        assert by_id["x-gone"].kind is Kind.ORPHAN_ROW
        assert by_id["x-noid"].kind is Kind.MISSING_EXTERNAL_ID
        assert "x-other" not in by_id
        orphan = by_id[f"orph-{fleet.ids['x-done'].split('-')[1]}"]
        assert (orphan.kind, orphan.agent_name) == (Kind.ORPHAN_RUN, "agent-9")
        assert await stream_messages(nats_url, subjects) == []

        async with running("ingest", service_env):
            fixed = await reconciler.run_pass(fix=True)
            assert fixed.fixed == 4
            changed = await wait_until(
                db,
                "SELECT count(*) FROM events WHERE org = $1",
                (org,),
                4,
            )
            assert changed == 4
            synced = await reconciler.sync_recent_components()
            assert synced >= 6
            stored_steps = await wait_until(
                db,
                "SELECT count(*) FROM component_executions WHERE org = $1",
                (org,),
                synced,
            )
            assert stored_steps == synced  # every step synced reached the table
            # Synced steps are not fetched again while the run does not change.
            assert await reconciler.sync_recent_components() == 0
            # x-fail's run names no org or execution, and another org's row uses its run id:
            # whose inputs and outputs its steps are cannot be told, so they were not copied.
            refused = await reconciler.sync_components(org, "x-fail", "background")
            assert not refused.ok
            assert "several orgs" in (refused.error or "")
            assert not await db.fetchval(
                "SELECT count(*) FROM component_executions WHERE org = $1 AND execution_id = $2",
                org,
                "x-fail",
            )
            # Once that row is gone, the next background pass copies them.
            await db.execute("DELETE FROM executions WHERE org = $1", other)
            failed_steps = await reconciler.sync_recent_components()
            assert failed_steps >= 1
            synced += failed_steps
            stored_steps = await wait_until(
                db,
                "SELECT count(*) FROM component_executions WHERE org = $1",
                (org,),
                synced,
            )
            assert stored_steps == synced  # every step synced reached the table
            # On demand, as the query service asks for a running execution's steps.
            await nc.subscribe(subjects.sync_components(), cb=sync_handler(reconciler))
            reply = await nc.request(
                subjects.sync_components(),
                orjson.dumps({"org": org, "execution_id": "x-wait"}),
                timeout=10,
            )
            assert orjson.loads(reply.data) == {
                "ok": True,
                "steps": 1,
                "published": 1,
                "error": None,
            }
            bad = await nc.request(subjects.sync_components(), b"{}", timeout=10)
            assert orjson.loads(bad.data)["ok"] is False
            assert (
                await wait_until(
                    db,
                    "SELECT count(*) FROM component_executions "
                    "WHERE org = $1 AND execution_id = $2",
                    (org, "x-wait"),
                    1,
                )
                == 1
            )

        rows = {
            r["id"]: r
            for r in await db.fetch(
                "SELECT id, agent_name, status, error, engine, external_id FROM executions "
                "WHERE org = $1",
                org,
            )
        }
        assert rows["x-done"]["status"] == "success"
        assert rows["x-wrong"]["status"] == "success"
        assert rows["x-fail"]["status"] == "failed"
        assert "upstream http://billing down" in rows["x-fail"]["error"]
        assert rows["x-wait"]["status"] == "running"
        assert rows["x-gone"]["status"] == "running"
        orphan_row = rows[orphan.execution_id]
        assert (orphan_row["status"], orphan_row["agent_name"]) == ("success", "agent-9")
        assert orphan_row["external_id"] == fleet.ids["x-done"].replace("done", "orphan")

        steps = await db.fetch(
            "SELECT execution_id, node_id, attempt, name, status, retry_policy, max_attempts, "
            "input, output, error FROM component_executions WHERE org = $1 "
            "ORDER BY execution_id, node_id, attempt",
            org,
        )
        got = {
            (s["execution_id"], s["name"], s["attempt"]): (
                s["status"],
                s["retry_policy"],
                s["max_attempts"],
                s["error"],
            )
            for s in steps
        }
        assert got[("x-done", "greet", 1)][0] == "success"
        assert got[("x-done", "charge", 3)] == ("success", "fixed", 5, None)
        assert got[("x-done", "charge", 2)] == ("failed", "fixed", 5, "declined on attempt 2")
        assert got[("x-fail", "call_upstream", 3)][:3] == ("failed", "exponential", 3)
        assert "upstream http://billing down" in got[("x-fail", "call_upstream", 3)][3]
        assert got[("x-wait", "greet", 1)][0] == "success"
        charge_row = next(s for s in steps if s["name"] == "charge" and s["attempt"] == 3)
        assert (charge_row["input"], charge_row["output"]) == (42, {"charged": 42})
    finally:
        await reconciler.pool.close()
        await nc.close()


def test_cli_dry_run_cross_reference_and_find_running(
    fleet: Fleet,
    cli_env: None,
    temporal_env: WorkflowEnvironment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(
        "RECONCILER_TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host
    )
    monkeypatch.setenv("RECONCILER_FIRST_CHECK_GRACE_SECONDS", "0")

    assert cli.main(["reconcile", "--dry-run", "--json", "--org", fleet.org]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["mode"] == "dry-run"
    kinds = {d["execution_id"]: d["kind"] for d in result["decisions"]}
    assert kinds["x-done"] == "status_mismatch"
    assert "x-wait" not in kinds  # in agreement with its engine: not a mismatch

    assert (
        cli.main(["reconcile", "cross-reference", "--org", fleet.org, "--engine", "temporal"]) == 0
    )
    table = capsys.readouterr()
    assert "x-wait" in table.out
    assert "dry run: nothing changed" in table.out
    assert "checked 4/4" in table.err  # progress

    assert cli.main(["reconcile", "find-running", "--org", fleet.org]) == 0
    listing = capsys.readouterr().out
    assert "x-other" in listing
    assert "6 running" in listing

    with pytest.raises(SystemExit):
        cli.main(["reconcile"])


async def test_pending_retrying_activity_is_left_running_and_its_attempts_reported(
    temporal_env: WorkflowEnvironment,
) -> None:
    client = temporal_env.client
    queue = f"tq-{uuid.uuid4().hex}"
    async with Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        handle = await client.start_workflow(
            Retrying.run, "report-42", id=f"retry-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
        try:
            engine = TemporalEngine(client)
            deadline = time.monotonic() + 15
            while True:
                run = await engine.get_run(handle.id, with_steps=True)
                assert run is not None
                if run.steps and run.steps[-1].attempt >= 3:
                    break
                assert time.monotonic() < deadline, run
                await asyncio.sleep(0.2)
            assert run.status is Status.RUNNING
            previous, current = run.steps[-2], run.steps[-1]
            assert (current.status, current.retry_policy, current.max_attempts) == (
                Status.RUNNING,
                RetryPolicy.FOREVER,
                0,
            )
            assert current.retry_class == "expected"
            assert (previous.status, previous.attempt) == (Status.FAILED, current.attempt - 1)
            assert previous.error == "report-42 not ready"
            assert previous.error_type == "NotReady"
            assert current.input == "report-42"
        finally:
            await handle.terminate("test over")
