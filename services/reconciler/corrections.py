"""Decisions and engine steps → the events that correct our records (pure).

Event ids are deterministic, so a loop that publishes the same correction twice is deduped by
JetStream (`Nats-Msg-Id`) and by ingest. Corrections carry `occurred_at = now`: among terminal
statuses the later event wins, so a wrong terminal status is overwritten.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from pydantic import JsonValue

from services.reconciler.engines import EngineStep
from services.reconciler.rules import Decision, Kind
from shared.events import ComponentFields, Event, EventType, ExecutionFields, Status

SOURCE = "reconciler"
#: Step inputs and outputs above this size are replaced by a preview (events must stay small).
MAX_STEP_VALUE_BYTES = 32 * 1024

EXECUTION_EVENT: dict[Status, EventType] = {
    Status.PENDING: EventType.EXECUTION_QUEUED,
    Status.RUNNING: EventType.EXECUTION_STARTED,
    Status.SUCCESS: EventType.EXECUTION_COMPLETED,
    Status.FAILED: EventType.EXECUTION_FAILED,
    Status.CANCELLED: EventType.EXECUTION_CANCELLED,
}

COMPONENT_EVENT: dict[Status, EventType] = {
    Status.PENDING: EventType.COMPONENT_STARTED,
    Status.RUNNING: EventType.COMPONENT_STARTED,
    Status.SUCCESS: EventType.COMPONENT_COMPLETED,
    Status.FAILED: EventType.COMPONENT_FAILED,
    Status.CANCELLED: EventType.COMPONENT_FAILED,
}


def correction_event_id(org: str, execution_id: str, what: str) -> str:
    return f"reconcile:{org}:{execution_id}:{what}"


def _duration_ms(started: datetime | None, completed: datetime | None) -> int | None:
    if started is None or completed is None or completed < started:
        return None
    return int((completed - started).total_seconds() * 1000)


def execution_event(decision: Decision, now: datetime) -> Event | None:
    """The event a PUBLISH decision asks for (None for decisions that publish nothing)."""
    status = decision.publish_status
    if status is None or decision.org is None or decision.execution_id is None:
        return None
    assert decision.agent_name is not None
    run = decision.run
    fields: dict[str, Any] = {
        "id": decision.execution_id,
        "agent_name": decision.agent_name,
        "status": status,
        "engine": decision.engine,
        "external_id": decision.external_id,
    }
    what = status.value
    if decision.kind is Kind.MISSING_EXTERNAL_ID:
        fields["error"] = f"reconciler: {decision.reason}"
        fields["error_type"] = "missing_external_id"
        fields["completed_at"] = now
        what = "missing_external_id"
    elif run is not None:
        fields["started_at"] = run.started_at
        if status.is_terminal:
            fields["completed_at"] = run.completed_at or now
            fields["duration_ms"] = _duration_ms(run.started_at, fields["completed_at"])
        if status is not Status.SUCCESS:
            fields["error"] = run.error
            fields["error_type"] = run.error_type
    return Event(
        type=EXECUTION_EVENT[status],
        event_id=correction_event_id(decision.org, decision.execution_id, what),
        occurred_at=now,
        org=decision.org,
        source=SOURCE,
        execution=ExecutionFields(**{k: v for k, v in fields.items() if v is not None}),
    )


def _bounded(value: object) -> JsonValue:
    if value is None:
        return None
    text = orjson.dumps(value, default=str)
    if len(text) <= MAX_STEP_VALUE_BYTES:
        loaded: JsonValue = orjson.loads(text)
        return loaded
    return {"truncated": True, "bytes": len(text), "preview": text[:1000].decode(errors="replace")}


def component_events(
    org: str, agent_name: str, execution_id: str, steps: list[EngineStep], now: datetime
) -> list[Event]:
    """One event per step attempt, ids fixed by (execution, step, attempt, status)."""
    events = []
    for step in steps:
        type_ = COMPONENT_EVENT[step.status]
        occurred = step.completed_at or step.started_at or now
        events.append(
            Event(
                type=type_,
                event_id=correction_event_id(
                    org, execution_id, f"{step.node_id}:{step.attempt}:{type_.value}"
                ),
                occurred_at=occurred,
                org=org,
                source=SOURCE,
                agent_name=agent_name,
                component=ComponentFields(
                    execution_id=execution_id,
                    node_id=step.node_id,
                    name=step.name[:200] or None,
                    attempt=step.attempt,
                    retry_policy=step.retry_policy,
                    max_attempts=step.max_attempts,
                    input=_bounded(step.input),
                    output=_bounded(step.output),
                    error=step.error[:60_000] if step.error else None,
                    error_type=step.error_type[:200] if step.error_type else None,
                    started_at=step.started_at,
                    completed_at=step.completed_at,
                ),
            )
        )
    return events
