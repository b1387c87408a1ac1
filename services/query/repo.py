"""SQL of the query service. Every statement names the org (`$1`) and runs under RLS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.query.stats import Bucket, StatsGroup, TimelineRow
from services.query.where import Where

# Summaries never carry the log, and the message is cut in SQL so big inputs never travel.
SUMMARY_COLUMNS = """id, agent_name, project, workflow, schedule_id, status, triggered_by,
    left(message, 200) AS message, (error IS NOT NULL OR status = 'failed') AS has_error,
    left(error, 200) AS error, error_type, started_at, completed_at, duration_ms, cost,
    tokens_in, tokens_out, context_used, context_max, engine, external_id, parent_execution_id,
    first_seen_at, updated_at, sort_at"""

LIST = """
SELECT e.*, a.display_name AS agent_display_name
FROM (SELECT {columns} FROM executions WHERE {where}
      ORDER BY sort_at DESC, id DESC LIMIT {limit} OFFSET {offset}) AS e
LEFT JOIN agents AS a ON a.org = $1 AND a.name = e.agent_name
ORDER BY e.sort_at DESC, e.id DESC
"""
# A common search term: the ILIKE filters the org's rows walked in list order (the subquery's
# OFFSET 0 keeps it above the ordered scan), so a page is found after page / density rows.
# Under RLS the planner has no statistics for the ILIKE (not leakproof) and, left to itself,
# may read the whole org in a parallel seq scan and sort it (~650 ms at 1M rows).
WALK = """(SELECT * FROM executions WHERE {where}
      ORDER BY sort_at DESC, id DESC OFFSET 0) AS executions
    WHERE (message ILIKE {pattern} OR response ILIKE {pattern})"""
COUNT = "SELECT count(*) FROM executions WHERE {where}"
# Counting stops after the cap: an exact count of 300,000 rows costs more than the page itself.
CAPPED_COUNT = "SELECT count(*) FROM (SELECT 1 FROM executions WHERE {where} LIMIT {cap}) AS c"
# A search's count looks at the newest `budget` rows of the list only (ILIKE cannot use the
# trigram index under row-level security: it is not leakproof), so its cost is bounded.
SEARCH_COUNT = """
SELECT count(*) FILTER (WHERE message ILIKE {pattern} OR response ILIKE {pattern}) AS matched,
    count(*) AS scanned
FROM (SELECT message, response FROM executions WHERE {where}
      ORDER BY sort_at DESC, id DESC LIMIT {budget}) AS s
"""

# Migration 0014: the ids of the org's rows (of the given agents; NULL: all) matching a search
# pattern when fewer than the cap, else NULL.
SEARCH_CANDIDATES = "SELECT search_candidates($1, $2, $3::text[])"

# DETAIL and LOG read under the caller's agents ($3; NULL: all): a row out of scope is never
# fetched, so its 404 costs what a missing id's does (a 64 MB log read, then refused, took
# 60x as long: a user could time an unshared agent's run into existence, and its log's size).
DETAIL = """
SELECT e.id, e.agent_name, e.project, e.workflow, e.schedule_id, e.status, e.triggered_by,
    e.message, e.response, e.error, e.error_type, e.started_at, e.completed_at, e.duration_ms,
    e.context_used, e.context_max, e.cost, e.tokens_in, e.tokens_out, e.tool_calls, e.engine,
    e.external_id, e.parent_execution_id, e.first_seen_at, e.updated_at,
    (e.error IS NOT NULL OR e.status = 'failed') AS has_error,
    e.execution_log IS NOT NULL AS has_log, octet_length(e.execution_log) AS log_bytes,
    a.display_name AS agent_display_name
