"""Retention and migrations, second review: what ingest writes to a long run, what the
commands tell the operator, and migration files that would never be applied."""

from __future__ import annotations

import asyncio
import importlib.resources
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from shared.db import connect
from shared.migrate import load_migrations
from shared.retention import apply_retention
from tests.deploy.test_retention import NOW, seed
from tests.test_cli import fleetwatch


async def _execution(
    conn: asyncpg.Connection, org: str, exec_id: str, status: str, age_days: int
) -> None:
    """An execution started `age_days` before NOW, its own row last written then."""
    started = NOW - timedelta(days=age_days)
    await conn.execute(
        "INSERT INTO executions (org, id, agent_name, status, started_at, first_seen_at,"
        " updated_at) VALUES ($1, $2, 'ruby', $3, $4, $4, $4)",
        org,
        exec_id,
        status,
        started,
    )


async def _step(
    conn: asyncpg.Connection, org: str, exec_id: str, node: str, status: str, idle_days: int
) -> None:
    """A step of `exec_id` that ingest last wrote `idle_days` before NOW."""
    at = NOW - timedelta(days=idle_days)
    await conn.execute(
        "INSERT INTO component_executions (org, execution_id, node_id, attempt, agent_name,"
        " status, started_at, first_seen_at, updated_at) VALUES ($1, $2, $3, 1, 'ruby', $4,"
        " $5, $5, $5)",
        org,
        exec_id,
        node,
        status,
        at,
    )


async def test_a_long_run_reporting_only_steps_is_kept_with_its_steps(
    fresh_database_url: str,
) -> None:
    """A week-long workflow in an org keeping 3 days, whose agent reports step after step:
    step events write only the step's row, so the execution's own `updated_at` stayed at its
    start, and retention deleted the run and every step while the agent was still reporting
    (its next step became an orphan, its completion a row with no start)."""
    org = f"r-{uuid.uuid4().hex[:6]}"
    conn = await connect(fresh_database_url)
    try:
        await conn.execute("INSERT INTO organizations (org, retention_days) VALUES ($1, 3)", org)
        await _execution(conn, org, "busy", "running", 7)
        await _step(conn, org, "busy", "fetch", "success", 6)
        await _step(conn, org, "busy", "train", "running", 0)
        # Silent for the whole window, steps and all: abandoned.
        await _execution(conn, org, "abandoned", "running", 7)
        await _step(conn, org, "abandoned", "fetch", "running", 5)
        # Finished: expires by its start, whatever its steps' times.
        await _execution(conn, org, "finished", "success", 7)
        await _step(conn, org, "finished", "late", "success", 0)

        (dry,) = (await apply_retention(conn, now=NOW, dry_run=True)).orgs
        assert (dry.executions, dry.components) == (2, 2)
        (done,) = (await apply_retention(conn, now=NOW, batch_size=1)).orgs
        assert (done.executions, done.components) == (2, 2)
        left = await conn.fetch("SELECT id FROM executions WHERE org = $1", org)
        assert [r["id"] for r in left] == ["busy"]
        steps = await conn.fetch(
            "SELECT execution_id, node_id FROM component_executions WHERE org = $1 ORDER BY 2",
            org,
        )
        assert [tuple(r) for r in steps] == [("busy", "fetch"), ("busy", "train")]
    finally:
        await conn.close()


async def test_the_command_shows_its_progress_while_it_runs_into_a_pipe(
    fresh_database_url: str,
) -> None:
    """Under cron or systemd stdout is a pipe, block-buffered: the progress lines came out
    only when the run ended, and none at all when a timeout killed a long run."""
    org = f"p-{uuid.uuid4().hex[:6]}"
    conn = await connect(fresh_database_url)
    holder = await connect(fresh_database_url)
    await seed(conn, org, 1, [10, 11, 12], now=datetime.now(UTC))
    # The events pass waits behind this lock: the run is still going.
    held = holder.transaction()
    await held.start()
    await holder.execute("SELECT 1 FROM events WHERE org = $1 FOR UPDATE", org)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.cli",
        "retention",
        "--database-url",
        fresh_database_url,
        "--batch-size",
        "1",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert f"{org}: 1 executions so far" in first.decode()
        assert proc.returncode is None  # still running: the line came as it happened
    finally:
        await held.rollback()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        await holder.close()
        await conn.close()
    assert proc.returncode == 0, err.decode()
    assert "deleted 3 executions, 6 components, 3 events in 1 org(s)" in out.decode()


def test_a_misnamed_migration_file_is_refused_not_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`0018_Add-Index.sql` (a capital, a hyphen) did not match the name pattern and was
    passed over in silence: the schema change it carried was never applied anywhere."""
    (tmp_path / "0001_core.sql").write_text("SELECT 1;\n")
    (tmp_path / "0018_Add-Index.sql").write_text("SELECT 2;\n")
    (tmp_path / "__init__.py").write_text("")
    monkeypatch.setattr(importlib.resources, "files", lambda _package: tmp_path)
    with pytest.raises(RuntimeError, match=r"0018_Add-Index\.sql"):
        load_migrations()
    (tmp_path / "0018_Add-Index.sql").rename(tmp_path / "0018_add_index.sql")
    assert [m.name for m in load_migrations()] == ["0001_core.sql", "0018_add_index.sql"]


async def test_a_failed_migration_is_named_by_the_command(fresh_database_url: str) -> None:
    """`fleetwatch migrate` said only "database: UndefinedTableError: relation "events" does
    not exist (is the database migrated? `fleetwatch migrate`)": not which migration failed,
    nor that it was rolled back while the ones before it stayed applied."""
    conn = await connect(fresh_database_url)
    try:
        # 0010 is still to apply (and applies again cleanly); 0013 then fails on its table.
        await conn.execute("DELETE FROM schema_migrations WHERE version IN (10, 13)")
        await conn.execute("DROP TABLE events")
    finally:
        await conn.close()
    done = await asyncio.to_thread(fleetwatch, "migrate", "--database-url", fresh_database_url)
    err = done.stderr
    assert done.returncode == 1, (done.stdout, err)
    assert "migration 0013_events_received_brin.sql failed" in err, err
    assert "rolled back" in err
    assert "this run applied before it: 0010_query_indexes.sql" in err
    # The missing table is the migration's own error, not a hint to run `migrate`.
    assert "UndefinedTableError" in err
    assert "is the database migrated" not in err
    conn = await connect(fresh_database_url)
    try:
        versions = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    finally:
        await conn.close()
    assert 10 in versions
    assert 13 not in versions
