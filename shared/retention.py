"""Per-org retention: delete executions, their components and events past `retention_days`
(and steps of executions that never got a row, by their own time).

Deletes run in small batches (one short transaction each) so ingest never waits long on a
lock and replicas never see a huge WAL burst. The JetStream side is a single stream-wide
limit, `FLEETWATCH_RETENTION_DAYS` (the stream's max age, applied by `ensure_streams`); it
should not exceed the shortest org retention, or the stream would keep events that Postgres
has already forgotten — the command warns when it does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from shared.commands import connect_database
from shared.settings import CommonSettings

DEFAULT_BATCH = 5_000

ORGS_SQL = "SELECT org, retention_days FROM organizations ORDER BY org"

# Row-level security (migration 0003) hides every row from a role it applies to that is not
# the app role in an org's transaction: run as such a role (a separate user granted DELETE),
# retention found no org, or no expired row, and reported "deleted 0" every night while the
# data grew. Only the tables' owner, a superuser or a BYPASSRLS role sees them all.
RETENTION_TABLES = ("organizations", "executions", "component_executions", "events")
ROW_SECURITY_SQL = """
SELECT current_user AS role,
       coalesce(array_agg(t ORDER BY t) FILTER (WHERE row_security_active(t::regclass)), '{}')
           AS hidden
FROM unnest($1::text[]) AS t
"""


class RowSecurityError(RuntimeError):
    """Retention's role would see (and so delete) only some rows, or none."""


# An execution expires when its list time (`sort_at`: started_at, else first sight) is older
# than the cutoff; its steps go with it in the same transaction. One still pending or running
# is kept while its agent reports within the window: ingest wrote its row then, or one of its
# steps (step events write only the step's row, so a long run reporting nothing but steps kept
# its own `updated_at` at its start, and was deleted with every step; its next step became an
# orphan, its completion a row with no start). Both by `updated_at`, ingest's clock, not the
# agent's times (a clock ahead, or a 2199 `completed_at`, kept an abandoned run for good). One
# silent for the whole window is abandoned and expires. Only pending or running rows past the
# cutoff look at their steps, one probe of the steps' primary key each: `OFFSET 0` keeps the
# planner from hashing every org's steps once per batch instead (with a larger `work_mem` it
# did: ~1 s per batch at 3M steps, against 3.5 ms).
EXPIRED = """sort_at < $2 AND NOT (status IN ('pending', 'running') AND (updated_at >= $2
    OR EXISTS (SELECT 1 FROM component_executions s
               WHERE s.org = executions.org AND s.execution_id = executions.id
                 AND s.updated_at >= $2 OFFSET 0)))"""

DELETE_EXECUTIONS_SQL = f"""
WITH doomed AS (
    SELECT id FROM executions
    WHERE org = $1 AND {EXPIRED}
    ORDER BY sort_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), steps AS (
    DELETE FROM component_executions c USING doomed d
    WHERE c.org = $1 AND c.execution_id = d.id
    RETURNING 1
), gone AS (
    DELETE FROM executions e USING doomed d
    WHERE e.org = $1 AND e.id = d.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS executions, (SELECT count(*) FROM steps) AS components
"""

# Steps whose execution has no row (its events never came: ingest stores steps that arrive
# first) expire by their own time; they would otherwise stay past every retention. That time
# is the agent's start, capped by ingest's last write (an agent clock in 2199 kept a step for
# good). As for an execution, one still in progress is kept, with every step of its run, while
# its agent reports: a pending or running step in the run, and a step of it written within the
# window (by the agent's start alone, a week-long run's steps went mid-run). Probed per run
# with `OFFSET 0`, as in EXPIRED.
_ORPHAN_EXPIRED = """c.org = $1
      AND least(coalesce(c.started_at, c.first_seen_at), c.updated_at) < $2
      AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.org = $1 AND e.id = c.execution_id{probe})
      AND NOT (EXISTS (SELECT 1 FROM component_executions s
                       WHERE s.org = $1 AND s.execution_id = c.execution_id
                         AND s.status IN ('pending', 'running') OFFSET 0)
               AND EXISTS (SELECT 1 FROM component_executions s
                           WHERE s.org = $1 AND s.execution_id = c.execution_id
                             AND s.updated_at >= $2 OFFSET 0))"""
ORPHAN_EXPIRED = _ORPHAN_EXPIRED.format(probe="")

