"""Pure logic of the HTTP gateway: check each event of a body (split by `gateway_body`)
against the contract, naming the failing index and field. No I/O.

An event passes only if the bytes the gateway will publish pass ingest's own rules (the
contract model, the size limit and `shared.validation.has_nul`), so nothing answered 202 is
dead-lettered for its content (but for names near their limits whose list-index entry passes
PostgreSQL's, see docs/publishing.md); an integer past 64 bits (kept exact by `gateway_body`) is
refused, as ingest refuses it, rather than published rounded.
Two events of a batch with one `event_id` must be the same event: JetStream keeps only the
first of them (`Nats-Msg-Id`), so a different second one would be lost. They are compared by
what they mean (their checked values), not their bytes: the same event with its keys in
another order is a retry, not a conflict.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from services.ingest.gateway_body import _UNPARSED, FieldError
from services.ingest.json_depth import deepest
from shared.events import MAX_EVENT_BYTES, Event, is_valid_name
from shared.subjects import Subjects
from shared.validation import NUL_REFUSED, has_nul, nul_field

#: The integers ingest takes: 64 bits, signed or not.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _big_integer(value: Any) -> tuple[str | int, ...] | None:
    """The path to the first integer past 64 bits in `value`, or None. Linear in its size,
    without recursion, and holding no more than one iterator and key per level: the path is
    the keys of the levels open when it is found."""
    if type(value) is int:
        return () if not _INT_MIN <= value <= _INT_MAX else None
    if not isinstance(value, dict | list):
        return None
    levels: list[Iterator[tuple[str | int, Any]]] = [_children(value)]
    keys: list[str | int] = []
    while levels:
        step = next(levels[-1], None)
        if step is None:
            levels.pop()
            if keys:
                keys.pop()
            continue
        key, node = step
        if isinstance(node, dict | list):
            levels.append(_children(node))
            keys.append(key)
        elif type(node) is int and not _INT_MIN <= node <= _INT_MAX:
            return (*keys, key)
    return None


def _children(node: dict[str, Any] | list[Any]) -> Iterator[tuple[str | int, Any]]:
    return iter(node.items()) if isinstance(node, dict) else enumerate(node)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One checked event as it will be published: subject and exact payload."""

    event: Event
    subject: str
    payload: bytes


@dataclass(slots=True)
class Checked:
    """A batch after checking: its events (when all are good) or why it is refused."""

    events: list[Outgoing] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)
    #: Indexes of events naming an org other than the key's (403, not 422).
    foreign: list[FieldError] = field(default_factory=list)


def _loc(parts: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in parts) or "event"


#: What pydantic puts before the message of a `ValueError` raised by a validator.
_VALUE_ERROR = "Value error, "


def _message(error: ErrorDetails) -> str:
    """pydantic's message for one error, without its "Value error, " prefix: the client
    reads the contract's own words ("execution.status 'success' contradicts ...")."""
    if error["type"] == "value_error":
        return error["msg"].removeprefix(_VALUE_ERROR)
    return error["msg"]


def _meaning(event: Event) -> bytes:
    """The fields an event sets, checked, in one canonical form: equal for the same event
    however its keys were ordered or its strings escaped. Conservative where ingest could
    tell a difference (a conflict is refused, never lost): a field sent as `null` is not one
    left out (ingest's merge reads the fields set), a time in another zone is not the same
    time, and unlike Python's `==` it tells `1` from `1.0` or `true` in free-form JSON."""
    dumped = event.model_dump(mode="json", exclude_unset=True)
    return orjson.dumps(dumped, option=orjson.OPT_SORT_KEYS)


#: The envelope's fields that hold the contract's own fields (`execution.tool_calls`).
_BODIES = frozenset({"execution", "component"})


def _too_deep(index: int, raw: dict[str, Any]) -> FieldError:
    """Name the contract field holding the deepest nesting (`execution.tool_calls`, `source`),
    not the path down into its own JSON."""
    depth, path = deepest(raw)
    head = path[:2] if path and path[0] in _BODIES else path[:1]
    keys = tuple(takewhile(lambda part: isinstance(part, str), head))
    return FieldError(index, _loc(keys), f"JSON nested {depth} levels deep, too deep to ingest")


def _is_too_deep(error: ValidationError) -> bool:
    """Whether pydantic refused the payload for its nesting (it reads fewer levels than orjson)."""
    return any(
        e["type"] == "json_invalid" and "recursion limit" in e["msg"] for e in error.errors()
    )


