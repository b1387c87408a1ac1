"""List filters of DESIGN.md "HTTP API": parsed and validated from query parameters, no I/O.

A filter never widens silently: a bad value, a repeated single-valued parameter or an unknown
parameter name (a typo like `stauts`) is a `FilterError` naming the field, answered with 422.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.events import KNOWN_TRIGGERS, Status, is_valid_name

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_OFFSET = 100_000
MAX_SEARCH = 200
MAX_VALUES = 50
#: PostgreSQL text cannot hold NUL: a value with one would fail in the database (a 500).
NUL = "\x00"
NUL_MESSAGE = "must not contain NUL characters"
#: The contract keeps any trigger of 1 to 64 characters (unknown ones as sent), and any such
#: value may be filtered on but one holding a comma: a comma separates values
#: (`triggered_by=api,manual`), as documented.
MAX_TRIGGER = 64


class FilterError(ValueError):
    """An invalid query parameter; `field` names it for the 422 answer."""

    def __init__(self, field: str, message: str, *, where: str = "query") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        #: Where the value was sent: "query" (a parameter) or "path" (a segment).
        self.where = where


@dataclass(frozen=True, slots=True)
class ListFilters:
    """What narrows a list of executions. Values within one filter are OR'd, filters AND'd."""

    agent_name: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    triggered_by: tuple[str, ...] = ()
    project: tuple[str, ...] = ()
    workflow: tuple[str, ...] = ()
    start_time: datetime | None = None
    end_time: datetime | None = None
    search: str | None = None

    def __post_init__(self) -> None:
        # Filters built from path segments (workflow and project stats) skip group_params.
        for name in ("agent_name", "status", "triggered_by", "project", "workflow"):
            if any(NUL in value for value in getattr(self, name)):
                raise FilterError(name, NUL_MESSAGE)
        if self.search is not None and NUL in self.search:
            raise FilterError("search", NUL_MESSAGE)

    def fingerprint(self) -> str:
        """Equal for filters that select the same rows, however spelled (value order, repeats
        and the search's case aside): a cursor carries it so that it continues only its own list."""
        canonical = {
            name: sorted(set(values)) if isinstance(values, list) else values
            for name, values in self.applied().items()
        }
        if self.search is not None:
            canonical["search"] = self.search.lower()  # the search ignores case (ILIKE)
        digest = hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS))
        return digest.hexdigest()[:16]

    def applied(self) -> dict[str, Any]:
        """The filters as the response's `filters_applied` reports them (only those set)."""
        out: dict[str, Any] = {}
        for name in ("agent_name", "status", "triggered_by", "project", "workflow"):
            values = getattr(self, name)
            if values:
                out[name] = list(values)
        if self.start_time is not None:
            out["start_time"] = self.start_time.isoformat().replace("+00:00", "Z")
        if self.end_time is not None:
            out["end_time"] = self.end_time.isoformat().replace("+00:00", "Z")
        if self.search is not None:
            out["search"] = self.search
        return out


