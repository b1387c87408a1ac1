"""`fleetwatch migrate` against a database in use: a migration that cannot get its table lock
gives up instead of queueing every writer behind it."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

import shared.migrate as migrate_module
from shared.db import connect
from shared.migrate import migrate


async def test_a_migration_blocked_by_a_writer_gives_up_and_lets_writers_through(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0016's CREATE INDEX waits for every open writer of `executions`; while it waits, each
    new ingest batch queues behind it. A writer left idle in its transaction (or the backend
    of a killed migrate Job) held the migrator, and with it all of ingest, for good."""
    monkeypatch.setattr(migrate_module, "LOCK_TIMEOUT_S", 0.5)
    writer, migrator, ingest = [await connect(fresh_database_url) for _ in range(3)]
    try:
        # The database as it was before 0016.
        await migrator.execute("DELETE FROM schema_migrations WHERE version = 16")
        await migrator.execute("DROP INDEX executions_by_run")
        open_writer = writer.transaction()
        await open_writer.start()
        await writer.execute("LOCK TABLE executions IN ROW EXCLUSIVE MODE")

        attempt = asyncio.create_task(migrate(migrator))
        with pytest.raises(asyncpg.LockNotAvailableError):
            await asyncio.wait_for(attempt, 20)
        # The waiting migration no longer stands in front of writers.
        await asyncio.wait_for(
            ingest.execute(
                "INSERT INTO executions (org, id, agent_name, status, first_seen_at)"
                " VALUES ('acme', 'e1', 'bot', 'running', now())"
            ),
            20,
        )
        assert (
            await migrator.fetchval("SELECT count(*) FROM schema_migrations WHERE version = 16")
            == 0
        )

        await open_writer.rollback()
        assert await asyncio.wait_for(migrate(migrator), 20) == ["0016_executions_by_run.sql"]
    finally:
        for conn in (writer, migrator, ingest):
            await conn.close()