# Walked in primary-key order, a window of keys per batch, each batch starting after the last
# key the one before examined (or deleted, when it stopped at `batch_size`): no index serves
# the steps' age, so a batch that searched the org's steps for `LIMIT` expired orphans scanned
# and probed all of them, and hashed them all to join the batch back, each batch (200k steps:
# ~86k buffers and ~0.3 s a batch, JIT compiling a third of it; see docs/deploy.md). A window
# costs O(its keys), and the pass reads each step once. Doomed rows are deleted by address.
ORPHAN_WINDOW_MIN = 10_000

_ORPHAN_WINDOW = """
WITH span AS MATERIALIZED (
    SELECT ctid AS tid, execution_id, node_id, attempt,
           least(coalesce(started_at, first_seen_at), updated_at) < $2 AS aged
    FROM component_executions
    WHERE org = $1 {after}
    ORDER BY execution_id, node_id, attempt
    LIMIT $4
), doomed AS MATERIALIZED (
    SELECT c.ctid AS tid, c.execution_id, c.node_id, c.attempt
    FROM component_executions c
    WHERE c.ctid = ANY(ARRAY(SELECT tid FROM span WHERE aged)) AND {expired}
    ORDER BY c.execution_id, c.node_id, c.attempt
    LIMIT $3
    FOR UPDATE OF c SKIP LOCKED
), gone AS (
    DELETE FROM component_executions c
    WHERE c.ctid = ANY(ARRAY(SELECT tid FROM doomed)) AND c.org = $1
    RETURNING 1
), last AS (
    SELECT execution_id, node_id, attempt FROM (
        (SELECT execution_id, node_id, attempt FROM doomed
         WHERE (SELECT count(*) FROM doomed) >= $3
         ORDER BY 1 DESC, 2 DESC, 3 DESC LIMIT 1)
        UNION ALL
        (SELECT execution_id, node_id, attempt FROM span ORDER BY 1 DESC, 2 DESC, 3 DESC LIMIT 1)
    ) AS k LIMIT 1
)
SELECT (SELECT count(*) FROM span) AS examined, (SELECT count(*) FROM doomed) AS doomed,
       (SELECT count(*) FROM gone) AS deleted,
       last.execution_id, last.node_id, last.attempt
FROM (SELECT 1) AS one LEFT JOIN last ON true
"""
# In a window, the execution is probed per step by its primary key (`OFFSET 0`): the planner
# cannot count a materialized window's rows, guessed one, and ran the anti-join as a seq scan
# of the org's executions per step (7 s a window at 40k executions).
_ORPHAN_WINDOW_EXPIRED = _ORPHAN_EXPIRED.format(probe=" OFFSET 0")
DELETE_ORPHAN_STEPS_FIRST_SQL = _ORPHAN_WINDOW.format(after="", expired=_ORPHAN_WINDOW_EXPIRED)
DELETE_ORPHAN_STEPS_NEXT_SQL = _ORPHAN_WINDOW.format(
    after="AND (execution_id, node_id, attempt) > ($5, $6, $7)", expired=_ORPHAN_WINDOW_EXPIRED
)

# Expired events are walked in table order, a window of pages per batch (a TID range scan),
# between the first and last page holding one (found once per pass; the BRIN index on
# received_at, migration 0013, serves that search when few are expired). A window is left
# once a batch found fewer than `batch_size` in it, so a row of any order is not skipped, and
# a batch reads its window's pages only. A batch that searched from the table's start (BRIN
# bitmap or seq scan, `LIMIT`) read again every page earlier batches had emptied, until
# vacuum: 1M events, 10% expired, the search of batch 1 read 68 pages, of batch 18 1,138
# (quadratic over the pass; the walk: ~63 each; docs/deploy.md). Rows are deleted by their
# address (a TID scan), not joined back by `event_id` (that hashed the batch and seq-scanned
# the org's events).
EVENTS_SPAN_SQL = """
SELECT min(ctid) AS first, max(ctid) AS last FROM events WHERE org = $1 AND received_at < $2
"""
EVENTS_DENSITY_SQL = """
SELECT CASE WHEN relpages > 0 AND reltuples > 0 THEN reltuples / relpages END
FROM pg_class WHERE oid = 'events'::regclass
"""
DELETE_EVENTS_WINDOW_SQL = """
WITH batch AS MATERIALIZED (
    SELECT ctid FROM events
    WHERE ctid >= format('(%s,0)', $4::bigint)::tid AND ctid < format('(%s,0)', $5::bigint)::tid
      AND org = $1 AND received_at < $2
    LIMIT $3
), gone AS (
    DELETE FROM events
    WHERE ctid = ANY(ARRAY(SELECT ctid FROM batch)) AND org = $1 AND received_at < $2
    RETURNING 1
)
SELECT (SELECT count(*) FROM batch) AS found, (SELECT count(*) FROM gone) AS deleted
"""
# Events per page when the table has no statistics yet (~80-byte rows).
EVENTS_PER_PAGE = 90.0
# A sparse window (the org's events are a few of the table's) doubles, up to this many pages.
EVENTS_WINDOW_MAX_PAGES = 8_192

