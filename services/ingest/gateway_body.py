"""Splitting an HTTP gateway body into events: one JSON event, a JSON array of them, or
NDJSON, with each part that is not JSON named by its index. Pure: no I/O, nothing checked
against the contract (that is `gateway_batch`).

A body is split only as far as the request's event limit: past it the request is refused
(`TooManyEventsError`) without parsing the rest, so that 8 MiB of one-byte lines or of `{}`
costs a thousand events' work, not millions. Nor is a body parsed that may hold more than
`MAX_CONTAINERS` arrays and objects or `MAX_VALUES` values (`TooManyValuesError`): inside one
event, 8 MiB of `[],` would be 2.8 million lists, some thirty times the body in memory, and
8 MiB of `7,` with one integer past 64 bits 4 million numbers read twice (`_exact`): 700 MB
and seconds of checking.

orjson reads an integer past 64 bits as a float; so that such a number is refused (as ingest
refuses it) rather than published rounded, a body holding a long run of digits is read again
with the standard library, which keeps integers exact.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import islice
from typing import Any

import orjson

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")

#: A non-blank NDJSON line, from its first non-blank character (found without splitting the
#: whole body into lines).
_LINE = re.compile(rb"\S[^\r\n]*")
#: Where a JSON array's items begin.
_ARRAY_START = re.compile(rb"[ \t\r\n]*\[")
_STRING = rb'"(?:[^"\\]++|\\.)*+"'


#: Digits enough for an integer past 64 bits (-2**63 and 2**64 - 1 have 19 and 20 digits).
_LONG_DIGITS = re.compile(rb"\d{19}")


def _exact(data: bytes) -> Any:
    """`data` read by orjson (raising its JSONDecodeError), with integers past 64 bits kept
    as integers rather than floats, so that the check refuses them: read again by the
    standard library, which reads whatever orjson read but nesting past Python's recursion
    limit. orjson's reading is let go first, so the two are never held at once."""
    parsed = orjson.loads(data)
    if _LONG_DIGITS.search(data) is None:
        return parsed
    del parsed
    try:
        return json.loads(data)
    except RecursionError:  # too deep to publish anyway: refused for its depth
        return orjson.loads(data)


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


#: Arrays and objects a body may hold, counted from above, before parsing, by its `[` and `{`
#: (those inside strings too). Parsed, an empty one costs some 60 to 100 bytes, against the
#: 3 of `[],`: this bounds them to ~20 MB a body. A thousand events with ten tool calls of
#: arguments and results each hold ~30,000.
MAX_CONTAINERS = 200_000
#: Values a body may hold, counted from above by its `[`, `{` and `,` (commas in text too):
#: at most ~140 MB parsed, read again and walked (a body holding an integer past 64 bits),
#: ~2 s of CPU. 8 MiB of events with a 1,536-number embedding each (4 decimals) hold ~1.3
#: million; a thousand events with a thousand numbers each, ~1.04 million.
MAX_VALUES = 1_600_000


class TooManyValuesError(ValueError):
    """The body may hold more JSON values (or arrays and objects) than a request may; it was
    not parsed."""


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


def _ndjson(body: bytes, limit: int | None) -> tuple[list[Any], list[FieldError]]:
    items: list[Any] = []
    errors: list[FieldError] = []
    for line in _LINE.finditer(body):
        if limit is not None and len(items) == limit:
            raise TooManyEventsError(limit)
        try:
            items.append(_exact(line.group()))
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
        parsed = _exact(body)
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


def _check_values(body: bytes) -> None:
    containers = body.count(b"[") + body.count(b"{")
    if containers > MAX_CONTAINERS:
        raise TooManyValuesError(f"more than {MAX_CONTAINERS:,} JSON arrays and objects")
    if containers + body.count(b",") > MAX_VALUES:
        raise TooManyValuesError(f"more than {MAX_VALUES:,} JSON values (counted by commas)")


def split_body(
    body: bytes, content_type: str, limit: int | None = None
) -> tuple[list[Any], list[FieldError]]:
    """One event, a JSON array, or NDJSON (by content type, or when JSON fails line-wise).
    Raises TooManyEventsError, having parsed no more than it had to, past `limit` events,
    and TooManyValuesError, having parsed nothing, past `MAX_CONTAINERS` or `MAX_VALUES`."""
    ndjson = content_type.split(";")[0].strip().lower() in NDJSON_TYPES
    try:
        _check_values(body)
    except TooManyValuesError:
        # Too many events is the plainer reason, where it can be told cheaply.
        if limit is not None and (
            sum(1 for _ in islice(_LINE.finditer(body), limit + 1)) > limit
            if ndjson
            else _more_items_than(body, limit)
        ):
            raise TooManyEventsError(limit) from None
        raise
    if ndjson:
        items, errors = _ndjson(body, limit)
    else:
        items, errors = _json(body, limit)
    if not items and not errors:
        errors.append(FieldError(0, "body", "no events in the request"))
    return items, errors