FROM executions AS e LEFT JOIN agents AS a ON a.org = e.org AND a.name = e.agent_name
WHERE e.org = $1 AND e.id = $2 AND ($3::text[] IS NULL OR e.agent_name = ANY($3))
"""
# A step's attempts together and in attempt order (an attempt whose start is unknown, say
# only its failure was reported, is still listed before the retries that followed it), the
# steps by their first known start. Only the execution's own agent's rows: ingest refuses
# another agent's steps, and the read does not depend on that alone.
COMPONENTS = """
SELECT node_id, name, attempt, status, retry_policy, max_attempts, input, output, error,
    error_type, started_at, completed_at
FROM component_executions WHERE org = $1 AND execution_id = $2 AND agent_name = $3
ORDER BY min(started_at) OVER (PARTITION BY node_id) NULLS LAST, node_id, attempt
"""


def with_display_names(sql: str, order: str) -> str:
    """`sql`'s summaries (org `$1`) with their agent's display name, in `order`, as LIST."""
    return f"""
SELECT e.*, a.display_name AS agent_display_name FROM ({sql}) AS e
LEFT JOIN agents AS a ON a.org = $1 AND a.name = e.agent_name
ORDER BY {order}
"""


CHILDREN = with_display_names(
    """SELECT {columns} FROM executions
WHERE org = $1 AND parent_execution_id = $2 AND ($3::text[] IS NULL OR agent_name = ANY($3))
ORDER BY sort_at, id LIMIT {limit}""",
    "e.sort_at, e.id",
)
LOG = """SELECT agent_name, execution_log FROM executions
WHERE org = $1 AND id = $2 AND ($3::text[] IS NULL OR agent_name = ANY($3))"""

STATS = """
SELECT agent_name, triggered_by, status, count(*) AS n,
    coalesce(sum(cost), 0)::float8 AS cost,
    coalesce(sum(duration_ms), 0)::float8 AS duration_sum, count(duration_ms) AS duration_n
FROM executions WHERE {where} GROUP BY 1, 2, 3
"""
RUNNING = "SELECT count(*) FROM executions WHERE {where} AND status = 'running'"
TIMELINE = """
SELECT date_trunc('{bucket}', sort_at, 'UTC') AS bucket, status, count(*) AS n,
    coalesce(sum(cost), 0)::float8 AS cost
FROM executions WHERE {where} GROUP BY 1, 2
"""
DISPLAY_NAMES = "SELECT name, display_name FROM agents WHERE org = $1"

AGENTS = """
SELECT a.name, a.display_name, a.owner, a.project, a.created_at, a.last_seen_at,
    coalesce((SELECT array_agg(s.user_id ORDER BY s.user_id) FROM agent_shares AS s
              WHERE s.org = a.org AND s.agent_name = a.name), '{}') AS shared_with
FROM agents AS a WHERE a.org = $1 AND ($2::text[] IS NULL OR a.name = ANY($2::text[]))
ORDER BY a.name
"""
AGENT = "SELECT name, display_name, owner, project FROM agents WHERE org = $1 AND name = $2"
UPSERT_AGENT = """
INSERT INTO agents (org, name, display_name, owner, project) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (org, name) DO UPDATE SET
    display_name = CASE WHEN $6 THEN EXCLUDED.display_name ELSE agents.display_name END,
    owner = CASE WHEN $7 THEN EXCLUDED.owner ELSE agents.owner END,
    project = CASE WHEN $8 THEN EXCLUDED.project ELSE agents.project END
RETURNING name, display_name, owner, project
"""
PUT_SHARE = """
INSERT INTO agent_shares (org, agent_name, user_id) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
"""
DELETE_SHARE = "DELETE FROM agent_shares WHERE org = $1 AND agent_name = $2 AND user_id = $3"

GROUP_STATS = """
SELECT {key} AS name, count(*) AS runs, count(DISTINCT workflow) AS workflows,
    avg(duration_ms)::float8 AS avg_duration_ms,
    count(*) FILTER (WHERE status = 'failed') AS errors,
    count(*) FILTER (WHERE status = 'success') AS successes,
    count(*) FILTER (WHERE status IN ('success', 'failed', 'cancelled')) AS finished,
    max(sort_at) AS last_run_at