COUNT_SQL = f"""
SELECT
    (SELECT count(*) FROM executions WHERE org = $1 AND {EXPIRED}) AS executions,
    (SELECT count(*) FROM component_executions c
        WHERE c.org = $1
          AND c.execution_id IN (SELECT id FROM executions WHERE org = $1 AND {EXPIRED}))
    + (SELECT count(*) FROM component_executions c
        WHERE {ORPHAN_EXPIRED}) AS components,
    (SELECT count(*) FROM events WHERE org = $1 AND received_at < $2) AS events
"""


@dataclass
class OrgResult:
    """What was (or, in a dry run, would be) deleted for one org."""

    org: str
    retention_days: int
    cutoff: datetime
    executions: int = 0
    components: int = 0
    events: int = 0
    batches: int = 0


@dataclass
class RetentionReport:
    dry_run: bool
    orgs: list[OrgResult] = field(default_factory=list)

    @property
    def executions(self) -> int:
        return sum(o.executions for o in self.orgs)

    @property
    def components(self) -> int:
        return sum(o.components for o in self.orgs)

    @property
    def events(self) -> int:
        return sum(o.events for o in self.orgs)


def cutoff_for(now: datetime, retention_days: int) -> datetime:
    """Rows older than this are past retention. A retention reaching before year 1 (an
    operator's "keep forever", such as 2147483647 days) expires nothing."""
    try:
        return now - timedelta(days=retention_days)
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


def stream_warning(stream_max_age_days: float, org_days: Sequence[int]) -> str | None:
    """A warning when the stream keeps events longer than some org's retention allows."""
    if not org_days:
        return None
    shortest = min(org_days)
    if stream_max_age_days > shortest:
        return (
            f"FLEETWATCH_RETENTION_DAYS={stream_max_age_days:g} keeps events in the stream "
            f"longer than the shortest org retention ({shortest} days); set it to {shortest} "
            "or less and restart ingest to apply the stream limit"
        )
    return None


Progress = Callable[[str], None]


