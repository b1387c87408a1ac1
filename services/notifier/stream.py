"""JetStream reads of the notifier: its own live ordered consumer, and per-client range replays."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

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


async def read_range(
    js: JetStreamContext, subjects: Subjects, first: int, last: int
) -> AsyncIterator[Msg]:
    """Messages with stream seq `first..last`, in order, via a short-lived ordered consumer."""
    if first > last:
        return
    sub = await js.subscribe(
        subjects.all_events,
        stream=subjects.events_stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=_from(first),
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=REPLAY_MSG_TIMEOUT_S)
            except TimeoutError:
                return
            meta = msg.metadata
            seq = meta.sequence.stream
            if seq > last:
                return
            yield msg
            if seq >= last or meta.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()
