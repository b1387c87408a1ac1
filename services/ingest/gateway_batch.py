"""Pure logic of the HTTP gateway: split a body into events and check each against the
contract, naming the failing index and field. No I/O.

A body is split only as far as the request's event limit: past it the request is refused
(`TooManyEventsError`) without parsing the rest, so that 8 MiB of one-byte lines or of `{}`
costs a thousand events' work, not millions.

An event passes only if the bytes the gateway will publish pass ingest's own rules (the
contract model, the size limit and `shared.validation.has_nul`), so nothing answered 202 is
dead-lettered for its content. orjson reads an integer past 64 bits as a float; so that such
a number is refused (as ingest refuses it) rather than published rounded, a body holding a
long run of digits is read again with the standard library, which keeps integers exact.
Two events of a batch with one `event_id` must be the same event: JetStream keeps only the
first of them (`Nats-Msg-Id`), so a different second one would be lost. They are compared by
what they mean (their checked values), not their bytes: the same event with its keys in
another order is a retry, not a conflict.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from services.ingest.json_depth import deepest
from shared.events import MAX_EVENT_BYTES, Event, is_valid_name
from shared.subjects import Subjects
from shared.validation import NUL_REFUSED, has_nul, nul_field

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")

#: A non-blank NDJSON line, from its first non-blank character (found without splitting the
#: whole body into lines).
_LINE = re.compile(rb"\S[^\r\n]*")
#: Where a JSON array's items begin.
_ARRAY_START = re.compile(rb"[ \t\r\n]*\[")
_STRING = rb'"(?:[^"\\]++|\\.)*+"'


#: Digits enough for an integer past 64 bits (-2**63 and 2**64 - 1 have 19 and 20 digits).
_LONG_DIGITS = re.compile(rb"\d{19}")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _exact(data: bytes, parsed: Any) -> Any:
    """`parsed` (orjson's reading of `data`), with integers past 64 bits kept as integers
    rather than floats, so that the check refuses them. Only bytes orjson read come here, so
    the standard library reads them too, but for nesting past Python's recursion limit."""
    if _LONG_DIGITS.search(data) is None:
        return parsed
    try:
        return json.loads(data)
    except RecursionError:  # too deep to publish anyway: refused for its depth
        return parsed


def _big_integer(value: Any) -> tuple[str | int, ...] | None:
    """The path to the first integer past 64 bits in `value`, or None. Linear in its size,
    without recursion: each node keeps its parent's place, and one path is built at the end."""
    # (parent's index in `seen`, key there) of each node visited
    seen: list[tuple[int, str | int]] = []
    stack: list[tuple[Any, int, str | int]] = [(value, -1, "")]
    while stack:
        node, parent, key = stack.pop()
        if isinstance(node, dict | list):
            seen.append((parent, key))
            here = len(seen) - 1
            children = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend((child, here, k) for k, child in reversed(list(children)))
        elif type(node) is int and not _INT_MIN <= node <= _INT_MAX:
            path = [key]
            while parent > 0:
                parent, key = seen[parent]
                path.append(key)
            return tuple(reversed(path)) if parent == 0 else ()
    return None


def _nesting(levels: int) -> bytes:
    """A pattern for an object or list nested at most `levels` deep, skipped in one match."""
    pattern = rb"(?!)"
    for _ in range(levels):
        pattern = rb"[\[{](?:[^\"\[\]{}]++|" + _STRING + rb"|" + pattern + rb")*+[\]}]"
    return pattern


#: What a match skips whole: an event's envelope, its body, tool calls, their arguments.
_SHALLOW = _nesting(5)
#: The next `[`, `]`, `{`, `}` or `,` at an array's top level (strings, scalars and shallow
#: items skipped).
_NEXT_AT_TOP = re.compile(
    rb"(?:[^\"\[\]{},]++|" + _STRING + rb"|" + _SHALLOW + rb")*+([\[\]{},])", re.DOTALL
)
#: The next bracket inside an item deeper than that (commas, strings, scalars and shallow
#: values skipped).
_NEXT_INSIDE = re.compile(
    rb"(?:[^\"\[\]{}]++|" + _STRING + rb"|" + _SHALLOW + rb")*+([\[\]{}])", re.DOTALL
)
#: Steps (a top-level comma, or a bracket deeper than `_SHALLOW` reaches) `_more_items_than`
#: takes before it gives up; a thousand events take one each, unless nested past five levels.
_SCAN_STEPS = 20_000


class TooManyEventsError(ValueError):
    """The body holds more events than the request may; the rest of it was not parsed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} events in one request")
        self.limit = limit


class _Unparsed:
    """Stands for an NDJSON line that is not JSON (already reported as such)."""


_UNPARSED = _Unparsed()


@dataclass(frozen=True, slots=True)
class FieldError:
    index: int
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


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


def _ndjson(body: bytes, limit: int | None) -> tuple[list[Any], list[FieldError]]:
    items: list[Any] = []
    errors: list[FieldError] = []
    for line in _LINE.finditer(body):
        if limit is not None and len(items) == limit:
            raise TooManyEventsError(limit)
        try:
            items.append(_exact(line.group(), orjson.loads(line.group())))
        except orjson.JSONDecodeError as exc:
            errors.append(FieldError(len(items), "event", f"not JSON: {exc}"))
            items.append(_UNPARSED)
    return items, errors


def _more_items_than(body: bytes, limit: int) -> bool:
    """Whether the JSON array `body` holds more than `limit` items, told from its top-level
    commas without building a single item (8 MiB of `{},` is 2.8 million objects). False
    when it cannot tell within `_SCAN_STEPS` (not an array, malformed, or thick with nested
    brackets): the caller then parses the body whole, a cost its size bounds."""
    if body.count(b",") < limit:
        return False
    start = _ARRAY_START.match(body)
    if start is None:
        return False
    position, depth, commas = start.end(), 1, 0
    for _ in range(_SCAN_STEPS):
        found = (_NEXT_AT_TOP if depth == 1 else _NEXT_INSIDE).match(body, position)
        if found is None:
            return False
        position = found.end()
        char = body[position - 1 : position]
        if char == b",":
            commas += 1
            if commas >= limit:
                return True
        elif char in b"[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return False
    return False


def _ndjson_sent_as_json(body: bytes) -> bool:
    """Whether a body that is not one JSON document is NDJSON: two lines or more, the first
    of them JSON of its own (the first line of a pretty-printed document, `{` or `[`, is
    not)."""
    lines = _LINE.finditer(body)
    first = next(lines, None)
    if first is None or next(lines, None) is None:
        return False
    try:
        orjson.loads(first.group())
    except orjson.JSONDecodeError:
        return False
    return True


def _json(body: bytes, limit: int | None) -> tuple[list[Any], list[FieldError]]:
    if limit is not None and _more_items_than(body, limit):
        raise TooManyEventsError(limit)
    try:
        parsed = _exact(body, orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        if _ndjson_sent_as_json(body):
            return _ndjson(body, limit)
        # One JSON document (pretty-printed, say) with a mistake in it: one error, placed
        # in the whole body, not one per line (nor 413 for a long one).
        return [], [FieldError(0, "body", f"not JSON: {exc}")]
    items = parsed if isinstance(parsed, list) else [parsed]
    if limit is not None and len(items) > limit:
        raise TooManyEventsError(limit)
    return items, []


def split_body(
    body: bytes, content_type: str, limit: int | None = None
) -> tuple[list[Any], list[FieldError]]:
    """One event, a JSON array, or NDJSON (by content type, or when JSON fails line-wise).
    Raises TooManyEventsError, having parsed no more than it had to, past `limit` events."""
    if content_type.split(";")[0].strip().lower() in NDJSON_TYPES:
        items, errors = _ndjson(body, limit)
    else:
        items, errors = _json(body, limit)
    if not items and not errors:
        errors.append(FieldError(0, "body", "no events in the request"))
    return items, errors


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
