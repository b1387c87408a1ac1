"""Temporal adapter: workflow status, times and failure, and activity history as steps."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHistory,
    WorkflowHistoryEventFilterType,
)
from temporalio.service import RPCError, RPCStatusCode

from services.reconciler.engines import EngineError, EngineRun
from services.reconciler.engines.temporal_history import failure_text, steps_from_history
from shared.events import Status

log = logging.getLogger(__name__)

#: Memo keys a workflow may carry so that a run with no row can be attributed.
MEMO_ORG = "fleetwatch_org"
MEMO_AGENT = "fleetwatch_agent"
MEMO_EXECUTION_ID = "fleetwatch_execution_id"

STATUS: dict[WorkflowExecutionStatus, tuple[Status, str | None]] = {
    WorkflowExecutionStatus.RUNNING: (Status.RUNNING, None),
    # The chain goes on in a new run; describing the workflow id follows it.
    WorkflowExecutionStatus.CONTINUED_AS_NEW: (Status.RUNNING, None),
    WorkflowExecutionStatus.COMPLETED: (Status.SUCCESS, None),
    WorkflowExecutionStatus.FAILED: (Status.FAILED, None),
    WorkflowExecutionStatus.TIMED_OUT: (Status.FAILED, "timed_out"),
    WorkflowExecutionStatus.CANCELED: (Status.CANCELLED, None),
    WorkflowExecutionStatus.TERMINATED: (Status.CANCELLED, "terminated"),
}

_CLOSE_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "workflow_execution_failed_event_attributes",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: "",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: (
        "workflow_execution_terminated_event_attributes"
    ),
}


def json_safe(value: Any) -> Any:
    """Decoded payloads as plain JSON values (dataclasses and the like become text)."""
    return json.loads(json.dumps(value, default=str))


def map_status(status: WorkflowExecutionStatus | None) -> tuple[Status, str | None]:
    if status is None:
        return Status.RUNNING, None
    return STATUS.get(status, (Status.RUNNING, None))


async def _our_memo(run: WorkflowExecution) -> dict[str, Any]:
    """The memo fields fleetwatch reads, each decoded on its own.

    Any workflow of the namespace is listed, not only ours: one whose memo this converter
    cannot decode (a codec's encoding, say) is simply not attributed, and the pass goes on.
    """
    values: dict[str, Any] = {}
    for key in (MEMO_ORG, MEMO_AGENT, MEMO_EXECUTION_ID):
        try:
            values[key] = await run.memo_value(key, None)
        except Exception as exc:
            log.debug("workflow %s: memo %s unreadable: %s", run.id, key, exc)
            values[key] = None
    return values


class TemporalEngine:
    """Reads one namespace through a connected client; workflow id is the external id."""

    def __init__(self, client: Client, *, name: str = "temporal", timeout_seconds: float = 10.0):
        self._client = client
        self._name = name
        self._timeout = timedelta(seconds=timeout_seconds)

    @classmethod
    async def connect(
        cls, address: str, namespace: str, *, name: str = "temporal", timeout_seconds: float = 10.0
    ) -> TemporalEngine:
        try:
            client = await Client.connect(address, namespace=namespace)
        except Exception as exc:
            raise EngineError(f"{name}: cannot connect to {address}: {exc}") from exc
        return cls(client, name=name, timeout_seconds=timeout_seconds)

    @property
    def name(self) -> str:
        return self._name

    @property
    def lists_runs(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    def _decode(self, payloads: Payloads) -> Any:
        values = self._client.data_converter.payload_converter.from_payloads(payloads.payloads)
        return json_safe(values)

    async def list_runs(self, since: datetime, until: datetime) -> list[EngineRun]:
        query = f"StartTime >= '{since.isoformat()}' AND StartTime <= '{until.isoformat()}'"
        runs = []
        try:
            async for wf in self._client.list_workflows(query, rpc_timeout=self._timeout):
                memo = await _our_memo(wf)
                status, error_type = map_status(wf.status)
                runs.append(
                    EngineRun(
                        engine=self._name,
                        external_id=wf.id,
                        status=status,
                        started_at=wf.start_time,
                        completed_at=wf.close_time if status.is_terminal else None,
                        error_type=error_type,
                        org=_text(memo.get(MEMO_ORG)),
                        agent_name=_text(memo.get(MEMO_AGENT)),
                        execution_id=_text(memo.get(MEMO_EXECUTION_ID)),
                    )
                )
        except RPCError as exc:
            raise EngineError(f"{self._name}: list workflows: {exc.message}") from exc
        return runs

    async def _history(self, external_id: str, run_id: str | None, whole: bool) -> WorkflowHistory:
        """The history of the run described, not of whichever run the id names by now (a
        reused id's next run is another execution's, with its own inputs and error). Without
        `whole`, only the close event: a run's history may hold 50 MB, and a pass looks up
        many runs at once."""
        handle = self._client.get_workflow_handle(external_id, run_id=run_id)
        return await handle.fetch_history(
            event_filter_type=(
                WorkflowHistoryEventFilterType.ALL_EVENT
                if whole
                else WorkflowHistoryEventFilterType.CLOSE_EVENT
            ),
            rpc_timeout=self._timeout,
        )

    async def get_run(self, external_id: str, *, with_steps: bool = False) -> EngineRun | None:
        handle = self._client.get_workflow_handle(external_id)
        try:
            desc = await handle.describe(rpc_timeout=self._timeout)
            status, error_type = map_status(desc.status)
            error = None
            history = None
            if with_steps or status in (Status.FAILED, Status.CANCELLED):
                history = await self._history(external_id, desc.run_id, with_steps)
            memo = await _our_memo(desc)
        except RPCError as exc:
            if _no_such_run(exc):
                return None
            raise EngineError(f"{self._name}: describe {external_id}: {exc.message}") from exc
        steps: tuple[Any, ...] = ()
        if history is not None:
            for event in reversed(history.events):
                attr = _CLOSE_EVENTS.get(event.event_type)
                if attr is None:
                    continue
                if attr == "workflow_execution_failed_event_attributes":
                    error, inner_type = failure_text(
                        event.workflow_execution_failed_event_attributes.failure
                    )
                    error_type = inner_type or error_type
                elif attr:
                    error = event.workflow_execution_terminated_event_attributes.reason or None
                else:
                    error = "workflow timed out"
                break
            if with_steps:
                pending = list(desc.raw_description.pending_activities)
                steps = tuple(steps_from_history(history.events, pending, self._decode))
        return EngineRun(
            engine=self._name,
            external_id=external_id,
            status=status,
            started_at=desc.start_time,
            completed_at=desc.close_time if status.is_terminal else None,
            error=error,
            error_type=error_type,
            org=_text(memo.get(MEMO_ORG)),
            agent_name=_text(memo.get(MEMO_AGENT)),
            execution_id=_text(memo.get(MEMO_EXECUTION_ID)),
            steps=steps,
        )


def _no_such_run(exc: RPCError) -> bool:
    """Whether NOT_FOUND means the run is not there. A missing namespace (a misconfigured
    one) answers NOT_FOUND too: that is every lookup failing, not every row's run gone."""
    if exc.status != RPCStatusCode.NOT_FOUND:
        return False
    details = exc.grpc_status.details
    return not any(d.type_url.endswith(".NamespaceNotFoundFailure") for d in details)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