FROM executions WHERE {where} GROUP BY 1 ORDER BY runs DESC, 1 LIMIT {limit}
"""
# Only steps of the execution's own agent count, as in COMPONENTS: not on ingest alone.
TOP_COMPONENT = """
SELECT c.name, count(*) AS uses FROM component_executions AS c
WHERE c.org = $1 AND c.name IS NOT NULL
    AND (c.execution_id, c.agent_name) IN (SELECT id, agent_name FROM executions WHERE {where})
GROUP BY c.name ORDER BY uses DESC, c.name LIMIT 1
"""
TOP_WORKFLOW = """
SELECT workflow AS name, count(*) AS uses FROM executions
WHERE {where} AND workflow IS NOT NULL GROUP BY 1 ORDER BY uses DESC, 1 LIMIT 1
"""
LONGEST = with_display_names(
    """SELECT {columns} FROM executions WHERE {where} AND duration_ms IS NOT NULL
ORDER BY duration_ms DESC, id LIMIT 1""",
    "e.id",
)
RECENT = with_display_names(
    "SELECT {columns} FROM executions WHERE {where} ORDER BY sort_at DESC, id DESC LIMIT 10",
    "e.sort_at DESC, e.id DESC",
)

# One export batch: up to {limit} rows, cut where their texts pass {max_bytes} (the first row
# always kept): a row's message, response and error may hold 64 KiB each. `octet_length`
# reads a stored value's size without decompressing it; `fetched` says whether the list
# may go on past this batch.
EXPORT = """
SELECT e.id, e.agent_name, a.display_name AS agent_display_name, e.project, e.workflow,
    e.status, e.triggered_by, e.message, e.response, e.error, e.error_type, e.started_at,
    e.completed_at, e.duration_ms, e.cost, e.tokens_in, e.tokens_out, e.engine, e.external_id,
    e.parent_execution_id, e.sort_at, e.fetched
FROM (SELECT s.*, count(*) OVER () AS fetched,
          sum(s.size) OVER (ORDER BY s.sort_at DESC, s.id DESC) - s.size AS before
      FROM (SELECT *, coalesce(octet_length(message), 0) + coalesce(octet_length(response), 0)
                + coalesce(octet_length(error), 0) AS size
            FROM executions WHERE {where}
            ORDER BY sort_at DESC, id DESC LIMIT {limit}) AS s) AS e
LEFT JOIN agents AS a ON a.org = $1 AND a.name = e.agent_name
WHERE e.before < {max_bytes}
ORDER BY e.sort_at DESC, e.id DESC
"""


def _walked(sql: str, where: Where, search: str | None) -> tuple[str, list[Any]]:
    """`sql` (`... FROM executions WHERE {where} ...`) over `where`, or, with a `search`
    pattern, over the rows of `where` walked in list order and filtered by the pattern."""
    if search is None:
        return sql.replace("{where}", where.sql), where.args
    w = where.copy()
    walk = WALK.format(where=w.sql, pattern=w.param(search))
    return sql.replace("executions WHERE {where}", walk), w.args


async def list_page(
    conn: asyncpg.Connection, where: Where, *, limit: int, offset: int, search: str | None = None
) -> list[asyncpg.Record]:
    """One page of `where`; `search`: a common term's pattern, not in `where` (see WALK)."""
    sql = LIST.format(
        columns=SUMMARY_COLUMNS, where="{where}", limit=int(limit), offset=int(offset)
    )
    sql, args = _walked(sql, where, search)
    return list(await conn.fetch(sql, *args))


async def count(conn: asyncpg.Connection, where: Where, *, cap: int = 0) -> tuple[int, bool]:
    """The number of matching rows and whether it is exact (False: at least `cap`)."""
    if cap <= 0:
        return int(await conn.fetchval(COUNT.format(where=where.sql), *where.args)), True
    sql = CAPPED_COUNT.format(where=where.sql, cap=int(cap) + 1)
    value = int(await conn.fetchval(sql, *where.args))
    return (value, True) if value <= cap else (cap, False)


