"""Bounded steps of a service's stop: each ends within its time, or is cut short and says so.

Kubernetes sends SIGKILL a grace period after SIGTERM; a dependency that stopped answering
must not hold a stop until then, silently (tests/test_shutdown_bounds.py)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from nats.aio.client import Client as NatsClient

log = logging.getLogger(__name__)


async def close_pool(pool: asyncpg.Pool, within_s: float) -> None:
    """Close `pool`; if a connection is still in use after `within_s`, terminate them all. A
    query cancelled on a database that stopped answering holds its connection while its
    clean-up waits for that database too."""
    try:
        async with asyncio.timeout(within_s):
            await pool.close()
    except TimeoutError:
        log.warning(
            "database pool not closed within %.0f s (a connection still in use); "
            "terminating its connections",
            within_s,
        )
        pool.terminate()


async def drain_or_close_nats(nc: NatsClient, within_s: float | None = None) -> None:
    """Drain `nc` (closed instead past `within_s`); closed at once when not connected, as
    nats-py refuses to drain a connection that is reconnecting."""
    if nc.is_closed:
        return
    if nc.is_connected:
        try:
            async with asyncio.timeout(within_s):
                await nc.drain()
            return
        except TimeoutError:
            log.warning("NATS drain cut off after %.0f s", within_s)
    else:
        log.warning("NATS not connected at stop; closing without draining")
    await nc.close()
