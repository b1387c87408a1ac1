"""Turns a caller's scope and list filters into a `$n`-parameterised WHERE clause (no I/O).

Every clause starts with `org = $1`, so no statement built here can read another org's rows
even before row-level security checks the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.query.cursor import CursorKey
from services.query.filters import ListFilters, other_triggers, search_pattern


@dataclass(slots=True)
class Where:
    """Conditions AND'd together, and the arguments their placeholders refer to."""

    clauses: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def param(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, clause: str) -> None:
        self.clauses.append(clause)

    def any_of(self, column: str, values: tuple[str, ...] | frozenset[str]) -> None:
        # One value as `=` keeps the (org, column, sort_at) index usable for the order.
        if len(values) == 1:
            (only,) = tuple(values)
            self.add(f"{column} = {self.param(only)}")
        else:
            self.add(f"{column} = ANY({self.param(sorted(values))}::text[])")

    @property
    def sql(self) -> str:
        return " AND ".join(self.clauses)

    def copy(self) -> Where:
        return Where(list(self.clauses), list(self.args))


def scoped(org: str, agents: frozenset[str] | None) -> Where:
    """The org, and the caller's agents unless they see the whole org."""
    where = Where()
    where.add(f"org = {where.param(org)}")
    if agents is not None:
        if not agents:
            where.add("false")
        else:
            where.any_of("agent_name", agents)
    return where


def _triggers(where: Where, values: tuple[str, ...]) -> None:
    known = tuple(v for v in values if v != "other")
    parts = []
    if known:
        if len(known) == 1:
            parts.append(f"triggered_by = {where.param(known[0])}")
        else:
            parts.append(f"triggered_by = ANY({where.param(list(known))}::text[])")
    if "other" in values:
        parts.append(
            f"(triggered_by IS NULL OR triggered_by <> ALL({where.param(other_triggers())}"
            "::text[]))"
        )
    where.add(parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")")


def search_agents(
    scope: frozenset[str] | None, agent_filter: tuple[str, ...]
) -> frozenset[str] | None:
    """The agents whose rows decide whether a search term is common (None: the whole org):
    never more than the caller may see, so nothing they are shown depends on hidden rows."""
    if not agent_filter:
        return scope
    wanted = frozenset(agent_filter)
    return wanted if scope is None else wanted & scope


def filtered(org: str, agents: frozenset[str] | None, filters: ListFilters) -> Where:
    """Scope plus every filter; times bound `sort_at` (started, else first seen), half-open."""
    where = scoped(org, agents)
    if filters.agent_name:
        where.any_of("agent_name", filters.agent_name)
    if filters.status:
        where.any_of("status", filters.status)
    if filters.triggered_by:
        _triggers(where, filters.triggered_by)
    if filters.project:
        where.any_of("project", filters.project)
    if filters.workflow:
        where.any_of("workflow", filters.workflow)
    if filters.start_time is not None:
        where.add(f"sort_at >= {where.param(filters.start_time)}")
    if filters.end_time is not None:
        where.add(f"sort_at < {where.param(filters.end_time)}")
    if filters.search is not None:
        pattern = where.param(search_pattern(filters.search))
        where.add(f"(message ILIKE {pattern} OR response ILIKE {pattern})")
    return where


def among(where: Where, ids: list[str]) -> Where:
    """Only the rows whose id is in `ids` (search candidates: `id = ANY` is leakproof, so under
    row-level security the primary key serves it, before the ILIKE rechecks each row)."""
    out = where.copy()
    out.add(f"id = ANY({out.param(ids)}::text[])")
    return out


def after(where: Where, key: CursorKey) -> Where:
    """Rows strictly after `key` in the list order `(sort_at DESC, id DESC)`."""
    out = where.copy()
    sort_at: datetime = key.sort_at
    out.add(f"(sort_at, id) < ({out.param(sort_at)}, {out.param(key.id)})")
    return out
