"""Turn one raw JetStream message into an Event, or say why it belongs in the DLQ."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from shared.events import MAX_EVENT_BYTES, Event
from shared.subjects import SubjectError, Subjects


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a message cannot be ingested; `reason` is a short token used in the DLQ subject."""

    reason: str
    detail: str


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "event"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def validate(subjects: Subjects, subject: str, data: bytes) -> Event | Rejected:
    """Parse and check one message against the contract and its subject (the trusted part)."""
    if len(data) > MAX_EVENT_BYTES:
        return Rejected("too_large", f"{len(data)} bytes > {MAX_EVENT_BYTES}")
    try:
        where = subjects.parse_event(subject)
    except SubjectError as exc:
        unknown_type = "unknown event type" in str(exc)
        return Rejected("unknown_type" if unknown_type else "bad_subject", str(exc))
    if b"\\u0000" in data:
        # Postgres text and jsonb cannot hold NUL; refusing here keeps the batch insertable.
        return Rejected("schema", "strings must not contain NUL (\\u0000)")
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return Rejected("not_json", str(exc))
    if not isinstance(raw, dict):
        return Rejected("schema", "event must be a JSON object")
    if raw.get("type") != where.type.value:
        return Rejected(
            "schema", f"type {raw.get('type')!r} differs from the subject's {where.type.value!r}"
        )
    if where.type.is_component and "agent_name" not in raw:
        raw["agent_name"] = where.agent
    try:
        event = Event.model_validate(raw)
    except ValidationError as exc:
        too_long = any(e["type"] == "string_too_long" for e in exc.errors())
        return Rejected("too_large" if too_long else "schema", _describe(exc))
    if event.org != where.org or event.agent != where.agent:
        return Rejected(
            "tenant_mismatch",
            f"event names org {event.org!r} / agent {event.agent!r} "
            f"but was published on {subject!r}",
        )
    return event