async def apply_retention(
    conn: asyncpg.Connection,
    *,
    now: datetime | None = None,
    batch_size: int = DEFAULT_BATCH,
    dry_run: bool = False,
    orgs: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> RetentionReport:
    """Delete (or count, with `dry_run`) what each org's retention has expired."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    moment = now or datetime.now(UTC)
    say = progress or (lambda _line: None)
    await check_row_security(conn)
    report = RetentionReport(dry_run=dry_run)
    for row in await conn.fetch(ORGS_SQL):
        if orgs is not None and row["org"] not in orgs:
            continue
        result = OrgResult(
            org=row["org"],
            retention_days=row["retention_days"],
            cutoff=cutoff_for(moment, row["retention_days"]),
        )
        report.orgs.append(result)
        if dry_run:
            counts = await conn.fetchrow(COUNT_SQL, result.org, result.cutoff)
            result.executions = counts["executions"]
            result.components = counts["components"]
            result.events = counts["events"]
        else:
            await _delete_org(conn, result, batch_size, say)
        verb = "would delete" if dry_run else "deleted"
        say(
            f"{result.org} (retention {result.retention_days} d, before "
            f"{result.cutoff.isoformat(timespec='seconds')}): {verb} {result.executions} "
            f"executions, {result.components} components, {result.events} events"
        )
    return report


async def check_row_security(conn: asyncpg.Connection) -> None:
    """Refuse to run where row-level security filters retention's tables (see ROW_SECURITY_SQL):
    a count or delete there is silently zero, not an error."""
    row = await conn.fetchrow(ROW_SECURITY_SQL, list(RETENTION_TABLES))
    if row["hidden"]:
        raise RowSecurityError(
            f"row-level security applies to role {row['role']} on {', '.join(row['hidden'])}: "
            "retention would see none of their rows and delete nothing; run it as the owner "
            "of the tables (the user that runs `fleetwatch migrate`) or a role with BYPASSRLS"
        )


async def _delete_org(
    conn: asyncpg.Connection, result: OrgResult, batch_size: int, say: Progress
) -> None:
    while True:
        async with conn.transaction():
            row = await conn.fetchrow(DELETE_EXECUTIONS_SQL, result.org, result.cutoff, batch_size)
        result.executions += row["executions"]
        result.components += row["components"]
        result.batches += 1
        if row["executions"]:
            say(f"  {result.org}: {result.executions} executions so far")
        if row["executions"] < batch_size:
            break
    await _delete_orphan_steps(conn, result, batch_size)
    await _delete_events(conn, result, batch_size, say)


async def _delete_orphan_steps(
    conn: asyncpg.Connection, result: OrgResult, batch_size: int
) -> None:
    window = max(2 * batch_size, ORPHAN_WINDOW_MIN)
    after: tuple[str, str, int] | None = None
    while True:
        async with conn.transaction():
            if after is None:
                row = await conn.fetchrow(
                    DELETE_ORPHAN_STEPS_FIRST_SQL, result.org, result.cutoff, batch_size, window
                )
            else:
                row = await conn.fetchrow(
                    DELETE_ORPHAN_STEPS_NEXT_SQL,
                    result.org,
                    result.cutoff,
                    batch_size,
                    window,
                    *after,
                )
        result.components += row["deleted"]
        result.batches += 1
        if row["doomed"] < batch_size and row["examined"] < window:
            break  # the window reached the org's last step
        after = (row["execution_id"], row["node_id"], row["attempt"])


async def _delete_events(
    conn: asyncpg.Connection, result: OrgResult, batch_size: int, say: Progress
) -> None:
    span = await conn.fetchrow(EVENTS_SPAN_SQL, result.org, result.cutoff)
    if span["first"] is None:
        result.batches += 1  # the search that found none
        return
    page, end = span["first"][0], span["last"][0] + 1
    per_page = await conn.fetchval(EVENTS_DENSITY_SQL) or EVENTS_PER_PAGE
    pages = max(1, int(batch_size / per_page))
    while page < end:
        stop = min(page + pages, end)
        async with conn.transaction():
            row = await conn.fetchrow(
                DELETE_EVENTS_WINDOW_SQL, result.org, result.cutoff, batch_size, page, stop
            )
        result.events += row["deleted"]
        result.batches += 1
        if row["deleted"]:
            say(f"  {result.org}: {result.events} events so far")
        if row["found"] < batch_size:  # the window holds no more: on to the next one
            page = stop
            # Sized for a batch's worth at the density found (at most twice as large).
            grown = (
                2 * pages if 2 * row["found"] < batch_size else pages * batch_size // row["found"]
            )
            pages = min(grown, EVENTS_WINDOW_MAX_PAGES)


def _print_now(line: str) -> None:
    # Flushed per line: piped to a file or a log collector (cron, systemd, `| tee`), stdout is
    # block-buffered, and a long run showed nothing until it ended (nothing at all when a
    # timeout killed it).
    print(line, flush=True)


async def _run(args: argparse.Namespace, settings: CommonSettings) -> RetentionReport:
    conn = await connect_database(args.database_url or settings.database_url)
    try:
        report = await apply_retention(
            conn,
            batch_size=args.batch_size,
            dry_run=args.dry_run,
            orgs=args.org or None,
            progress=_print_now,
        )
    finally:
        await conn.close()
    return report


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fleetwatch retention",
        description="delete executions, components and events past each org's retention_days",
    )
    parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        help=f"rows per transaction (default {DEFAULT_BATCH})",
    )
    parser.add_argument("--org", action="append", help="only this org (repeatable)")
    parser.add_argument("--database-url", help="default: $DATABASE_URL")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    settings = CommonSettings()
    try:
        report = asyncio.run(_run(args, settings))
    except RowSecurityError as exc:
        print(f"fleetwatch retention: {exc}", file=sys.stderr)
        return 1
    verb = "would delete" if report.dry_run else "deleted"
    print(
        f"retention: {verb} {report.executions} executions, {report.components} components, "
        f"{report.events} events in {len(report.orgs)} org(s)"
    )
    warning = stream_warning(settings.stream_max_age_days, [o.retention_days for o in report.orgs])
    if warning:
        print(f"warning: {warning}")
    missing = sorted(set(args.org or ()) - {o.org for o in report.orgs})
    if missing:  # a typo in a nightly job must not pass for "nothing to delete"
        print(f"fleetwatch retention: no such org: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
