"""A connection lost in the middle of `migrate` is said to be lost, naming the migration:
asyncpg then raised "cannot call Transaction.__aexit__(): the underlying connection is
closed", and the unlock in `migrate`'s cleanup would raise on the closed connection as well."""

from __future__ import annotations

import asyncio

import pytest

from shared.db import connect
from shared.migrate import migrate


async def test_a_connection_lost_mid_migration_raises_its_own_error(
    fresh_database_url: str,
) -> None:
    holder = await connect(fresh_database_url)
    conn = await connect(fresh_database_url)
    try:
        # 0013 (an index on events) is to apply again, and waits for the table's lock.
        await holder.execute("DELETE FROM schema_migrations WHERE version = 13")
        await holder.execute("DROP INDEX IF EXISTS events_received_brin")
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        running = asyncio.create_task(migrate(conn))
        pid = conn.get_server_pid()
        for _ in range(200):
            waiting = await holder.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
            )
            if waiting:
                break
            await asyncio.sleep(0.025)
        assert waiting, "migrate never waited for the events table"
        await holder.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(ConnectionError, match="lost while applying 0013_events_received"):
            await asyncio.wait_for(running, 20)
        await tx.rollback()
    finally:
        await holder.close()
        await conn.close()
