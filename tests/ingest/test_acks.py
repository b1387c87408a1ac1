"""ack_all acknowledges a whole fetched batch in one write, on the real JetStream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.msg import Msg
from nats.errors import MsgAlreadyAckdError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, StreamConfig

from services.ingest.acks import ack_all
from shared.subjects import Subjects

ACK_WAIT = 1.0


@contextlib.asynccontextmanager
async def _fetched(
    nats_url: str, subjects: Subjects, count: int
) -> AsyncIterator[tuple[JetStreamContext, JetStreamContext.PullSubscription, list[Msg]]]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=subjects.events_stream, subjects=[subjects.all_events]))
    for i in range(count):
        await js.publish(subjects.event("acme", "ruby", "execution_started"), f"{i}".encode())
    sub = await js.pull_subscribe(
        subjects.all_events,
        "acks",
        stream=subjects.events_stream,
        config=ConsumerConfig(ack_wait=ACK_WAIT),
    )
    msgs = await sub.fetch(count, timeout=5)
    assert len(msgs) == count
    try:
        yield js, sub, msgs
    finally:
        await nc.close()


async def _redelivered(sub: JetStreamContext.PullSubscription) -> list[Msg]:
    await asyncio.sleep(ACK_WAIT * 1.5)
    with contextlib.suppress(TimeoutError):
        return await sub.fetch(1000, timeout=0.5)
    return []


async def test_every_message_is_acked_and_none_comes_back(
    nats_url: str, subjects: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def one_by_one(self: Msg) -> None:
        raise AssertionError("ack_all acked message by message")

    async with _fetched(nats_url, subjects, 300) as (js, sub, msgs):
        monkeypatch.setattr(Msg, "ack", one_by_one)
        await ack_all(msgs)
        monkeypatch.undo()
        assert await _redelivered(sub) == []
        info = await js.consumer_info(subjects.events_stream, "acks")
        assert info.num_ack_pending == 0
        assert info.ack_floor.stream_seq == 300
        with pytest.raises(MsgAlreadyAckdError):
            await msgs[0].ack()


async def test_unacked_messages_come_back(nats_url: str, subjects: Subjects) -> None:
    """The check above can fail: without ack_all, the batch is redelivered."""
    async with _fetched(nats_url, subjects, 20) as (_, sub, msgs):
        await ack_all(msgs[:5])
        again = await _redelivered(sub)
    assert sorted(m.data for m in again) == sorted(m.data for m in msgs[5:])


async def test_an_already_acked_message_fails_as_msg_ack_does(
    nats_url: str, subjects: Subjects
) -> None:
    async with _fetched(nats_url, subjects, 5) as (_, sub, msgs):
        await msgs[2].ack()
        with pytest.raises(MsgAlreadyAckdError):
            await ack_all(msgs)
        # Message by message, the ones before the failing one were acked.
        again = await _redelivered(sub)
    assert sorted(m.data for m in again) == [b"3", b"4"]


async def test_nothing_to_ack_is_fine() -> None:
    await ack_all([])
