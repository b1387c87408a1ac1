"""Turn one raw JetStream message into an Event, or say why ingest would dead-letter it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared.events import MAX_EVENT_BYTES, Event
from shared.subjects import SubjectError, Subjects

# A JSON escape for NUL: `\u0000` after an even number of backslashes (`\\u0000` is a
# literal backslash followed by the text "u0000", which is fine). Raw NUL bytes are not JSON.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


#: Why an event holding NUL is refused: Postgres text and jsonb cannot store it.
NUL_REFUSED = "strings must not contain NUL (\\u0000)"


def has_nul(data: bytes) -> bool:
    """Whether a JSON body holds a NUL escape (refused, so that its batch stays insertable)."""
    return b"\\u0000" in data and _NUL_ESCAPE.search(data) is not None


def nul_field(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or key) holding NUL in a parsed JSON value, to
    name the field `has_nul` refused; None when there is none."""
    if isinstance(value, str):
        return (path or "event") if "\x00" in value else None
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return where
        found = nul_field(item, where)
        if found is not None:
            return found
    return None


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a message cannot be ingested; `reason` is a short token used in the DLQ subject."""

    reason: str
    detail: str


def describe(error: ValidationError, whole: str = "event") -> str:
    """`field: message; ...` for the first few errors, each field named by its path (`whole`
    when the error is about the input as a whole)."""
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or whole
        message = item["msg"]
        if item["type"] == "value_error":
            # pydantic's "Value error, " before the contract's own words says nothing.
            message = message.removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


#: `Event.model_validate_json` without its Python wrapper (argument checks and forwarding,
#: ~0.4 µs of ingest's per-event CPU): the model's own schema validator, built at import.
_validate_event_json: Callable[[bytes], Event] = Event.__pydantic_validator__.validate_json


def validate(subjects: Subjects, subject: str, data: bytes) -> Event | Rejected:
    """Parse and check one message against the contract and its subject (the trusted part)."""
    if len(data) > MAX_EVENT_BYTES:
        return Rejected("too_large", f"{len(data)} bytes > {MAX_EVENT_BYTES}")
    try:
        where = subjects.parse_event(subject)
    except SubjectError as exc:
        unknown_type = "unknown event type" in str(exc)
        return Rejected("unknown_type" if unknown_type else "bad_subject", str(exc))
    try:
        event = _validate_event_json(data)
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] == "json_invalid":
            return Rejected("not_json", errors[0]["msg"])
        too_long = any(e["type"] == "string_too_long" for e in errors)
        return Rejected("too_large" if too_long else "schema", describe(exc))
    # After parsing: a body that is no JSON at all is `not_json`, whatever text it holds.
    if has_nul(data):
        return Rejected("schema", NUL_REFUSED)
    if event.type is not where.type:
        return Rejected(
            "schema", f"type {event.type.value!r} differs from the subject's {where.type.value!r}"
        )
    if event.component is not None and event.agent_name is None:
        # Component events name no agent; the subject's (trusted) agent token is theirs.
        event = event.model_copy(update={"agent_name": where.agent})
    if event.org != where.org or event.agent != where.agent:
        return Rejected(
            "tenant_mismatch",
            f"event names org {event.org!r} / agent {event.agent!r} "
            f"but was published on {subject!r}",
        )
    return event
