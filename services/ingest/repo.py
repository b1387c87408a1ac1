"""SQL of the ingest service: set-based reads and writes of one batch, inside its transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from services.ingest.merge import (
    COMPONENT_FIELDS,
    EXECUTION_FIELDS,
    FINISH_FIELDS,
    ComponentKey,
    ExecutionKey,
    RowState,
)

_EXECUTION_TYPES: dict[str, str] = {
    "project": "text",
    "workflow": "text",
    "schedule_id": "text",
    "status": "text",
    "triggered_by": "text",
    "message": "text",
    "response": "text",
    "error": "text",
    "error_type": "text",
    "started_at": "timestamptz",
    "completed_at": "timestamptz",
    "duration_ms": "int8",
    "context_used": "int8",
    "context_max": "int8",
    "cost": "float8",
    "tokens_in": "int8",
    "tokens_out": "int8",
    "tool_calls": "jsonb",
    "execution_log": "text",
    "engine": "text",
    "external_id": "text",
    "parent_execution_id": "text",
}
_COMPONENT_TYPES: dict[str, str] = {
    "name": "text",
    "status": "text",
    "retry_policy": "text",
    "max_attempts": "int4",
    "input": "jsonb",
    "output": "jsonb",
    "error": "text",
    "error_type": "text",
    "started_at": "timestamptz",
    "completed_at": "timestamptz",
}
assert tuple(_EXECUTION_TYPES) == EXECUTION_FIELDS
assert tuple(_COMPONENT_TYPES) == COMPONENT_FIELDS

_EXECUTION_KEY = {"org": "text", "id": "text"}
_COMPONENT_KEY = {"org": "text", "execution_id": "text", "node_id": "text", "attempt": "int4"}


def _array_type(pg_type: str) -> str:
    # jsonb travels as text and is cast on the server, so no per-element codec runs.
    return "text[]" if pg_type == "jsonb" else f"{pg_type}[]"


def _select_expr(name: str, pg_type: str) -> str:
    return f"u.{name}::jsonb" if pg_type == "jsonb" else f"u.{name}"


def _update_sql(table: str, key: dict[str, str], fields: dict[str, str]) -> str:
    columns = {**key, "mask": "int8", **fields, "first_seen_at": "timestamptz", "versions": "jsonb"}
    names = list(columns)
    params = ", ".join(f"${i}::{_array_type(t)}" for i, t in enumerate(columns.values(), 1))
    sets = [
        f"{name} = CASE WHEN u.mask & {1 << bit} <> 0 THEN {_select_expr(name, pg_type)} "
        f"ELSE t.{name} END"
        for bit, (name, pg_type) in enumerate(fields.items())
    ]
    sets += [
        "first_seen_at = LEAST(t.first_seen_at, u.first_seen_at)",
        "versions = u.versions::jsonb",
        "updated_at = now()",
    ]
    match = " AND ".join(f"t.{k} = u.{k}" for k in key)
    return (
        f"UPDATE {table} AS t SET {', '.join(sets)} "
        f"FROM unnest({params}) AS u({', '.join(names)}) WHERE {match}"
    )


def _fetch_sql(table: str, key: dict[str, str], extra: tuple[str, ...] = ()) -> str:
    names = list(key)
    params = ", ".join(f"${i}::{t}[]" for i, t in enumerate(key.values(), 1))
    match = " AND ".join(f"t.{k} = k.{k}" for k in key)
    cols = ", ".join(f"t.{k}" for k in (*key, *extra))
    return (
        f"SELECT {cols}, t.agent_name, t.first_seen_at, t.versions FROM {table} AS t "
        f"JOIN unnest({params}) AS k({', '.join(names)}) ON {match}"
    )


UPDATE_EXECUTIONS = _update_sql("executions", _EXECUTION_KEY, _EXECUTION_TYPES)
FETCH_EXECUTIONS = _fetch_sql("executions", _EXECUTION_KEY, FINISH_FIELDS)
UPDATE_COMPONENTS = _update_sql("component_executions", _COMPONENT_KEY, _COMPONENT_TYPES)
FETCH_COMPONENTS = _fetch_sql("component_executions", _COMPONENT_KEY)

# Who wrote the steps of executions that have no row of their own yet (the first owner wins).
STEP_OWNERS = """
SELECT DISTINCT ON (c.org, c.execution_id) c.org, c.execution_id, c.agent_name
FROM component_executions AS c
JOIN unnest($1::text[], $2::text[]) AS k(org, execution_id)
  ON c.org = k.org AND c.execution_id = k.execution_id
