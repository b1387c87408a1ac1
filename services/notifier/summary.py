"""Turn one stream message into what clients receive: a summary (never the log), serialized once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from shared.events import Event, Status
from shared.subjects import Subjects
from shared.validation import Rejected, validate

#: As in the query API's list: long text is cut, the full text is one detail request away.
TEXT_CUT = 200

_EXECUTION_FIELDS = (
    "id",
    "agent_name",
    "project",
    "workflow",
    "schedule_id",
    "triggered_by",
    "error_type",
    "started_at",
    "completed_at",
    "duration_ms",
    "context_used",
    "context_max",
    "cost",
    "tokens_in",
    "tokens_out",
    "engine",
    "external_id",
    "parent_execution_id",
)
_COMPONENT_FIELDS = (
    "execution_id",
    "node_id",
    "name",
    "attempt",
    "retry_policy",
    "max_attempts",
    "error_type",
    "started_at",
    "completed_at",
)


@dataclass(frozen=True, slots=True)
class EventMeta:
    """What the fan-out rules look at: who may see the event and what the filters match."""

    org: str
    agent: str
    status: Status
    execution_id: str
    #: None when the event does not say (completion events often carry only id and status).
    triggered_by: str | None
    is_component: bool


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event ready for every client: its metadata and the frame bytes shared by all."""

    seq: int
    meta: EventMeta
    payload: bytes


def decode(subjects: Subjects, subject: str, data: bytes) -> Event | None:
    """The event, or None for anything ingest sends to the DLQ (the same contract check)."""
    checked = validate(subjects, subject, data)
    return None if isinstance(checked, Rejected) else checked


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:TEXT_CUT]


def _pick(model: Any, names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(model, name)
        if value is not None:
            out[name] = value
    return out


def summarize(event: Event) -> dict[str, Any]:
    """The `execution` (and for steps `component`) objects of a client message."""
    body: dict[str, Any]
    if event.execution is not None:
        ex = event.execution
        body = {"execution": _pick(ex, _EXECUTION_FIELDS)}
        body["execution"]["status"] = (ex.status or event.status).value
        for name in ("message", "response", "error"):
            cut = _cut(getattr(ex, name))
            if cut is not None:
                body["execution"][name] = cut
        body["execution"]["has_error"] = ex.error is not None or event.status is Status.FAILED
        if ex.tool_calls is not None:
            body["execution"]["tool_call_count"] = len(ex.tool_calls)
        return body
    assert event.component is not None
    comp = event.component
    component = _pick(comp, _COMPONENT_FIELDS)
    component["status"] = event.status.value
    if comp.error is not None:
        component["error"] = _cut(comp.error)
    return {
        "execution": {"id": comp.execution_id, "agent_name": event.agent},
        "component": component,
    }


def meta_of(event: Event) -> EventMeta:
    triggered_by = event.execution.triggered_by if event.execution is not None else None
    return EventMeta(
        org=event.org,
        agent=event.agent,
        status=event.status,
        execution_id=event.execution_id,
        triggered_by=triggered_by,
        is_component=event.type.is_component,
    )


def build_outgoing(seq: int, event: Event) -> Outgoing:
    """Serialize the client message once; every client gets the same bytes."""
    message = {
        "type": event.type.value,
        "seq": seq,
        "event_id": event.event_id,
        "occurred_at": event.occurred_at,
        **summarize(event),
    }
    payload = orjson.dumps(message, option=orjson.OPT_UTC_Z)
    return Outgoing(seq=seq, meta=meta_of(event), payload=payload)


def control_frame(kind: str, **fields: Any) -> bytes:
    """Frames the server itself speaks: `error`, `resync_required`, `hello`."""
    return orjson.dumps({"type": kind, **fields})