def _whole_event_field(raw: dict[str, Any]) -> str:
    """The field a rule of the whole event (pydantic's empty `loc`) is about, by that rule of
    `Event`: the body its `type` needs, the body it must not carry, or an `execution.status`
    contradicting it; "event" for any other."""
    component = str(raw.get("type", "")).startswith("component_")
    body, other = ("component", "execution") if component else ("execution", "component")
    if raw.get(body) is None:
        return body
    if raw.get(other) is not None:
        return other
    execution = raw.get("execution")
    if not component and isinstance(execution, dict) and execution.get("status") is not None:
        return "execution.status"
    return "event"


def check_event(
    index: int, raw: Any, org: str, subjects: Subjects
) -> tuple[Outgoing | None, list[FieldError]]:
    """Validate one event for the key's org; the org may be left out (the key decides it)."""
    if not isinstance(raw, dict):
        return None, [FieldError(index, "event", "must be a JSON object")]
    raw.setdefault("org", org)
    # Measured and checked as published: with the org the key added.
    try:
        payload = orjson.dumps(raw)
    except orjson.JSONEncodeError as exc:
        # orjson reads 1024 levels but writes 254; from what it read, depth is all that fails,
        # but for an integer past 64 bits (`_exact`), which ingest refuses too.
        big = _big_integer(raw) if "64-bit" in str(exc) else None
        if big is not None:
            return None, [FieldError(index, _loc(big), "integers must fit 64 bits")]
        return None, [_too_deep(index, raw)]
    if len(payload) > MAX_EVENT_BYTES:
        return None, [
            FieldError(index, "event", f"{len(payload)} bytes as published > {MAX_EVENT_BYTES}")
        ]
    errors: list[FieldError] = []
    # `null` too: the model allows it (over NATS the subject names the agent), the gateway not.
    if str(raw.get("type", "")).startswith("component_") and raw.get("agent_name") is None:
        errors.append(
            FieldError(index, "agent_name", "component events name the agent that ran the step")
        )
    try:
        event = Event.model_validate_json(payload)
    except ValidationError as exc:
        if _is_too_deep(exc):
            return None, [*errors, _too_deep(index, raw)]
        errors += [
            FieldError(index, _loc(e["loc"]) if e["loc"] else _whole_event_field(raw), _message(e))
            for e in exc.errors()
        ]
        return None, errors
    if errors:
        return None, errors
    if has_nul(payload):
        return None, [FieldError(index, nul_field(raw) or "event", NUL_REFUSED)]
    return Outgoing(event, subjects.event(event.org, event.agent, event.type), payload), []


def check_batch(items: list[Any], org: str, subjects: Subjects) -> Checked:
    *_, checked = check_batch_in_steps(items, org, subjects, step=max(len(items), 1))
    return checked


def check_batch_in_steps(
    items: list[Any], org: str, subjects: Subjects, step: int
) -> Iterator[Checked]:
    """`check_batch`, yielding what is checked so far after every `step` items (and once at
    the end: the result), so that a caller on an event loop can let other work run between
    steps instead of holding the loop for the whole batch."""
    checked = Checked()
    # event_id -> (index, event) of its first event; the org is the key's for all of them.
    first: dict[str, tuple[int, Outgoing]] = {}
    for index, raw in enumerate(items):
        if index and index % step == 0:
            yield checked
        if raw is _UNPARSED:
            continue  # reported by `split_body` ("not JSON")
        claimed = raw.get("org") if isinstance(raw, dict) else None
        # Only a real org name is "another org"; null or a malformed name is invalid (422).
        if isinstance(claimed, str) and is_valid_name(claimed) and claimed != org:
            checked.foreign.append(
                FieldError(index, "org", f"this key publishes for org {org!r} only")
            )
            continue
        outgoing, errors = check_event(index, raw, org, subjects)
        checked.errors += errors
        if outgoing is None:
            continue
        earlier, kept = first.setdefault(outgoing.event.event_id, (index, outgoing))
        if kept.payload != outgoing.payload and _meaning(kept.event) != _meaning(outgoing.event):
            checked.errors.append(
                FieldError(
                    index,
                    "event_id",
                    f"event {earlier} has this event_id with other content; only one would "
                    "be kept (give each event its own event_id, or send the same event)",
                )
            )
            continue
        # A repeat of the same event is a retry: published, and answered as a duplicate.
        checked.events.append(outgoing)
    yield checked