async def search_count(
    conn: asyncpg.Connection, where: Where, pattern: str, *, budget: int
) -> tuple[int, bool]:
    """Matches of `pattern` among the newest `budget` rows of `where` (without the search):
    exact if the list is shorter than that, else a lower bound (False)."""
    w = where.copy()
    sql = SEARCH_COUNT.format(where=w.sql, pattern=w.param(pattern), budget=int(budget))
    row = await conn.fetchrow(sql, *w.args)
    return int(row["matched"]), int(row["scanned"]) < budget


def _names(agents: frozenset[str] | None) -> list[str] | None:
    return None if agents is None else sorted(agents)


async def search_candidates(
    conn: asyncpg.Connection, pattern: str, *, cap: int, agents: frozenset[str] | None = None
) -> list[str] | None:
    """Every id of the transaction's org (`fleetwatch.org`) and of `agents` (None: every
    agent) whose message or response matches `pattern`, if fewer than `cap`; None for a term
    common among those rows (keep the ordered scan)."""
    names = _names(agents)
    ids: list[str] | None = await conn.fetchval(SEARCH_CANDIDATES, pattern, int(cap), names)
    return ids


async def detail(
    conn: asyncpg.Connection, org: str, execution_id: str, agents: frozenset[str] | None
) -> asyncpg.Record | None:
    """The execution if one of `agents` (None: any of the org's) ran it."""
    row: asyncpg.Record | None = await conn.fetchrow(DETAIL, org, execution_id, _names(agents))
    return row


async def components(
    conn: asyncpg.Connection, org: str, execution_id: str, agent_name: str
) -> list[asyncpg.Record]:
    """The steps `agent_name` (the execution's agent) reported for the execution."""
    return list(await conn.fetch(COMPONENTS, org, execution_id, agent_name))


#: How many children of an execution, and workflows or projects, a response lists at most.
LISTED_AT_MOST = 500


def cut(rows: Sequence[asyncpg.Record]) -> tuple[list[asyncpg.Record], bool]:
    """The first `LISTED_AT_MOST` of rows read with one more, and whether there were more."""
    return list(rows[:LISTED_AT_MOST]), len(rows) > LISTED_AT_MOST


async def children(
    conn: asyncpg.Connection, org: str, execution_id: str, agents: frozenset[str] | None
) -> tuple[list[asyncpg.Record], bool]:
    """The first 500 children the caller may see (`agents` None: every agent of the org), and
    whether there are more."""
    visible = _names(agents)
    sql = CHILDREN.format(columns=SUMMARY_COLUMNS, limit=LISTED_AT_MOST + 1)
    return cut(await conn.fetch(sql, org, execution_id, visible))


