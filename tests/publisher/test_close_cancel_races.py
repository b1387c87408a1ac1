"""`close()` stops the publisher's tasks by cancelling them. On Python 3.11, `asyncio.wait_for`
swallows a cancel that arrives as the thing it waits on ends: the spool's drain loop, woken
(a reconnect, an event spooled) a moment before `close()`, then ran on for good and
`close()` hung (seen once in CI, as a `SyncFleet.close()` that never returned)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from shared.publisher import Fleet, client
from shared.publisher.terminate import TerminateResponder
from shared.subjects import Subjects


@pytest.mark.parametrize("turns", [0, 1, 2])
async def test_close_ends_when_the_drain_loop_was_just_woken(
    nats_url: str, subjects: Subjects, org: str, tmp_path: Path, turns: int
) -> None:
    fleet = Fleet(nats_url, org=org, subjects=subjects, spool_dir=tmp_path / "spool")
    await fleet.start()
    await asyncio.sleep(0.05)  # the drain loop waits to be woken
    # What a reconnect or a spooled event does; the cancel then meets the wait as it ends
    # (0 and 1 loop turns later hung every time on the old loop).
    fleet._wake.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    closing = asyncio.ensure_future(fleet.close())
    done, _ = await asyncio.wait({closing}, timeout=5)
    assert closing in done, "close() hung: the drain loop did not stop"
    closing.result()
    # It let go of the spool: another fleet takes it.
    other = Fleet(nats_url, org=org, subjects=subjects, spool_dir=tmp_path / "spool")
    await other.start()
    await other.close()


async def test_a_cancel_of_the_terminate_responders_close_is_not_swallowed() -> None:
    """Its close awaited each reply task under `suppress(CancelledError)`, which also hid a
    cancel of the close itself: the task that was told to stop went on."""
    responder = TerminateResponder(Subjects("t-none"))
    cleaned_up = asyncio.Event()

    async def slow_reply() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # a reply still being sent when it is cancelled
            cleaned_up.set()
            raise

    reply = asyncio.create_task(slow_reply())
    responder._replies.add(reply)
    await asyncio.sleep(0)
    closing = asyncio.create_task(responder.close())
    await asyncio.sleep(0.05)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(closing, 5)
    await asyncio.wait_for(cleaned_up.wait(), 5)


async def test_close_does_not_wait_for_good_on_a_task_that_ignores_its_cancel(
    nats_url: str,
    subjects: Subjects,
    org: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever the next such bug is, close() still disconnects and frees the spool: it
    waits `_TASK_STOP_S` for its tasks, then logs the one left running."""
    monkeypatch.setattr(client, "_TASK_STOP_S", 0.3)
    fleet = Fleet(nats_url, org=org, subjects=subjects, spool_dir=tmp_path / "spool")
    await fleet.start()
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    task = asyncio.create_task(deaf(), name="deaf")
    fleet._tasks.append(task)
    try:
        closing = asyncio.ensure_future(fleet.close())
        done, _ = await asyncio.wait({closing}, timeout=5)
        assert closing in done, "close() waits on a task that will not stop"
        assert not fleet.connected
        assert "publisher task deaf did not stop when cancelled" in caplog.text
        other = Fleet(nats_url, org=org, subjects=subjects, spool_dir=tmp_path / "spool")
        await other.start()
        await other.close()
    finally:
        release.set()
        await task
        await closing
