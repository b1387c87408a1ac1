"""The leader lock is a lease: a leader cut off from Postgres loses it, a live one keeps it.

Real Postgres; the partition is an in-process TCP proxy that stops passing bytes while both
of its connections stay open, so neither the leader nor the server sees the link close.
"""

from __future__ import annotations

import asyncio
import random
import time

from services.reconciler.leader import LeaderLock
from tests.chaos.infra import port_of, proxy_to, url_through

#: A live leader keeps it on a loaded machine: the heartbeat (every third of the lease) may
#: take up to a second to answer, and a stall of up to two seconds does not idle the session
#: out (1.5 s left a stall of just over a second losing the lock).
LEASE_S = 3.0


def _key() -> int:
    return random.randint(-(2**63), 2**63 - 1)


async def test_a_leader_cut_off_from_postgres_loses_the_lock_within_a_lease(
    database_url: str,
) -> None:
    key = _key()
    async with proxy_to(port_of(database_url)) as proxy:
        cut_off = LeaderLock(url_through(database_url, proxy.port), key, lease_s=LEASE_S)
        other = LeaderLock(database_url, key, lease_s=LEASE_S)
        try:
            assert await cut_off.try_acquire()
            assert not await other.try_acquire()

            proxy.latency = 3600.0  # a partition: nothing gets through, nothing is closed
            partitioned = time.monotonic()
            while not await other.try_acquire():
                assert time.monotonic() - partitioned < 4 * LEASE_S, "the lock was never freed"
                await asyncio.sleep(0.1)
            # The cut-off leader has noticed too, and does not claim leadership any more.
            while cut_off.held:
                assert time.monotonic() - partitioned < 4 * LEASE_S, "the old leader still leads"
                await asyncio.sleep(0.1)
            started = time.monotonic()
            assert not await cut_off.try_acquire()  # its reconnect times out, it does not hang
            assert time.monotonic() - started < 2 * LEASE_S
        finally:
            await other.release()
            await cut_off.release()


async def test_a_leader_keeps_the_lock_through_a_pass_longer_than_the_lease(
    database_url: str,
) -> None:
    key = _key()
    leader = LeaderLock(database_url, key, lease_s=LEASE_S)
    other = LeaderLock(database_url, key, lease_s=LEASE_S)
    try:
        assert await leader.try_acquire()
        await asyncio.sleep(3 * LEASE_S)  # a long pass: nobody calls try_acquire meanwhile
        assert leader.held
        assert not await other.try_acquire()
        assert await leader.try_acquire()
        await leader.release()
        assert await other.try_acquire()  # a release frees the lock at once
    finally:
        await other.release()
        await leader.release()
