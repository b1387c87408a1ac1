"""Turns at a shared resource, handed out fairly between orgs (the HTTP gateway's batches).

A plain semaphore serves waiters in arrival order, so one tenant posting batches in a loop
keeps every turn and the others wait until they are refused. Here a freed turn goes to the
waiting org that holds the fewest turns (arrival order among equals), and an org alone may
still use every turn: no capacity is kept idle for tenants that are not asking.
"""

from __future__ import annotations

import asyncio
from collections import deque


class FairTurns:
    def __init__(self, turns: int) -> None:
        if turns < 1:
            raise ValueError("turns must be at least 1")
        self._free = turns
        self._held: dict[str, int] = {}
        self._waiting: deque[tuple[str, asyncio.Future[None]]] = deque()

    def held(self, org: str) -> int:
        return self._held.get(org, 0)

    async def acquire(self, org: str) -> None:
        """Wait for a turn (cancel the wait to give up, e.g. with `asyncio.timeout`)."""
        if self._free > 0 and not self._waiting:
            self._take(org)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (org, future)
        self._waiting.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(org)  # granted just as the wait was given up: pass it on
            elif entry in self._waiting:
                self._waiting.remove(entry)
            raise

    def release(self, org: str) -> None:
        held = self._held[org] - 1
        if held:
            self._held[org] = held
        else:
            del self._held[org]
        self._free += 1
        self._hand_over()

    def _take(self, org: str) -> None:
        self._free -= 1
        self._held[org] = self._held.get(org, 0) + 1

    def _hand_over(self) -> None:
        while self._free > 0 and self._waiting:
            # The waiting org holding the fewest turns; the earliest of its waiters.
            org, future = min(self._waiting, key=lambda w: self.held(w[0]))
            self._waiting.remove((org, future))
            if future.done():  # its wait was cancelled and has not left the queue yet
                continue
            self._take(org)
            future.set_result(None)


class Admission:
    """How many requests an org, and all orgs together, may have inside at once (reading a
    body, waiting for a turn or holding one): a bound on the memory request bodies take.

    Turns bound the CPU; without this, one tenant sending many large batches in parallel had
    every body read into memory while it waited, up to what the process could hold.
    """

    def __init__(self, total: int, per_org: int) -> None:
        if total < 1 or per_org < 1:
            raise ValueError("admission limits must be at least 1")
        self._total = total
        self._per_org = per_org
        self._inside: dict[str, int] = {}
        self._count = 0

    def enter(self, org: str) -> bool:
        """Admit one request of `org`, or return False when it or the process is full."""
        inside = self._inside.get(org, 0)
        if self._count >= self._total or inside >= self._per_org:
            return False
        self._inside[org] = inside + 1
        self._count += 1
        return True

    def leave(self, org: str) -> None:
        inside = self._inside[org] - 1
        if inside:
            self._inside[org] = inside
        else:
            del self._inside[org]
        self._count -= 1
