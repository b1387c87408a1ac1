"""Retention, third review: a role that row-level security filters, steps with no execution
row, and what each events batch reads."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from shared.db import connect
from shared.retention import RowSecurityError, apply_retention
from tests.deploy.test_retention import NOW, seed
from tests.retention_reference import OLD_DELETE_EVENTS_SQL
from tests.test_cli import fleetwatch


async def test_a_role_that_row_security_filters_is_refused_not_zero(
    fresh_database_url: str,
) -> None:
    """Run as a user granted SELECT and DELETE but neither owner nor BYPASSRLS, retention saw
    no org (RLS hides every row from it) and printed "deleted 0 ... in 0 org(s)", exit 0,
    every night, while nothing expired."""
    role = f"ret_{uuid.uuid4().hex[:8]}"
    org = f"r-{uuid.uuid4().hex[:6]}"
    owner = await connect(fresh_database_url)
    try:
        await seed(owner, org, 3, [1, 10])
        await owner.execute(f"CREATE ROLE {role} LOGIN")
        await owner.execute(
            "GRANT SELECT, DELETE ON organizations, executions, component_executions, events"
            f" TO {role}"
        )
        url = fresh_database_url.replace("postgres@", f"{role}@", 1)
        conn = await asyncpg.connect(url)
        try:
            with pytest.raises(RowSecurityError) as refused:
                await apply_retention(conn, now=NOW, dry_run=True)
        finally:
            await conn.close()
        message = str(refused.value)
        assert role in message
        assert "component_executions, events, executions, organizations" in message
        assert "BYPASSRLS" in message
        done = await asyncio.to_thread(fleetwatch, "retention", "--database-url", url)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert f"row-level security applies to role {role}" in done.stderr
        count = await owner.fetchval("SELECT count(*) FROM executions WHERE org = $1", org)
        assert count == 2  # refused before deleting anything
    finally:
        await owner.execute(f"DROP OWNED BY {role}")
        await owner.execute(f"DROP ROLE {role}")
        await owner.close()


async def _orphan_step(
    conn: asyncpg.Connection, org: str, exec_id: str, status: str, started: datetime, idle: int
) -> None:
    """A step of an execution with no row, started at `started` by the agent's clock, last
    written by ingest `idle` days before NOW."""
    await conn.execute(
        "INSERT INTO component_executions (org, execution_id, node_id, attempt, agent_name,"
        " status, started_at, first_seen_at, updated_at) VALUES ($1, $2, 'n', 1, 'ruby', $3,"
        " $4, $4, $5)",
        org,
        exec_id,
        status,
        started,
        NOW - timedelta(days=idle),
    )


async def test_steps_with_no_execution_row_expire_by_their_time_unless_still_reporting(
    fresh_database_url: str,
) -> None:
    """Orphan steps expired by the agent's start time alone: the steps of a week-long run still
    reporting were deleted mid-run, and one from an agent clock in 2199 was kept for good."""
    org = f"o-{uuid.uuid4().hex[:6]}"
    conn = await connect(fresh_database_url)
    try:
        await conn.execute("INSERT INTO organizations (org, retention_days) VALUES ($1, 3)", org)
        week_ago = NOW - timedelta(days=7)
        await _orphan_step(conn, org, "still-reporting", "running", week_ago, 0)
        await _orphan_step(conn, org, "clock-ahead", "success", datetime(2199, 1, 1, tzinfo=UTC), 5)
        await _orphan_step(conn, org, "silent", "running", week_ago, 7)
        # A finished step of the run still reporting goes with it, not before.
        await conn.execute(
            "INSERT INTO component_executions (org, execution_id, node_id, attempt, agent_name,"
            " status, started_at, first_seen_at, updated_at) VALUES ($1, 'still-reporting',"
            " 'fetch', 1, 'ruby', 'success', $2, $2, $2)",
            org,
            week_ago,
        )
        (dry,) = (await apply_retention(conn, now=NOW, dry_run=True)).orgs
        assert dry.components == 2
        (done,) = (await apply_retention(conn, now=NOW, batch_size=1)).orgs
        assert done.components == 2
        left = await conn.fetch(
            "SELECT execution_id, node_id FROM component_executions WHERE org = $1 ORDER BY 2",
            org,
        )
        assert [tuple(r) for r in left] == [("still-reporting", "fetch"), ("still-reporting", "n")]
    finally:
        await conn.close()


def _nodes(plan: dict[str, Any], found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found.append(plan)
    for child in plan.get("Plans", []):
        _nodes(child, found)
    return found


async def test_an_events_batch_reads_its_own_rows_not_the_org_s_whole_table(
    fresh_database_url: str,
) -> None:
    """Each batch joined its event ids back to the table by a hash over a seq scan of every
    event of the org: ~10k pages and ~0.5 s a batch at 1M events, for 5,000 rows."""
    conn = await connect(fresh_database_url)
    try:
        await conn.execute("INSERT INTO organizations (org, retention_days) VALUES ('big', 3)")
        await conn.execute(
            "INSERT INTO events (org, event_id, type, agent_name, execution_id, occurred_at,"
            " received_at) SELECT 'big', 'e' || g, 'execution_completed', 'ruby', 'x', t, t"
            " FROM generate_series(1, 100000) AS g,"
            " LATERAL (SELECT $1::timestamptz + g * interval '1 second') AS at(t)",
            NOW - timedelta(days=10),
        )
        await conn.execute("ANALYZE events")
        for _batch in range(3):
            raw = await conn.fetchval(
                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {OLD_DELETE_EVENTS_SQL}",
                "big",
                NOW - timedelta(days=3),
                5000,
            )
            plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
            scans = [n for n in _nodes(plan, []) if n.get("Relation Name") == "events"]
            outer = [n["Node Type"] for n in scans if n.get("Alias") == "events"]
            assert outer, plan
            # The delete's own scan fetches the batch's rows by address: the events read are
            # the batch twice (found, then deleted), not the org's 100,000.
            assert "Seq Scan" not in outer, plan
            read = sum(
                int(n["Actual Rows"]) + int(n.get("Rows Removed by Filter", 0)) for n in scans
            )
            assert read <= 2 * 5000, [(n["Node Type"], n["Actual Rows"]) for n in scans]
        left = await conn.fetchval("SELECT count(*) FROM events")
        assert left == 100000 - 3 * 5000
    finally:
        await conn.close()
