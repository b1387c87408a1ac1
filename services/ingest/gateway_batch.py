"""Pure logic of the HTTP gateway: split a body into events and check each against the
contract, naming the failing index and field. No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from shared.events import MAX_EVENT_BYTES, Event

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


@dataclass(frozen=True, slots=True)
class FieldError:
    index: int
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


@dataclass(slots=True)
class Checked:
    """A batch after checking: its events (when all are good) or why it is refused."""

    events: list[tuple[Event, dict[str, Any]]] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)
    #: Indexes of events naming an org other than the key's (403, not 422).
    foreign: list[FieldError] = field(default_factory=list)


def _ndjson(body: bytes) -> tuple[list[Any], list[FieldError]]:
    items: list[Any] = []
    errors: list[FieldError] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            errors.append(FieldError(len(items), "event", f"not JSON: {exc}"))
            items.append(None)
    return items, errors


def split_body(body: bytes, content_type: str) -> tuple[list[Any], list[FieldError]]:
    """One event, a JSON array, or NDJSON (by content type, or when JSON fails line-wise)."""
    if content_type.split(";")[0].strip().lower() in NDJSON_TYPES:
        items, errors = _ndjson(body)
    else:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if len([ln for ln in body.splitlines() if ln.strip()]) > 1:
                items, errors = _ndjson(body)
            else:
                return [], [FieldError(0, "body", f"not JSON: {exc}")]
        else:
            items, errors = (parsed if isinstance(parsed, list) else [parsed]), []
    if not items and not errors:
        errors.append(FieldError(0, "body", "no events in the request"))
    return items, errors


def _loc(parts: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in parts) or "event"


def check_event(index: int, raw: Any, org: str) -> tuple[Event | None, list[FieldError]]:
    """Validate one event for the key's org; the org may be left out (the key decides it)."""
    if not isinstance(raw, dict):
        return None, [FieldError(index, "event", "must be a JSON object")]
    if len(orjson.dumps(raw)) > MAX_EVENT_BYTES:
        return None, [FieldError(index, "event", f"larger than {MAX_EVENT_BYTES} bytes")]
    raw.setdefault("org", org)
    errors: list[FieldError] = []
    if str(raw.get("type", "")).startswith("component_") and "agent_name" not in raw:
        errors.append(
            FieldError(index, "agent_name", "component events name the agent that ran the step")
        )
    try:
        event = Event.model_validate(raw)
    except ValidationError as exc:
        errors += [FieldError(index, _loc(e["loc"]), e["msg"]) for e in exc.errors()]
        return None, errors
    return (None if errors else event), errors


def check_batch(items: list[Any], org: str) -> Checked:
    checked = Checked()
    for index, raw in enumerate(items):
        if isinstance(raw, dict) and "org" in raw and raw["org"] != org:
            checked.foreign.append(
                FieldError(index, "org", f"this key publishes for org {org!r} only")
            )
            continue
        event, errors = check_event(index, raw, org)
        checked.errors += errors
        if event is not None:
            checked.events.append((event, raw))
    return checked
