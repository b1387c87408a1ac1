"""Retention against what ingest still writes: executions in progress, and the rows of
executions it is applying an event to while retention runs."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg

from shared.db import connect
from shared.retention import apply_retention
from tests.deploy.test_retention import NOW


async def _execution(
    conn: asyncpg.Connection, org: str, exec_id: str, status: str, age_days: int, idle_days: int
) -> None:
    """An execution started `age_days` before NOW whose last write was `idle_days` before."""
    started = NOW - timedelta(days=age_days)
    await conn.execute(
        "INSERT INTO executions (org, id, agent_name, status, started_at, first_seen_at,"
        " updated_at) VALUES ($1, $2, 'ruby', $3, $4, $4, $5)",
        org,
        exec_id,
        status,
        started,
        NOW - timedelta(days=idle_days),
    )
    # Its step last written with it (ingest's `updated_at`, not the insert's wall clock).
    await conn.execute(
        "INSERT INTO component_executions"
        " (org, execution_id, node_id, attempt, agent_name, status, first_seen_at, updated_at)"
        " VALUES ($1, $2, 'n', 1, 'ruby', $3, $4, $5)",
        org,
        exec_id,
        status,
        started,
        NOW - timedelta(days=idle_days),
    )


async def test_an_execution_still_in_progress_is_kept_past_its_window(
    fresh_database_url: str,
) -> None:
    """A week-long run in an org keeping 3 days: retention deleted it (and its steps) while
    its agent was still reporting, and its completion then made a row with no start."""
    org = f"r-{uuid.uuid4().hex[:6]}"
    conn = await connect(fresh_database_url)
    try:
        await conn.execute("INSERT INTO organizations (org, retention_days) VALUES ($1, 3)", org)
        await _execution(conn, org, "long-run", "running", 7, 0)
        await _execution(conn, org, "long-queue", "pending", 7, 1)
        await _execution(conn, org, "abandoned", "running", 7, 5)  # silent past the window
        await _execution(conn, org, "finished", "success", 7, 0)
        (dry,) = (await apply_retention(conn, now=NOW, dry_run=True)).orgs
        assert (dry.executions, dry.components) == (2, 2)
        (done,) = (await apply_retention(conn, now=NOW)).orgs
        assert (done.executions, done.components) == (2, 2)
        left = await conn.fetch("SELECT id FROM executions WHERE org = $1 ORDER BY id", org)
        assert [r["id"] for r in left] == ["long-queue", "long-run"]
        steps = await conn.fetch(
            "SELECT execution_id FROM component_executions WHERE org = $1 ORDER BY 1", org
        )
        assert [r["execution_id"] for r in steps] == ["long-queue", "long-run"]
    finally:
        await conn.close()
