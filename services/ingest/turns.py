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
    """Bytes of request bodies an org, and all orgs together, may have inside at once (being
    read, waiting for a turn or holding one): a bound on the memory the bodies take.

    Turns bound the CPU; without this, one tenant sending many large batches in parallel had
    every body read into memory while it waited, up to what the process could hold. A
    request counts its declared length (the most a body may be, when it declares none). When
    the budget is spent, an org with nothing inside may still use `reserve` more, so that a
    few tenants filling it do not lock every other tenant out until they stop.
    """

    def __init__(self, total: int, per_org: int, reserve: int = 0) -> None:
        if total < 1 or per_org < 1 or reserve < 0:
            raise ValueError("admission budgets must be positive")
        self._total = total
        self._per_org = per_org
        self._reserve = reserve
        self._inside: dict[str, int] = {}
        self._used = 0

    def enter(self, org: str, size: int) -> bool:
        """Admit a body of `size` bytes of `org`, or return False when the org's share or the
        process's budget (with the reserve, for an org with nothing inside) has no room."""
        held = self._inside.get(org, 0)
        limit = self._total if held else self._total + self._reserve
        if held + size > self._per_org or self._used + size > limit:
            return False
        self._inside[org] = held + size
        self._used += size
        return True

    def leave(self, org: str, size: int) -> None:
        held = self._inside[org] - size
        if held:
            self._inside[org] = held
        else:
            del self._inside[org]
        self._used -= size
