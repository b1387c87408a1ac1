"""Decisions and engine steps → the events that correct our records (pure).

Event ids are deterministic, so a loop that publishes the same correction twice is deduped by
JetStream (`Nats-Msg-Id`) and by ingest. Corrections carry `occurred_at = now`: among terminal
statuses the later event wins, so a wrong terminal status is overwritten.

What an engine reports is fitted to the contract first (an engine's error text has no limit,
may hold NUL, and its times may lie outside 2000-2199): an event ingest would dead-letter, or
that fails validation here, would leave its row uncorrected on every pass.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import JsonValue, ValidationError

from services.reconciler.engines import EngineStep
from services.reconciler.rules import Decision, Kind
from shared.events import (
    EARLIEST,
    LATEST,
    MAX_ID,
    ComponentFields,
    Event,
    EventType,
    ExecutionFields,
    Status,
)
from shared.publisher.fit import fit_text, replace_nul, scrub_nul

log = logging.getLogger(__name__)

SOURCE = "reconciler"
#: Step inputs and outputs above this size are replaced by a preview (events must stay small).
MAX_STEP_VALUE_BYTES = 32 * 1024
#: An engine's error text is cut to this many bytes as JSON (the contract allows 64 Ki chars).
MAX_ERROR_BYTES = 60_000
#: `error_type` and a step's name are at most this many characters in the contract.
MAX_LABEL = 200

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


def _id_part(text: str) -> str:
    # An id may hold ":" itself; escaped, the parts of two corrections cannot run together
    # into the same id (execution "a" step "b:1" against execution "a:b" step "1"). Ids
    # without ":" or "%" are unchanged, so corrections published before keep their ids.
    return text.replace("%", "%25").replace(":", "%3A")


def correction_event_id(org: str, execution_id: str, *what: str | int) -> str:
    """`reconcile:<org>:<execution>:<what>...` with `:` and `%` escaped in each part, or its
    SHA-256 when that is longer than an id may be (still deterministic, so repeats are still
    deduplicated)."""
    parts = (org, execution_id, *map(str, what))
    event_id = "reconcile:" + ":".join(map(_id_part, parts))
    if len(event_id) <= MAX_ID:
        return event_id
    return "reconcile:" + hashlib.sha256(event_id.encode()).hexdigest()


def _moment(value: datetime | None) -> datetime | None:
    """A time the contract accepts (2000-2199), else unknown."""
    return value if value is not None and EARLIEST <= value <= LATEST else None


#: How much later than the status it corrects a correction says it happened, at least.
_AFTER = timedelta(milliseconds=1)


def _after(now: datetime, status_at: datetime | None) -> datetime:
    """`now`, or just after the event that set our status when that one claims a later time.

    Among terminal statuses the later `occurred_at` wins, and an agent's clock may run ahead
    of ours: a correction stamped with our `now` would lose to the wrong status it corrects,
    and be published again on every pass, never taking effect."""
    if status_at is None or status_at < now:
        return now
    return min(status_at + _AFTER, LATEST)


def _label(value: str | None) -> str | None:
    return replace_nul(value)[:MAX_LABEL] or None if value else None


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
    what: tuple[str, ...] = (status.value,)
    ours = decision.our_status
    if ours is not None and ours.is_terminal:
        # Over a finished row the id names what it overrides, down to the event that set it:
        # had it named the status only, a second correction after the agent reported its own
        # status again would reuse the first's id and be dropped as its duplicate (so would
        # one naming the row's completed_at, which a repeated report carries unchanged).
        # Repeats over the same row stay one id.
        what = (status.value, "over", ours.value, decision.our_status_version or "-")
    if decision.kind is Kind.MISSING_EXTERNAL_ID:
        fields["error"] = f"reconciler: {decision.reason}"
        fields["error_type"] = "missing_external_id"
        fields["completed_at"] = now
        what = ("missing_external_id",)
    elif run is not None:
        started = fields["started_at"] = _moment(run.started_at)
        completed = _moment(run.completed_at)
        if completed is None and status.is_terminal and not (ours and ours.is_terminal):
            completed = now  # it ended by now; a finished row keeps the end time it has
        if completed is not None and status.is_terminal:
            fields["completed_at"] = completed
            fields["duration_ms"] = _duration_ms(started, completed)
        if status is not Status.SUCCESS:
            fields["error"] = fit_text(run.error, MAX_ERROR_BYTES)
            fields["error_type"] = _label(run.error_type)
    return Event(
        type=EXECUTION_EVENT[status],
        event_id=correction_event_id(decision.org, decision.execution_id, *what),
        occurred_at=_after(now, decision.our_status_at),
        org=decision.org,
        source=SOURCE,
        execution=ExecutionFields(**{k: v for k, v in fields.items() if v is not None}),
    )


def _bounded(value: object) -> JsonValue:
    if value is None:
        return None
    try:
        text = orjson.dumps(value, default=str)
    except (TypeError, orjson.JSONEncodeError) as exc:  # e.g. nested past orjson's depth
        return {"unreadable": True, "reason": str(exc)[:MAX_LABEL]}
    if len(text) <= MAX_STEP_VALUE_BYTES:
        loaded: JsonValue = scrub_nul(orjson.loads(text))
        return loaded
    preview = replace_nul(text[:1000].decode(errors="replace"))
    return {"truncated": True, "bytes": len(text), "preview": preview}


def component_events(
    org: str, agent_name: str, execution_id: str, steps: list[EngineStep], now: datetime
) -> list[Event]:
    """One event per step attempt, ids fixed by (execution, step, attempt, status). A step
    no valid event can describe (an id over 200 characters) is left out and logged."""
    events = []
    for step in steps:
        try:
            events.append(_step_event(org, agent_name, execution_id, step, now))
        except ValidationError as exc:
            log.warning("step %r of %s/%s left out: %s", step.node_id[:80], org, execution_id, exc)
    return events


def _step_event(
    org: str, agent_name: str, execution_id: str, step: EngineStep, now: datetime
) -> Event:
    type_ = COMPONENT_EVENT[step.status]
    node_id = replace_nul(step.node_id)
    started, completed = _moment(step.started_at), _moment(step.completed_at)
    return Event(
        type=type_,
        event_id=correction_event_id(org, execution_id, node_id, step.attempt, type_.value),
        occurred_at=completed or started or now,
        org=org,
        source=SOURCE,
        agent_name=agent_name,
        component=ComponentFields(
            execution_id=execution_id,
            node_id=node_id,
            name=_label(step.name),
            attempt=min(max(step.attempt, 1), 1_000_000),
            retry_policy=step.retry_policy,
            max_attempts=None
            if step.max_attempts is None or step.max_attempts < 0
            else min(step.max_attempts, 1_000_000),
            input=_bounded(step.input),
            output=_bounded(step.output),
            error=fit_text(step.error, MAX_ERROR_BYTES) or None,
            error_type=_label(step.error_type),
            started_at=started,
            completed_at=completed,
        ),
    )
