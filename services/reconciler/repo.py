"""The reconciler's SQL: it only reads executions (ingest is their one writer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.reconciler.rules import Row
from shared.events import Status


@dataclass(frozen=True, slots=True)
class Filters:
    org: str | None = None
    agent: str | None = None
    engine: str | None = None


# The status register's version is "<rank><16-digit µs since the epoch of occurred_at><hash>"
# (services.ingest.merge.event_version): the time is when the status's event happened.
_ROW_COLUMNS = (
    "org, id, agent_name, status, engine, external_id, started_at, first_seen_at, completed_at,"
    " CASE WHEN versions->>'status' ~ '^[0-9]{17}'"
    " THEN to_timestamp(substr(versions->>'status', 2, 16)::numeric / 1000000) END AS status_at,"
    " versions->>'status' AS status_version"
)
_FILTER = """
    ($1::text IS NULL OR org = $1)
    AND ($2::text IS NULL OR agent_name = $2)
    AND ($3::text IS NULL OR engine = $3)
"""

OPEN_ROWS = f"""
SELECT {_ROW_COLUMNS}
FROM executions
WHERE status IN ('pending', 'running')
  AND engine = ANY($4::text[])
  AND {_FILTER}
ORDER BY org, sort_at, id
"""

RUNNING_ROWS = f"""
SELECT {_ROW_COLUMNS}
FROM executions
WHERE status = 'running' AND {_FILTER}
ORDER BY sort_at, org, id
"""

ROWS_BY_EXTERNAL_IDS = f"""
SELECT {_ROW_COLUMNS}
FROM executions
WHERE engine = $1 AND external_id = ANY($2::text[])
"""

ROW_BY_ID = f"SELECT {_ROW_COLUMNS} FROM executions WHERE org = $1 AND id = $2"

EXISTING = """
SELECT e.org, e.id
FROM unnest($1::text[], $2::text[]) AS t(org, id)
JOIN executions e ON e.org = t.org AND e.id = t.id
"""

# Steps are stale when the execution changed after its last step was written (or none was).
FINISHED_WITH_STALE_STEPS = f"""
SELECT {_ROW_COLUMNS}, e.updated_at
FROM executions e
WHERE e.engine = $1
  AND e.external_id IS NOT NULL
  AND e.status IN ('success', 'failed', 'cancelled')
  AND e.updated_at >= $2
  AND coalesce(
      (SELECT max(c.updated_at) FROM component_executions c
       WHERE c.org = e.org AND c.execution_id = e.id),
      '-infinity'
  ) < e.updated_at
  AND ($4::timestamptz IS NULL OR (e.updated_at, e.org, e.id) < ($4, $5::text, $6::text))
ORDER BY e.updated_at DESC, e.org DESC, e.id DESC
LIMIT $3
"""


def _row(record: asyncpg.Record) -> Row:
    return Row(
        org=record["org"],
        id=record["id"],
        agent_name=record["agent_name"],
        status=Status(record["status"]),
        engine=record["engine"],
        external_id=record["external_id"],
        started_at=record["started_at"],
        first_seen_at=record["first_seen_at"],
        completed_at=record["completed_at"],
        status_at=record["status_at"],
        status_version=record["status_version"],
    )


def _filter_args(filters: Filters) -> tuple[str | None, str | None, str | None]:
    return filters.org, filters.agent, filters.engine


async def open_rows(
    conn: asyncpg.Connection, engines: Sequence[str], filters: Filters
) -> list[Row]:
    """Pending and running executions that name one of our engines."""
    records = await conn.fetch(OPEN_ROWS, *_filter_args(filters), list(engines))
    return [_row(r) for r in records]


async def running_rows(conn: asyncpg.Connection, filters: Filters) -> list[Row]:
    """Every running execution, any engine or none (oldest first)."""
    return [_row(r) for r in await conn.fetch(RUNNING_ROWS, *_filter_args(filters))]


async def rows_by_external_ids(
    conn: asyncpg.Connection, engine: str, external_ids: Sequence[str]
) -> list[Row]:
    if not external_ids:
        return []
    records = await conn.fetch(ROWS_BY_EXTERNAL_IDS, engine, list(external_ids))
    return [_row(r) for r in records]


async def existing_executions(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which of the (org, execution id) pairs have a row."""
    if not keys:
        return set()
    records = await conn.fetch(EXISTING, [k[0] for k in keys], [k[1] for k in keys])
    return {(r["org"], r["id"]) for r in records}


async def row_by_id(conn: asyncpg.Connection, org: str, execution_id: str) -> Row | None:
    record = await conn.fetchrow(ROW_BY_ID, org, execution_id)
    return None if record is None else _row(record)


StalePage = list[tuple[Row, datetime]]
#: Rows per page of `finished_with_stale_steps`.
STALE_PAGE = 200


async def finished_with_stale_steps(
    conn: asyncpg.Connection,
    engine: str,
    since: datetime,
    limit: int = STALE_PAGE,
    after: tuple[datetime, str, str] | None = None,
) -> StalePage:
    """Recently finished runs of an engine whose steps are missing or older than the run's
    last change, with that change's time; newest change first, from after `after` (the last
    page's last (updated_at, org, id))."""
    updated_at, org, execution_id = after or (None, None, None)
    records = await conn.fetch(
        FINISHED_WITH_STALE_STEPS, engine, since, limit, updated_at, org, execution_id
    )
    return [(_row(r), r["updated_at"]) for r in records]
