"""Test helpers: a stream holding one event per execution, and a pull from a busy loop."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from shared.subjects import Subjects
from tests.ingest.conftest import Wired, streams_of
from tests.ingest.events_factory import execution_events
from tests.ingest.test_ingest_service import publish

Fetch = Callable[..., Awaitable[list[Msg]]]
#: Where the consumer's counts are read: a pull subscription, or a call returning them.
InfoSource = JetStreamContext.PullSubscription | Callable[[], Awaitable[ConsumerInfo]]

#: The window of `fetch_from_busy_loop`'s fetch.
FETCH_WINDOW_S = 0.5


#: The streams of a test, holding what was published (see `one_event_per_execution`).
Published = Wired


@contextlib.asynccontextmanager
async def one_event_per_execution(
    nats_url: str, database_url: str, subjects: Subjects, org: str, count: int, tag: str
) -> AsyncIterator[Published]:
    """The ingest streams of `subjects`, holding the last event of `count` executions."""
    rng = random.Random(count)
    events = [execution_events(org, "ruby", f"{tag}{i:02d}", rng)[-1] for i in range(count)]
    async with streams_of(nats_url, database_url, subjects) as wired:
        await publish(wired.js, subjects, events)
        yield wired


def unpatched_fetch() -> Fetch:
    """nats-py's own fetch, and its own `next_msg` under it, even when
    shared/faststream_compat has wrapped them (in this process, for the duration of a call)."""
    fetch = JetStreamContext.PullSubscription.fetch
    own_fetch: Fetch = getattr(fetch, "__wrapped__", fetch)

    async def call(*args: Any, **kwargs: Any) -> list[Msg]:
        patched = Subscription.next_msg
        Subscription.next_msg = getattr(patched, "__wrapped__", patched)  # type: ignore[method-assign]
        try:
            return await own_fetch(*args, **kwargs)
        finally:
            Subscription.next_msg = patched  # type: ignore[method-assign]

    return call


async def fetch_from_busy_loop(
    sub: JetStreamContext.PullSubscription, batch: int, fetch: Fetch | None = None
) -> list[Msg]:
    """Fetch while the event loop is busy past the fetch window as the server answers.

    nats-py counts the window from the fetch's start but sends the pull request only once the
    loop is free again; from then the first message may take up to `FETCH_WINDOW_S` (a loaded
    machine needs that much), and the rest find the window gone.
    """
    fetch = fetch or JetStreamContext.PullSubscription.fetch
    task = asyncio.ensure_future(fetch(sub, batch, timeout=FETCH_WINDOW_S))
    await asyncio.sleep(0)  # the fetch sends its request and waits
    # The loop is busy past the window (only that matters, not by how much).
    time.sleep(FETCH_WINDOW_S * 2)  # noqa: ASYNC251
    return await task


async def acks_pending_settle(source: InfoSource, within: float = 5.0) -> int | None:
    """The consumer's unacknowledged count once it reaches 0 (the server applies acks
    asynchronously), or after `within` seconds.

    `source` is a pull subscription, or a call returning the consumer's info (e.g. through
    another connection once the one that pulled is gone).
    """
    info = source.consumer_info if isinstance(source, JetStreamContext.PullSubscription) else source
    deadline = time.monotonic() + within
    pending = (await info()).num_ack_pending
    while pending and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        pending = (await info()).num_ack_pending
    return pending
