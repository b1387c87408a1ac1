"""JetStream reads of the notifier: its own live ordered consumer, and per-client range replays."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from shared.subjects import Subjects

#: Ephemeral consumers vanish this long after their notifier does.
INACTIVE_THRESHOLD_S = 30.0
#: A replay waits this long for its next message before giving up on the range.
REPLAY_MSG_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class StreamBounds:
    first_seq: int
    last_seq: int
    #: When the stream was made: another value means it was deleted and made anew.
    created: datetime | None = None


async def bounds(js: JetStreamContext, subjects: Subjects) -> StreamBounds:
    info = await js.stream_info(subjects.events_stream)
    return StreamBounds(
        first_seq=info.state.first_seq, last_seq=info.state.last_seq, created=info.created
    )


def _from(seq: int) -> ConsumerConfig:
    return ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=seq,
        inactive_threshold=INACTIVE_THRESHOLD_S,
    )


async def follow(
    js: JetStreamContext,
    subjects: Subjects,
    start_seq: int,
    handler: Callable[[Msg], Awaitable[None]],
) -> JetStreamContext.PushSubscription:
    """This replica's own ordered push consumer from `start_seq`: in order, no ack, no durable.

    Each replica holds one, so replicas never split the events between them the way the
    ingest durable does.
    """
    return await js.subscribe(
        subjects.all_events,
        stream=subjects.events_stream,
        cb=handler,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=_from(start_seq),
    )


@dataclass(slots=True)
class Reached:
    """How far a `read_range` covered the stream: every message up to `seq` that its subject
    filter matches was delivered."""

    seq: int = 0


async def read_range(
    js: JetStreamContext,
    subjects: Subjects,
    first: int,
    last: int,
    *,
    subject: str | None = None,
    reached: Reached | None = None,
) -> AsyncGenerator[Msg, None]:
    """Messages with stream seq `first..last`, in order, via a short-lived ordered consumer;
    with `subject`, only those it matches (one org's: a replay then reads nothing of the
    others). `reached` says how far the range was covered: up to `last` once the filter has
    nothing more in it; otherwise the last message delivered (a stall leaves a gap)."""
    reached = reached if reached is not None else Reached()
    reached.seq = first - 1
    if first > last:
        reached.seq = last
        return
    sub = await js.subscribe(
        subject or subjects.all_events,
        stream=subjects.events_stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=_from(first),
    )

    async def covered_to_last() -> None:
        # The filter has nothing more up to `last`. Unfiltered, a range whose end is gone
        # (deleted after fan-out passed it) stops short and is reported; filtered, the same
        # holds only if the stream still has message `last`, whoever's it is.
        if await _holds(js, subjects, last):
            reached.seq = last

    try:
        if subject is not None and await _nothing_for(sub):
            await covered_to_last()  # nothing of this filter from `first` on: no timeout wait
            return
        while True:
            try:
                msg = await sub.next_msg(timeout=REPLAY_MSG_TIMEOUT_S)
            except TimeoutError:
                return
            meta = msg.metadata
            seq = meta.sequence.stream
            if seq > last:
                if subject is not None:
                    await covered_to_last()  # the filter's next message is past the range
                return
            yield msg
            reached.seq = seq
            if seq >= last:
                return
            if meta.num_pending == 0:
                if subject is not None:
                    await covered_to_last()  # the filter has nothing more in the stream
                return
    finally:
        await sub.unsubscribe()


async def _nothing_for(sub: JetStreamContext.PushSubscription) -> bool:
    """Whether a new consumer's filter matches no message at all. The server pushes at once,
    so "none pending" alone may mean "all delivered already": none delivered either."""
    info = await sub.consumer_info()
    delivered = info.delivered.consumer_seq if info.delivered is not None else None
    return info.num_pending == 0 and delivered == 0


async def _holds(js: JetStreamContext, subjects: Subjects, seq: int) -> bool:
    """Whether the events stream still holds message `seq`."""
    try:
        await js.get_msg(subjects.events_stream, seq)
    except NotFoundError:
        return False
    return True