async def execution_log(
    conn: asyncpg.Connection, org: str, execution_id: str, agents: frozenset[str] | None
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(LOG, org, execution_id, _names(agents))
    return row


async def stats_groups(conn: asyncpg.Connection, where: Where) -> list[StatsGroup]:
    rows = await conn.fetch(STATS.format(where=where.sql), *where.args)
    return [
        StatsGroup(
            agent_name=r["agent_name"],
            triggered_by=r["triggered_by"],
            status=r["status"],
            count=r["n"],
            cost=r["cost"],
            duration_sum=r["duration_sum"],
            duration_count=r["duration_n"],
        )
        for r in rows
    ]


async def running_count(conn: asyncpg.Connection, where: Where) -> int:
    return int(await conn.fetchval(RUNNING.format(where=where.sql), *where.args))


async def timeline(conn: asyncpg.Connection, where: Where, bucket: Bucket) -> list[TimelineRow]:
    sql = TIMELINE.format(where=where.sql, bucket="day" if bucket == "day" else "hour")
    rows = await conn.fetch(sql, *where.args)
    return [TimelineRow(r["bucket"], r["status"], r["n"], r["cost"]) for r in rows]


async def display_names(conn: asyncpg.Connection, org: str) -> dict[str, str | None]:
    return {r["name"]: r["display_name"] for r in await conn.fetch(DISPLAY_NAMES, org)}


async def agents(
    conn: asyncpg.Connection, org: str, names: frozenset[str] | None
) -> list[asyncpg.Record]:
    """The org's agents, or only `names` of them."""
    wanted = None if names is None else sorted(names)
    return list(await conn.fetch(AGENTS, org, wanted))


async def agent(conn: asyncpg.Connection, org: str, name: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(AGENT, org, name)
    return row


async def upsert_agent(
    conn: asyncpg.Connection,
    org: str,
    name: str,
    *,
    display_name: str | None,
    owner: str | None,
    project: str | None,
    given: frozenset[str],
) -> asyncpg.Record:
    """Create the agent or set the fields named in `given` (to null where their value is)."""
    row: asyncpg.Record = await conn.fetchrow(
        UPSERT_AGENT,
        org,
        name,
        display_name,
        owner,
        project,
        "display_name" in given,
        "owner" in given,
        "project" in given,
    )
    return row


async def put_share(conn: asyncpg.Connection, org: str, agent_name: str, user: str) -> None:
    await conn.execute(PUT_SHARE, org, agent_name, user)


async def delete_share(conn: asyncpg.Connection, org: str, agent_name: str, user: str) -> bool:
    status: str = await conn.execute(DELETE_SHARE, org, agent_name, user)
    return status.endswith(" 1")


async def group_stats(
    conn: asyncpg.Connection, where: Where, key: str
) -> tuple[list[asyncpg.Record], bool]:
    """The 500 busiest workflows or projects, and whether there are more."""
    assert key in {"workflow", "project"}
    sql = GROUP_STATS.format(key=key, where=where.sql, limit=LISTED_AT_MOST + 1)
    return cut(await conn.fetch(sql, *where.args))


async def top_component(conn: asyncpg.Connection, where: Where) -> asyncpg.Record | None:
    sql = TOP_COMPONENT.format(where=where.sql)
    row: asyncpg.Record | None = await conn.fetchrow(sql, *where.args)
    return row


async def top_workflow(conn: asyncpg.Connection, where: Where) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        TOP_WORKFLOW.format(where=where.sql), *where.args
    )
    return row


async def longest(conn: asyncpg.Connection, where: Where) -> asyncpg.Record | None:
    sql = LONGEST.format(columns=SUMMARY_COLUMNS, where=where.sql)
    row: asyncpg.Record | None = await conn.fetchrow(sql, *where.args)
    return row


async def recent(conn: asyncpg.Connection, where: Where) -> list[asyncpg.Record]:
    sql = RECENT.format(columns=SUMMARY_COLUMNS, where=where.sql)
    return list(await conn.fetch(sql, *where.args))


async def export_batches(
    conn: asyncpg.Connection,
    where: Where,
    *,
    batch: int,
    max_bytes: int,
    search: str | None = None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """The filtered list in keyset batches of at most `batch` rows and about `max_bytes` of
    text (one row past it at most): memory holds one batch, however long the list and large
    its rows. `search`: a common term's pattern, not in `where` (see WALK)."""
    current = where
    while True:
        sql = EXPORT.format(where="{where}", limit=int(batch), max_bytes=int(max_bytes))
        sql, args = _walked(sql, current, search)
        rows = [dict(r) for r in await conn.fetch(sql, *args)]
        if not rows:
            return
        yield rows
        if len(rows) == rows[0]["fetched"] < batch:  # the whole rest of the list was here
            return
        last = rows[-1]
        current = where.copy()
        sort_at: datetime = last["sort_at"]
        current.add(f"(sort_at, id) < ({current.param(sort_at)}, {current.param(last['id'])})")
