"""The gateway's turns: a freed one goes to the waiting org holding fewest, never kept idle."""

from __future__ import annotations

import asyncio

import pytest

from services.ingest.turns import FairTurns


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_freed_turn_goes_to_the_org_holding_fewest_not_the_first_in_line() -> None:
    """Org A posting in a loop held both turns and queued three more batches; B's batch came
    after them. With a plain semaphore B waited for all of A's (and then got a 503)."""
    turns = FairTurns(2)
    await turns.acquire("a")
    await turns.acquire("a")
    order: list[str] = []

    async def batch(org: str) -> None:
        await turns.acquire(org)
        order.append(org)

    waiters = [asyncio.create_task(batch("a")) for _ in range(3)]
    await _settle()
    waiters.append(asyncio.create_task(batch("b")))
    await _settle()
    assert order == []
    turns.release("a")
    await _settle()
    assert order == ["b"]  # B holds none, A holds one: B first
    turns.release("a")
    await _settle()
    assert order == ["b", "a"]
    assert (turns.held("a"), turns.held("b")) == (1, 1)
    for org in ("a", "b"):
        turns.release(org)
    await asyncio.gather(*waiters)
    assert order == ["b", "a", "a", "a"]


async def test_an_org_alone_may_use_every_turn() -> None:
    turns = FairTurns(3)
    for _ in range(3):
        await asyncio.wait_for(turns.acquire("solo"), 1)
    assert turns.held("solo") == 3
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(turns.acquire("solo"), 0.05)


async def test_a_wait_given_up_takes_no_turn_and_loses_none() -> None:
    turns = FairTurns(1)
    await turns.acquire("a")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await turns.acquire("b")
    # Given up in the same step the turn was handed over: the turn passes on, not lost.
    late = asyncio.create_task(turns.acquire("c"))
    await _settle()
    turns.release("a")
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert turns.held("c") == 0
    await asyncio.wait_for(turns.acquire("d"), 1)
    assert turns.held("d") == 1
    # A waiter cancelled before a release is skipped by it.
    gone = asyncio.create_task(turns.acquire("e"))
    await _settle()
    gone.cancel()
    turns.release("d")
    await asyncio.wait_for(turns.acquire("f"), 1)
    assert turns.held("e") == 0
