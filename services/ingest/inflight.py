"""Which executions this process's batches in flight are writing, so that a batch does not
wait for another one's row locks with all of its events.

Two batches in flight that share an execution serialize on its advisory lock in Postgres:
the second waits for the first to commit, and with it every other execution it carries.
When the two events of each execution are spread over a backlog, nearly every batch shares
a few executions with one in flight, and the batches in flight went one after the other.
`KeysInFlight` lets a batch write the executions nobody holds at once and the few held
ones after their holder is done. (Replicas still meet only in Postgres's locks.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from services.ingest.merge import ExecutionKey


class KeysInFlight:
    """Execution keys held by the batches being written (each key by one batch at a time)."""

    def __init__(self) -> None:
        self._held: set[ExecutionKey] = set()
        self._released = asyncio.Event()

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def take_free(self, keys: set[ExecutionKey]) -> tuple[set[ExecutionKey], set[ExecutionKey]]:
        """Split `keys` into the free ones, now held by the caller, and the held ones."""
        free = keys - self._held
        self._held |= free
        return free, keys - free

    async def take_when_free(self, keys: set[ExecutionKey]) -> None:
        """Wait until none of `keys` is held, then hold them all."""
        while not self._held.isdisjoint(keys):
            await self._released.wait()
        self._held |= keys

    def release(self, keys: Iterable[ExecutionKey]) -> None:
        self._held.difference_update(keys)
        # Wake every waiter; each checks its own keys again.
        released, self._released = self._released, asyncio.Event()
        released.set()
