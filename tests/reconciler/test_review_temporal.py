"""The Temporal adapter against a real dev server: what it reports of one run comes from that
run, and a failed run's error does not cost its whole history."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.workflowservice.v1 import (
    GetWorkflowExecutionHistoryRequest,
    GetWorkflowExecutionHistoryResponse,
)
from temporalio.client import WorkflowExecutionDescription, WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from services.reconciler.engines import EngineError
from services.reconciler.engines.temporal import MEMO_EXECUTION_ID, TemporalEngine
from shared.events import Status
from tests.reconciler.review_temporal_workflows import BUSY_ACTIVITIES, Busy
from tests.reconciler.temporal_workflows import (
    ACTIVITIES,
    WORKFLOWS,
    Completing,
    Failing,
    Waiting,
)


def _queue() -> str:
    return f"tq-{uuid.uuid4().hex}"


async def test_a_run_started_between_describe_and_history_lends_it_no_error_or_steps(
    temporal_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workflow id is reused right after the adapter described its failed run: the error
    and steps must still be that run's, not the new run's (another execution's inputs)."""
    client, queue, wid = temporal_env.client, _queue(), f"reused-{uuid.uuid4().hex[:8]}"
    describe = WorkflowHandle.describe
    reused: list[WorkflowHandle[Any, Any]] = []

    async def describe_then_reuse(
        self: WorkflowHandle[Any, Any], **kwargs: Any
    ) -> WorkflowExecutionDescription:
        desc = await describe(self, **kwargs)
        if not reused:  # the next execution starts under the same id, and finishes
            reused.append(
                await client.start_workflow(
                    Completing.run, "bob", id=wid, task_queue=queue, memo={MEMO_EXECUTION_ID: "e2"}
                )
            )
            await reused[0].result()
        return desc

    async with Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        first = await client.start_workflow(
            Failing.run, "http://billing", id=wid, task_queue=queue, memo={MEMO_EXECUTION_ID: "e1"}
        )
        with pytest.raises(WorkflowFailureError):
            await first.result()
        monkeypatch.setattr(WorkflowHandle, "describe", describe_then_reuse)
        run = await TemporalEngine(client).get_run(wid, with_steps=True)

    assert reused, "the second run was started"
    assert run is not None
    assert (run.status, run.execution_id) == (Status.FAILED, "e1")
    assert run.error_type == "UpstreamError"
    assert run.error is not None
    assert "upstream http://billing down" in run.error
    assert {step.name for step in run.steps} == {"call_upstream"}


async def test_a_failed_runs_error_is_read_without_its_whole_history(
    temporal_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass looks up up to `concurrency` runs at once: reading every event of each failed
    run (up to 50 MB of history each) only to find its last one holds them all in memory."""
    client, queue, wid = temporal_env.client, _queue(), f"busy-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[Busy], activities=ACTIVITIES):
        handle = await client.start_workflow(Busy.run, "batch", id=wid, task_queue=queue)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert len((await handle.fetch_history()).events) > 3 * BUSY_ACTIVITIES

    service = client.workflow_service
    fetch = service.get_workflow_execution_history
    read: list[int] = []

    async def counting(
        req: GetWorkflowExecutionHistoryRequest, *args: Any, **kwargs: Any
    ) -> GetWorkflowExecutionHistoryResponse:
        resp = await fetch(req, *args, **kwargs)
        read.append(len(resp.history.events))
        return resp

    monkeypatch.setattr(service, "get_workflow_execution_history", counting)
    run = await TemporalEngine(client).get_run(wid)

    assert run is not None
    assert run.status is Status.FAILED
    assert run.error == "batch: gave up after the batch"
    assert run.error_type == "BatchFailed"
    assert sum(read) <= 2, f"read {sum(read)} history events for one failure"

    # Steps still come from the whole history.
    read.clear()
    with_steps = await TemporalEngine(client).get_run(wid, with_steps=True)
    assert with_steps is not None
    assert len(with_steps.steps) == BUSY_ACTIVITIES
    assert with_steps.error == run.error


async def test_terminated_cancelled_and_timed_out_runs_keep_their_reason(
    temporal_env: WorkflowEnvironment,
) -> None:
    """Each way a run can end other than by itself, read from its close event alone and
    from its whole history alike."""
    client, queue, tag = temporal_env.client, _queue(), uuid.uuid4().hex[:8]
    async with Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        killed = await client.start_workflow(Waiting.run, "a", id=f"killed-{tag}", task_queue=queue)
        cancelled = await client.start_workflow(
            Waiting.run, "b", id=f"cancelled-{tag}", task_queue=queue
        )
        late = await client.start_workflow(
            Waiting.run,
            "c",
            id=f"late-{tag}",
            task_queue=queue,
            execution_timeout=timedelta(seconds=1),
        )
        await killed.terminate(reason="operator stopped it")
        await cancelled.cancel()
        for handle in (cancelled, late):
            with pytest.raises(WorkflowFailureError):
                await handle.result()

    engine = TemporalEngine(client)
    for with_steps in (False, True):
        got = {
            h.id: await engine.get_run(h.id, with_steps=with_steps)
            for h in (killed, cancelled, late)
        }
        summary = {
            wid: (run.status, run.error_type, run.error)
            for wid, run in got.items()
            if run is not None
        }
        assert summary == {
            killed.id: (Status.CANCELLED, "terminated", "operator stopped it"),
            cancelled.id: (Status.CANCELLED, None, None),
            late.id: (Status.FAILED, "timed_out", "workflow timed out"),
        }
        assert all(run is not None and run.completed_at is not None for run in got.values())


async def test_a_missing_namespace_is_an_engine_error_not_a_missing_run(
    temporal_env: WorkflowEnvironment,
) -> None:
    """Temporal answers NOT_FOUND for a namespace it does not have, too: read as "no such
    run", a mistyped namespace would report every row's run as gone (orphan rows, no breaker)
    instead of the engine failing."""
    target = temporal_env.client.service_client.config.target_host
    engine = await TemporalEngine.connect(target, f"missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(EngineError, match="not found"):
        await engine.get_run("any-workflow")
    # A run the namespace lacks is still no run at all.
    assert await TemporalEngine(temporal_env.client).get_run(f"none-{uuid.uuid4().hex}") is None