@dataclass(frozen=True, slots=True)
class Page:
    """Which slice of the list: a keyset cursor or (for compatibility) an offset."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    offset: int = 0


@dataclass(frozen=True, slots=True)
class ListQuery:
    filters: ListFilters = field(default_factory=ListFilters)
    page: Page = field(default_factory=Page)


FILTER_PARAMS = frozenset(
    {
        "agent_name",
        "status",
        "triggered_by",
        "project",
        "workflow",
        "start_time",
        "end_time",
        "search",
    }
)
PAGE_PARAMS = frozenset({"limit", "cursor", "offset"})


def group_params(items: Iterable[tuple[str, str]], allowed: frozenset[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, value in items:
        if key not in allowed:
            raise FilterError(key, f"unknown parameter (allowed: {', '.join(sorted(allowed))})")
        if NUL in value:
            raise FilterError(key, NUL_MESSAGE)
        grouped.setdefault(key, []).append(value)
    return grouped


def single(grouped: Mapping[str, Sequence[str]], name: str) -> str | None:
    """The one value of a single-valued parameter (None when absent); given twice: 422."""
    values = grouped.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise FilterError(name, "may be given only once")
    return values[0]


#: A time whose offset's `+` arrived as a space (`T10:00:00 01:00`).
_PLUS_AS_SPACE = re.compile(r"\d \d{2}(:?\d{2})?$")


def parse_time(name: str, text: str) -> datetime:
    """ISO 8601 date or date-time; a time without offset is taken as UTC."""
    iso = text.strip()
    if iso.endswith(("Z", "z")):  # RFC 3339 allows either case for UTC
        iso = iso[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        message = f"{text!r} is not an ISO 8601 date-time"
        if _PLUS_AS_SPACE.search(iso):
            # `?start_time=...T10:00:00+01:00` sent unencoded: the URL's `+` reads as a space.
            message += " (a '+' offset must be sent as %2B in a URL)"
        raise FilterError(name, message) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if not 1970 <= moment.year <= 2199:
        raise FilterError(name, "must lie between 1970 and 2199")
    return moment.astimezone(UTC)


def parse_int(name: str, text: str | None, *, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise FilterError(name, f"{text!r} is not an integer") from None
    if not low <= value <= high:
        raise FilterError(name, f"must be between {low} and {high}")
    return value


def _names(name: str, values: Sequence[str]) -> tuple[str, ...]:
    for value in values:
        if not is_valid_name(value):
            raise FilterError(name, f"{value!r} must match [A-Za-z0-9_-]{{1,64}}")
    return tuple(dict.fromkeys(values))


def _statuses(values: Sequence[str]) -> tuple[str, ...]:
    allowed = {s.value for s in Status}
    for value in values:
        if value not in allowed:
            raise FilterError("status", f"{value!r} is not one of {', '.join(sorted(allowed))}")
    return tuple(dict.fromkeys(values))


def _triggers(values: Sequence[str]) -> tuple[str, ...]:
    for value in values:
        if not 1 <= len(value) <= MAX_TRIGGER:
            raise FilterError(
                "triggered_by", f"{value!r} is not a trigger (1 to {MAX_TRIGGER} characters)"
            )
    return tuple(dict.fromkeys(values))


def _idents(name: str, values: Sequence[str]) -> tuple[str, ...]:
    for value in values:
        if not 1 <= len(value) <= 200:
            raise FilterError(name, "each value must have 1 to 200 characters")
    return tuple(dict.fromkeys(values))


def _split(values: Sequence[str]) -> list[str]:
    # Names and enums hold no commas, so `status=failed,running` reads as two values.
    return [part for value in values for part in value.split(",")]


def parse_filters(grouped: Mapping[str, Sequence[str]]) -> ListFilters:
    """Validate the filter parameters (already grouped by name)."""
    grouped = {
        k: _split(v) if k in {"agent_name", "status", "triggered_by"} else list(v)
        for k, v in grouped.items()
    }
    for name, values in grouped.items():
        if len(values) > MAX_VALUES:
            raise FilterError(name, f"at most {MAX_VALUES} values")
    start_text = single(grouped, "start_time")
    end_text = single(grouped, "end_time")
    start = parse_time("start_time", start_text) if start_text is not None else None
    end = parse_time("end_time", end_text) if end_text is not None else None
    if start is not None and end is not None and end < start:
        raise FilterError("end_time", "must not be before start_time")
    search = single(grouped, "search")
    if search is not None:
        search = search.strip()
        if not search:  # dropping it would silently list everything
            raise FilterError("search", "must not be blank")
    if search is not None and len(search) > MAX_SEARCH:
        raise FilterError("search", f"at most {MAX_SEARCH} characters")
    return ListFilters(
        agent_name=_names("agent_name", grouped.get("agent_name", ())),
        status=_statuses(grouped.get("status", ())),
        triggered_by=_triggers(grouped.get("triggered_by", ())),
        project=_idents("project", grouped.get("project", ())),
        workflow=_idents("workflow", grouped.get("workflow", ())),
        start_time=start,
        end_time=end,
        search=search,
    )


def parse_list_query(
    items: Iterable[tuple[str, str]], *, extra: frozenset[str] = frozenset()
) -> ListQuery:
    """Filters plus paging from raw `(name, value)` pairs; `extra` names are allowed, ignored."""
    grouped = group_params(items, FILTER_PARAMS | PAGE_PARAMS | extra)
    filters = parse_filters({k: v for k, v in grouped.items() if k in FILTER_PARAMS})
    limit = parse_int(
        "limit", single(grouped, "limit"), default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT
    )
    offset = parse_int("offset", single(grouped, "offset"), default=0, low=0, high=MAX_OFFSET)
    cursor = single(grouped, "cursor")
    if cursor == "":
        # A client whose cursor went missing would silently start over from the first page.
        raise FilterError("cursor", "is empty (leave it out for the first page)")
    if cursor is not None and offset:
        raise FilterError("offset", "cannot be combined with cursor")
    return ListQuery(filters=filters, page=Page(limit=limit, cursor=cursor, offset=offset))


def parse_agent_list_query(name: str, items: Iterable[tuple[str, str]]) -> ListQuery:
    """The per-agent list's query: `name` (a path segment) is one agent name, never a list."""
    items = list(items)
    if any(key == "agent_name" for key, _ in items):
        raise FilterError("agent_name", "the agent is given in the path")
    try:
        (agent,) = _names("agent_name", [name])
    except FilterError as exc:
        raise FilterError("name", exc.message, where="path") from None
    query = parse_list_query(items)
    return ListQuery(filters=replace(query.filters, agent_name=(agent,)), page=query.page)


def parse_filter_items(
    items: Iterable[tuple[str, str]], *, extra: frozenset[str] = frozenset()
) -> tuple[ListFilters, dict[str, list[str]]]:
    """Filters alone (export); returns the `extra` parameters too, grouped."""
    grouped = group_params(items, FILTER_PARAMS | extra)
    filters = parse_filters({k: v for k, v in grouped.items() if k in FILTER_PARAMS})
    return filters, {k: v for k, v in grouped.items() if k in extra}


def escape_like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern (backslash is Postgres's default escape)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_pattern(text: str) -> str:
    return f"%{escape_like(text)}%"


def other_triggers() -> list[str]:
    """Triggers that stand for themselves; everything else (and none) counts as "other"."""
    return sorted(KNOWN_TRIGGERS)
