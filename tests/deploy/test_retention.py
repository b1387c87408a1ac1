"""Retention: per-org cutoffs, small batches, dry run, and the `fleetwatch retention` command."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from shared.db import connect
from shared.retention import apply_retention, cutoff_for, stream_warning

NOW = datetime(2026, 3, 1, tzinfo=UTC)


async def seed(
    conn: asyncpg.Connection, org: str, days: int, ages: list[int], now: datetime = NOW
) -> None:
    """An org with one execution (two steps, one event) per age in days."""
    await conn.execute("INSERT INTO organizations (org, retention_days) VALUES ($1, $2)", org, days)
    for i, age in enumerate(ages):
        at = now - timedelta(days=age, minutes=i)
        exec_id = f"x{i}"
        await conn.execute(
            "INSERT INTO executions (org, id, agent_name, status, started_at, first_seen_at)"
            " VALUES ($1, $2, 'ruby', 'success', $3, $3)",
            org,
            exec_id,
            at,
        )
        for node in ("a", "b"):
            await conn.execute(
                "INSERT INTO component_executions"
                " (org, execution_id, node_id, attempt, agent_name, status, first_seen_at)"
                " VALUES ($1, $2, $3, 1, 'ruby', 'success', $4)",
                org,
                exec_id,
                node,
                at,
            )
        await conn.execute(
            "INSERT INTO events (org, event_id, type, agent_name, execution_id, occurred_at,"
            " received_at) VALUES ($1, $2, 'execution_completed', 'ruby', $3, $4, $4)",
            org,
            f"e{i}",
            exec_id,
            at,
        )


async def counts(conn: asyncpg.Connection, org: str) -> tuple[int, int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM executions WHERE org = $1),"
        " (SELECT count(*) FROM component_executions WHERE org = $1),"
        " (SELECT count(*) FROM events WHERE org = $1)",
        org,
    )
    assert row is not None
    return row[0], row[1], row[2]


async def test_deletes_per_org_in_batches_and_dry_run_deletes_nothing(
    fresh_database_url: str,
) -> None:
    short, long_ = f"s-{uuid.uuid4().hex[:6]}", f"l-{uuid.uuid4().hex[:6]}"
    conn = await connect(fresh_database_url)
    try:
        # 8 of 10 executions are older than 3 days; none older than 90.
        await seed(conn, short, 3, [1, 2, 4, 5, 6, 7, 8, 9, 10, 20])
        await seed(conn, long_, 90, [1, 50, 80])

        dry = await apply_retention(conn, now=NOW, batch_size=3, dry_run=True)
        assert [(o.org, o.executions, o.components, o.events) for o in dry.orgs] == sorted(
            [(short, 8, 16, 8), (long_, 0, 0, 0)]
        )
        assert await counts(conn, short) == (10, 20, 10)

        lines: list[str] = []
        report = await apply_retention(conn, now=NOW, batch_size=3, progress=lines.append)
        by_org = {o.org: o for o in report.orgs}
        assert (by_org[short].executions, by_org[short].components, by_org[short].events) == (
            8,
            16,
            8,
        )
        # 8 executions in batches of 3 → 3 batches; steps without an execution → 1; 8 events
        # → 3 more.
        assert by_org[short].batches == 7
        assert by_org[long_].executions == 0
        assert await counts(conn, short) == (2, 4, 2)
        assert await counts(conn, long_) == (3, 6, 3)
        remaining = await conn.fetch("SELECT id FROM executions WHERE org = $1", short)
        assert {r["id"] for r in remaining} == {"x0", "x1"}
        assert any("executions so far" in line for line in lines)

        again = await apply_retention(conn, now=NOW, batch_size=3)
        assert again.executions == again.components == again.events == 0
    finally:
        await conn.close()


async def test_steps_whose_execution_never_came_expire_by_their_own_time(
    fresh_database_url: str,
) -> None:
    org = f"o-{uuid.uuid4().hex[:6]}"
    conn = await connect(fresh_database_url)
    try:
        await seed(conn, org, 7, [100])
        for execution_id, age in (("never-old", 100), ("never-new", 1)):
            await conn.execute(
                "INSERT INTO component_executions"
                " (org, execution_id, node_id, attempt, agent_name, status, first_seen_at)"
                " VALUES ($1, $2, 'n', 1, 'ruby', 'success', $3)",
                org,
                execution_id,
                NOW - timedelta(days=age),
            )
        (dry,) = (await apply_retention(conn, now=NOW, dry_run=True)).orgs
        assert (dry.executions, dry.components) == (1, 3)
        (done,) = (await apply_retention(conn, now=NOW)).orgs
        assert (done.executions, done.components) == (1, 3)
        left = await conn.fetch("SELECT execution_id FROM component_executions WHERE org = $1", org)
        assert [r["execution_id"] for r in left] == ["never-new"]
    finally:
        await conn.close()


def test_cutoff_and_stream_warning() -> None:
    assert cutoff_for(NOW, 7) == NOW - timedelta(days=7)
    assert stream_warning(7, [30, 90]) is None
    assert stream_warning(7, []) is None
    warning = stream_warning(7, [3, 30])
    assert warning is not None
    assert "FLEETWATCH_RETENTION_DAYS" in warning


async def run_cli(*args: str) -> str:
    env = {**os.environ, "FLEETWATCH_RETENTION_DAYS": "7"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.cli",
        "retention",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_command_dry_run_then_delete(fresh_database_url: str) -> None:
    org = f"c-{uuid.uuid4().hex[:6]}"
    conn = await connect(fresh_database_url)
    try:
        await seed(conn, org, 1, [0, 400], now=datetime.now(UTC))
    finally:
        await conn.close()
    dry = await run_cli("--database-url", fresh_database_url, "--dry-run")
    assert "would delete 1 executions, 2 components, 1 events" in dry
    assert "warning: FLEETWATCH_RETENTION_DAYS=7" in dry
    real = await run_cli("--database-url", fresh_database_url, "--batch-size", "1", "--org", org)
    assert "deleted 1 executions, 2 components, 1 events in 1 org(s)" in real
    conn = await connect(fresh_database_url)
    try:
        assert await counts(conn, org) == (1, 2, 1)
    finally:
        await conn.close()
