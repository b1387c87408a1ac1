"""`cancel_and_wait`, which the services' stop paths use instead of
`with suppress(CancelledError): await task` (that hid a cancel of the caller as well)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shared.tasks import cancel_and_wait


async def _sleeper(cleanup_s: float, cleaned: asyncio.Event, fail: bool = False) -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        await asyncio.sleep(cleanup_s)
        cleaned.set()
        if fail:
            raise RuntimeError("clean-up failed") from None
        raise


async def test_it_waits_for_the_task_to_end_and_its_cancel_is_no_error() -> None:
    cleaned = asyncio.Event()
    task = asyncio.create_task(_sleeper(0.05, cleaned))
    await asyncio.sleep(0)
    assert await cancel_and_wait(task) is None
    assert task.done()
    assert cleaned.is_set()


async def test_it_returns_the_error_the_task_ended_with() -> None:
    task = asyncio.create_task(_sleeper(0, asyncio.Event(), fail=True))
    await asyncio.sleep(0)
    error = await cancel_and_wait(task)
    assert isinstance(error, RuntimeError)


async def test_a_cancel_of_the_caller_still_raises_and_the_task_finishes_its_clean_up() -> None:
    cleaned = asyncio.Event()
    task = asyncio.create_task(_sleeper(0.3, cleaned))
    await asyncio.sleep(0)
    stopping = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.05)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await asyncio.wait_for(cleaned.wait(), 5)


async def test_the_pattern_it_replaces_loses_that_cancel() -> None:
    """What the services did: shown here so the test above is known to be able to fail."""
    task = asyncio.create_task(_sleeper(0.3, asyncio.Event()))
    await asyncio.sleep(0)

    async def old_stop() -> str:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return "went on"

    stopping = asyncio.create_task(old_stop())
    await asyncio.sleep(0.05)
    stopping.cancel()
    assert await stopping == "went on"
