"""The pull-fetch fixes of shared/faststream_compat.py, on the real JetStream.

When the event loop is busy while a fetch waits, nats-py's own fetch returns the first message
only and leaves the rest of the server's answer in the subscription's queue; the patched
fetch returns them in the same batch. A window too short for a pull request takes only what
was already delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import nats.aio.subscription
import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from shared.faststream_compat import (
    patch_fetch_takes_delivered,
    patch_next_msg_takes_queued,
    take_delivered,
)
from shared.subjects import Subjects
from tests.ingest.pulled import fetch_from_busy_loop, unpatched_fetch


@contextlib.asynccontextmanager
async def _pull(
    nats_url: str, subjects: Subjects, count: int
) -> AsyncIterator[JetStreamContext.PullSubscription]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream = subjects.events_stream
    await js.add_stream(StreamConfig(name=stream, subjects=[subjects.all_events]))
    for i in range(count):
        await js.publish(subjects.event("acme", "ruby", "execution_started"), f"{i}".encode())
    try:
        yield await js.pull_subscribe(subjects.all_events, "compat", stream=stream)
    finally:
        await nc.close()


async def _delivered(
    sub: JetStreamContext.PullSubscription, count: int, within_s: float = 5.0
) -> list[Msg]:
    """What lands in the subscription's queue without another fetch, until `count` did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    taken = take_delivered(sub, 100)
    while len(taken) < count and loop.time() < deadline:
        await asyncio.sleep(0.02)
        taken += take_delivered(sub, 100)
    return taken


async def test_nats_py_alone_returns_one_message_from_a_busy_loop(
    nats_url: str, subjects: Subjects
) -> None:
    """The behaviour the patch exists for (if nats-py fixes it, this test says so)."""
    async with _pull(nats_url, subjects, 10) as sub:
        msgs = await fetch_from_busy_loop(sub, 10, unpatched_fetch())
        left = await _delivered(sub, 10 - len(msgs))
    assert len(msgs) < 10
    assert len(msgs) + len(left) == 10


async def test_patched_fetch_returns_what_was_delivered_meanwhile(
    nats_url: str, subjects: Subjects
) -> None:
    patch_fetch_takes_delivered()
    patch_fetch_takes_delivered()  # idempotent: one wrapper, around nats-py's own fetch
    assert not hasattr(unpatched_fetch(), "_takes_delivered")
    expected = [f"{i}".encode() for i in range(10)]
    nc = await nats.connect(nats_url)
    try:
        async with _pull(nats_url, subjects, 10) as sub:
            for _attempt in range(3):
                msgs = await fetch_from_busy_loop(sub, 10)
                rest = await _delivered(sub, 10 - len(msgs))
                assert [m.data for m in msgs + rest] == expected  # nothing lost, in order
                for m in msgs + rest:
                    await m.ack()
                if len(msgs) == 10:
                    break
                # The server's answer was read in two parts (a loaded machine): the first part
                # is all that had been delivered. Once more, with the same messages.
                for i in range(10):
                    subject = subjects.event("acme", "ruby", "execution_started")
                    await nc.jetstream().publish(subject, f"{i}".encode())
            assert len(msgs) == 10  # nats-py's own fetch returns one (the test above)
    finally:
        await nc.close()


async def test_patched_fetch_caps_at_batch_and_keeps_the_rest(
    nats_url: str, subjects: Subjects
) -> None:
    patch_fetch_takes_delivered()
    async with _pull(nats_url, subjects, 10) as sub:
        first = await fetch_from_busy_loop(sub, 4)
        second = await sub.fetch(6, timeout=1)
    assert len(first) == 4
    assert [m.data for m in first + second] == [f"{i}".encode() for i in range(10)]


async def test_too_short_a_window_sends_no_request(nats_url: str, subjects: Subjects) -> None:
    patch_fetch_takes_delivered()
    async with _pull(nats_url, subjects, 3) as sub:
        with pytest.raises(TimeoutError):
            await sub.fetch(3, timeout=0.0001)  # nothing delivered yet, no request sent
        await asyncio.sleep(0.2)
        assert take_delivered(sub, 10) == []  # the server was not asked for anything
        msgs = await sub.fetch(3, timeout=1)
        assert len(msgs) == 3


async def test_queued_messages_are_taken_without_a_task_and_timer_each(
    nats_url: str, subjects: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _pull(nats_url, subjects, 6) as sub:
        first = await fetch_from_busy_loop(sub, 6, unpatched_fetch())
        queue = sub._sub._pending_queue
        for _ in range(250):  # the rest of the server's answer lands in the queue
            if len(first) + queue.qsize() >= 6:
                break
            await asyncio.sleep(0.02)
        assert len(first) < 6  # some wait in the queue
        patch_next_msg_takes_queued()
        patch_next_msg_takes_queued()  # idempotent: one wrapper
        assert not hasattr(Subscription.next_msg.__wrapped__, "_takes_queued")  # type: ignore[attr-defined]

        def no_uuid() -> None:
            raise AssertionError("nats-py's slow path ran for a queued message")

        # nats-py names every waiting task with a uuid4: the fast path makes none.
        monkeypatch.setattr(nats.aio.subscription, "uuid4", no_uuid)
        rest = [await sub._sub.next_msg(timeout=1) for _ in range(6 - len(first))]
        assert [m.data for m in first + rest] == [f"{i}".encode() for i in range(6)]
        assert sub._sub.pending_bytes == 0
        monkeypatch.undo()
        # An empty queue still waits, and times out as nats-py does.
        with pytest.raises(nats.errors.TimeoutError):
            await sub._sub.next_msg(timeout=0.1)
