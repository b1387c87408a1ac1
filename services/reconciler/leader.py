"""One leader among replicas: a session-level Postgres advisory lock on a dedicated connection.

The lock lives as long as the connection: if the leader dies or loses its connection, the
lock is released and another replica takes over on its next try.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging

import asyncpg

from shared.db import connect

log = logging.getLogger(__name__)


def lock_key(base: int, prefix: str) -> int:
    """A signed 64-bit key per deployment (subject prefix), so tenants of one server keep apart."""
    digest = hashlib.blake2b(f"{base}:{prefix}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class LeaderLock:
    def __init__(self, database_url: str, key: int) -> None:
        self._url = database_url
        self._key = key
        self._conn: asyncpg.Connection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def try_acquire(self) -> bool:
        """True while we hold the lock (checked anew each call: a dropped connection loses it)."""
        if self._conn is not None:
            if not self._conn.is_closed():
                try:
                    await self._conn.execute("SELECT 1")
                    return True
                except (asyncpg.PostgresError, OSError):
                    log.warning("leader connection lost; leadership released")
            self._conn = None
        conn = await connect(self._url)
        got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key)
        if got:
            self._conn = conn
            log.info("became leader (advisory lock %d)", self._key)
            return True
        await conn.close()
        return False

    async def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await self._conn.close()
            self._conn = None
