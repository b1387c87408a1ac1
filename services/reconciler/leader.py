"""One leader among replicas: a session-level Postgres advisory lock on a dedicated connection.

The lock lives as long as the connection. A leader that dies or closes its connection
releases it at once; another replica takes over on its next try.

A leader cut off from Postgres by the network (no FIN, no RST) would otherwise keep the lock
until the server's TCP keepalive gave up on it, two hours by default, with no replica
reconciling meanwhile. So the lock is a lease of `lease_s` seconds: the leader's connection
carries `idle_session_timeout = lease`, which makes the server end a session that has sent
nothing for that long, and a heartbeat pings it every third of the lease. While the leader
reaches Postgres the session never idles that long. Once it cannot, the server drops the
session, and with it the lock, within one lease. The leader's own heartbeat notices within a
third of a lease plus its timeout, and it stops claiming leadership.

A pass can outlive the lease (an engine's time limit, a paused process): before it publishes,
the pass `confirm`s the lock with a round trip on the lock's own session, so a leader that
lost it meanwhile (e.g. woken from SIGSTOP after another replica took over) publishes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import asyncpg

from shared.db import connect
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: What a lost or unreachable leader connection raises.
_CONNECTION_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def lock_key(base: int, prefix: str) -> int:
    """A signed 64-bit key per deployment (subject prefix), so tenants of one server keep apart."""
    digest = hashlib.blake2b(f"{base}:{prefix}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class LeaderLock:
    def __init__(self, database_url: str, key: int, *, lease_s: float = 30.0) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self._url = database_url
        self._key = key
        self._lease_s = lease_s
        self._conn: asyncpg.Connection | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        #: One statement at a time on the lock's session (heartbeat and `confirm`).
        self._io = asyncio.Lock()

    @property
    def held(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def try_acquire(self) -> bool:
        """True while we hold the lock (the heartbeat drops it when the connection is lost)."""
        if self.held:
            return True
        await self._drop()
        try:
            async with asyncio.timeout(self._lease_s):
                conn = await connect(self._url)
        except _CONNECTION_ERRORS as exc:
            log.warning("cannot reach Postgres for the leader lock: %s", exc)
            return False
        try:
            await self._lease(conn)
            got = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", self._key, timeout=self._lease_s
            )
        except _CONNECTION_ERRORS as exc:
            log.warning("leader lock attempt failed: %s", exc)
            conn.terminate()
            return False
        if not got:
            await conn.close()
            return False
        self._conn = conn
        self._heartbeat = asyncio.create_task(self._beat(conn), name="reconciler-leader-lease")
        log.info("became leader (advisory lock %d, lease %.1f s)", self._key, self._lease_s)
        return True

    async def _lease(self, conn: asyncpg.Connection) -> None:
        # Milliseconds; the server ends the session (and frees the lock) once it has been idle
        # this long, i.e. once the heartbeat no longer gets through.
        try:
            await conn.execute(f"SET idle_session_timeout = {max(1, int(self._lease_s * 1000))}")
        except asyncpg.UndefinedObjectError:  # PostgreSQL 13 and older
            log.warning("this PostgreSQL has no idle_session_timeout; the leader lock has no lease")

    async def _beat(self, conn: asyncpg.Connection) -> None:
        interval = self._lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._io:
                    await conn.execute("SELECT 1", timeout=interval)
            except Exception as exc:  # whatever it was, the session is not to be trusted
                log.warning("leader connection lost (%r); leadership released", exc)
                conn.terminate()
                return

    async def confirm(self) -> bool:
        """Whether we hold the lock now, asked of Postgres: the lock lives as long as its
        session, so a round trip on that session proves it. `held` only says what this
        process last saw, which a paused process has not seen for a while."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            async with self._io:
                await conn.execute("SELECT 1", timeout=self._lease_s / 3)
        except Exception as exc:  # e.g. asyncpg's InternalClientError on a broken session
            log.warning("leader lock lost (%r); leadership released", exc)
            await self._drop()
            return False
        return True

    async def _stop_heartbeat(self) -> None:
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            await cancel_and_wait(task)  # it catches its own errors

    async def _drop(self) -> None:
        await self._stop_heartbeat()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def release(self) -> None:
        await self._stop_heartbeat()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                async with asyncio.timeout(self._lease_s):
                    await conn.close()
            except _CONNECTION_ERRORS:
                conn.terminate()