ORDER BY c.org, c.execution_id, c.first_seen_at
"""

LOCK_KEYS = "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::int8[]) AS k"

EVENT_COLUMNS = [
    "org",
    "event_id",
    "type",
    "agent_name",
    "execution_id",
    "occurred_at",
    "stream_seq",
]
KNOWN_EVENTS = """
SELECT e.org, e.event_id FROM events AS e
JOIN unnest($1::text[], $2::text[]) AS k(org, event_id)
  ON e.org = k.org AND e.event_id = k.event_id
"""

UPSERT_ORGS = """
INSERT INTO organizations (org) SELECT unnest($1::text[]) ON CONFLICT (org) DO NOTHING
"""

UPSERT_AGENTS = """
INSERT INTO agents (org, name, project, last_seen_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
ON CONFLICT (org, name) DO UPDATE SET
    last_seen_at = GREATEST(agents.last_seen_at, EXCLUDED.last_seen_at),
    project = COALESCE(agents.project, EXCLUDED.project)
"""

UPSERT_PROJECTS = """
INSERT INTO projects (org, name) SELECT * FROM unnest($1::text[], $2::text[])
ON CONFLICT (org, name) DO NOTHING
"""

UPSERT_WORKFLOWS = """
INSERT INTO workflows (org, name, project) SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
ON CONFLICT (org, name) DO NOTHING
"""


def lock_key(org: str, execution_id: str) -> int:
    """A signed 64-bit advisory lock key for one execution (its steps share it)."""
    digest = hashlib.blake2b(f"{org}\x00{execution_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock_executions(conn: asyncpg.Connection, keys: Iterable[ExecutionKey]) -> None:
    """Serialize writers of the same executions (ingest replicas); sorted to avoid deadlock."""
    ordered = sorted({lock_key(org, ex) for org, ex in keys})
    if ordered:
        await conn.fetchval(LOCK_KEYS, ordered)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


EventRow = tuple[str, str, str, str, str, datetime, int | None]


async def _known_events(conn: asyncpg.Connection, rows: Sequence[EventRow]) -> set[tuple[str, str]]:
    if not rows:
        return set()
    known = await conn.fetch(KNOWN_EVENTS, *_columns(rows, 2))
    return {(r["org"], r["event_id"]) for r in known}


class EventsKnownAlready(Exception):
    """Events of rows not stored yet that were recorded before all the same (an event_id
    reused, or its row since deleted by retention); nothing of the batch was recorded."""

    def __init__(self, keys: set[tuple[str, str]]) -> None:
        super().__init__(f"{len(keys)} events of new rows were recorded before")
        self.keys = keys


async def insert_events(
    conn: asyncpg.Connection, rows: Sequence[EventRow], rows_of_new: Sequence[EventRow] = ()
) -> set[tuple[str, str]]:
    """Record events not recorded before and return their (org, event_id) pairs.

    `rows` are looked up first. `rows_of_new` are events of executions and steps not stored
    yet, which are nearly always new too, so they are written without the look-up; if one
    was recorded after all, the write is undone and EventsKnownAlready names them: the caller
    decides again without them (such an event is a duplicate, and claims no execution).

    The caller holds the locks of the events' executions, so no other writer can record the
    same events between the look-up and the COPY.
    """
    seen = await _known_events(conn, rows)
    fresh = [row for row in rows if (row[0], row[1]) not in seen]
    if rows_of_new:
        try:
            async with conn.transaction():  # a savepoint: a conflict undoes only this write
                await conn.copy_records_to_table(
                    "events", records=[*fresh, *rows_of_new], columns=EVENT_COLUMNS
                )
        except asyncpg.UniqueViolationError:
            known = await _known_events(conn, rows_of_new)
            if not known:
                raise
            raise EventsKnownAlready(known) from None
        return {(row[0], row[1]) for row in (*fresh, *rows_of_new)}
    if fresh:
        await conn.copy_records_to_table("events", records=fresh, columns=EVENT_COLUMNS)
    return {(row[0], row[1]) for row in fresh}


def _state_from_record(record: asyncpg.Record, stored: tuple[str, ...] = ()) -> RowState:
    return RowState(
        agent_name=record["agent_name"],
        first_seen_at=record["first_seen_at"],
        versions=dict(record["versions"]),
        is_new=False,
        stored={name: record[name] for name in stored},
    )


async def fetch_executions(
    conn: asyncpg.Connection, keys: Sequence[ExecutionKey]
) -> dict[ExecutionKey, RowState]:
    if not keys:
        return {}
    records = await conn.fetch(FETCH_EXECUTIONS, *_columns(keys, 2))
    return {(r["org"], r["id"]): _state_from_record(r, FINISH_FIELDS) for r in records}


async def fetch_step_owners(
    conn: asyncpg.Connection, keys: Sequence[ExecutionKey]
) -> dict[ExecutionKey, str]:
    """The agent that wrote the first stored step of each execution in `keys`, if any."""
    if not keys:
        return {}
    records = await conn.fetch(STEP_OWNERS, *_columns(keys, 2))
    return {(r["org"], r["execution_id"]): r["agent_name"] for r in records}


async def fetch_components(
    conn: asyncpg.Connection, keys: Sequence[ComponentKey]
) -> dict[ComponentKey, RowState]:
    if not keys:
        return {}
    records = await conn.fetch(FETCH_COMPONENTS, *_columns(keys, 4))
    return {
        (r["org"], r["execution_id"], r["node_id"], r["attempt"]): _state_from_record(r)
        for r in records
    }


class RowsVanished(Exception):
    """Rows read at the start of the batch were gone when it wrote them: retention deleted
    them in between (it takes row locks, not the executions' advisory locks). The batch is
    rolled back and retried; the retry finds them absent and writes them anew."""


def _encode(value: Any, pg_type: str) -> Any:
    if value is None or pg_type != "jsonb":
        return value
    return orjson.dumps(value).decode()


def _versions(state: RowState) -> str:
    return orjson.dumps(state.versions).decode()


async def write_rows(
    conn: asyncpg.Connection,
    states: dict[Any, RowState],
    *,
    components: bool,
) -> int:
    """Insert new rows and update the changed fields of stored ones; return rows written."""
    types = _COMPONENT_TYPES if components else _EXECUTION_TYPES
    key_width = 4 if components else 2
    inserts: list[tuple[Any, ...]] = []
    updates: list[list[Any]] = []
    for key, state in states.items():
        if not state.changed:
            continue
        if state.is_new:
            inserts.append(
                (
                    *key,
                    state.agent_name,
                    *map(state.values.get, types),
                    state.first_seen_at,
                    state.versions,
                )
            )
        else:
            mask = 0
            values = []
            for bit, (name, pg_type) in enumerate(types.items()):
                if name in state.changed:
                    mask |= 1 << bit
                    values.append(_encode(state.values.get(name), pg_type))
                else:
                    values.append(None)
            updates.append([*key, mask, *values, state.first_seen_at, _versions(state)])
    width = key_width + len(types) + 3
    if inserts:
        # New rows are absent (we hold their locks): COPY them, as fast as a bulk load.
        table = "component_executions" if components else "executions"
        key_names = list(_COMPONENT_KEY if components else _EXECUTION_KEY)
        columns = [*key_names, "agent_name", *types, "first_seen_at", "versions"]
        await conn.copy_records_to_table(table, records=inserts, columns=columns)
    if updates:
        sql = UPDATE_COMPONENTS if components else UPDATE_EXECUTIONS
        status = await conn.execute(sql, *_columns(updates, width))
        updated = int(status.rsplit(" ", 1)[-1])
        if updated != len(updates):
            raise RowsVanished(
                f"{len(updates) - updated} of {len(updates)} stored "
                f"{'steps' if components else 'executions'} were deleted while being written"
            )
    return len(inserts) + len(updates)


async def upsert_registry(
    conn: asyncpg.Connection,
    orgs: set[str],
    agents: dict[tuple[str, str], tuple[str | None, datetime]],
    projects: set[tuple[str, str]],
    workflows: dict[tuple[str, str], str | None],
) -> None:
    """Make the orgs, agents, projects and workflows that events mention known."""
    if orgs:
        await conn.execute(UPSERT_ORGS, sorted(orgs))
    if agents:
        rows = sorted((org, name, proj, seen) for (org, name), (proj, seen) in agents.items())
        await conn.execute(UPSERT_AGENTS, *_columns(rows, 4))
    if projects:
        await conn.execute(UPSERT_PROJECTS, *_columns(sorted(projects), 2))
    if workflows:
        wrows = sorted((org, name, proj) for (org, name), proj in workflows.items())
        await conn.execute(UPSERT_WORKFLOWS, *_columns(wrows, 3))
