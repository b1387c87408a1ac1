"""Fixes for the JetStream pull loop of faststream 0.7.8 and nats-py 2.x, applied where the
broker is built.

1. faststream catches `nats.errors.TimeoutError` around `fetch()`, but nats-py 2.16 raises the
   plain `asyncio.TimeoutError` when a fetch window ends empty. The error then escapes, the
   supervisor restarts the consume task, and the messages that task had already collected for
   the batch are neither handled nor nak'd: they come back only after `ack_wait` (30 s), which
   showed as 30-second p99 latencies in bench/ingest.py. Catching the builtin base class (of
   which the nats error is a subclass) keeps the partial batch.

2. nats-py's `fetch(batch, timeout)` takes the first message, then each further one with the
   time left of `timeout`, counted from the request. When the event loop is busy (ingest
   validating and folding other batches) the window is gone by the time the first message is
   read, so the fetch returns one message while the rest of the server's answer already sits
   in the subscription's queue. Under a backlog, batches alternated 1 and 1,000 messages
   (500 on average, each paying a transaction). The fetch now also takes, without waiting,
   what has already been delivered to it, up to `batch`; the next fetch would have taken
   those same messages first.

3. faststream fetches again with whatever is left of its window, which can be microseconds.
   nats-py turns a timeout into the pull request's `expires` minus 100 µs, so below that it
   sends the server a negative `expires`. A window shorter than `MIN_FETCH_WINDOW` now only
   takes what was already delivered and sends no request.

4. nats-py's `next_msg` creates a task, a uuid4 name and a `wait_for` timer for every message,
   even one already waiting in the queue; its fetch calls it once per message of a batch
   (~4% of ingest's CPU under a backlog). A message already queued is now taken at once, with
   the same checks and bookkeeping; an empty queue waits as before.

(With NATS 2.9.10, Debian's, the last ~9,000 messages of a 50,000-message backlog still
trickled in at a few hundred a second for ~10 s while nats-server used a whole core; 2.10.26
and 2.15.1 deliver them at full speed. See the README's performance section.)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from faststream.nats.subscriber.usecases import stream_pull_subscriber
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

_Fetch = Callable[..., Awaitable[list[Msg]]]

#: Shortest window worth a pull request to the server (seconds); see point 3 above.
MIN_FETCH_WINDOW = 0.002


def patch_pull_timeout() -> None:
    """Make faststream's pull loop treat every fetch timeout as an empty window (idempotent)."""
    setattr(stream_pull_subscriber, "TimeoutError", TimeoutError)  # noqa: B010


def take_delivered(subscription: Any, limit: int) -> list[Msg]:
    """Messages already delivered to a pull subscription's queue, without waiting.

    Status messages (end of a pull request, timeouts, heartbeats) are dropped, as nats-py's
    own fetch drops leftovers it finds there.
    """
    sub = getattr(subscription, "_sub", None)
    queue: asyncio.Queue[Msg] | None = getattr(sub, "_pending_queue", None)
    taken: list[Msg] = []
    if queue is None:
        return taken
    while len(taken) < limit and not queue.empty():
        msg = queue.get_nowait()
        sub._pending_size -= len(msg.data)  # type: ignore[union-attr]
        if JetStreamContext.is_status_msg(msg) is None:
            taken.append(msg)
    return taken


def patch_fetch_takes_delivered() -> None:
    """Make every pull fetch also return what was delivered to it meanwhile, and never send
    a request with a window too short for the server (idempotent)."""
    pull_subscription = JetStreamContext.PullSubscription
    original: _Fetch = pull_subscription.fetch
    if getattr(original, "_takes_delivered", False):
        return

    @functools.wraps(original)
    async def fetch(
        self: Any, batch: int = 1, timeout: float | None = 5, *args: Any, **kwargs: Any
    ) -> list[Msg]:
        if timeout is not None and timeout < MIN_FETCH_WINDOW:
            delivered = take_delivered(self, batch)
            if delivered:
                return delivered
            raise TimeoutError  # the window is over: faststream handles what it collected
        msgs = await original(self, batch, timeout, *args, **kwargs)
        if 0 < len(msgs) < batch:
            msgs.extend(take_delivered(self, batch - len(msgs)))
        return msgs

    fetch._takes_delivered = True  # type: ignore[attr-defined]
    pull_subscription.fetch = fetch  # type: ignore[method-assign]


def patch_next_msg_takes_queued() -> None:
    """Make `Subscription.next_msg` return an already queued message without a task and a
    timer (idempotent); see point 4 above."""
    original: Callable[..., Awaitable[Msg]] = Subscription.next_msg
    if getattr(original, "_takes_queued", False):
        return

    @functools.wraps(original)
    async def next_msg(self: Any, timeout: float | None = 1.0) -> Msg:
        queue: asyncio.Queue[Msg] | None = getattr(self, "_pending_queue", None)
        if (
            queue is None
            or queue.empty()
            or self._cb is not None
            or self._conn.is_closed
            or self._pending_next_msgs_calls  # someone already waits: keep their turn
        ):
            return await original(self, timeout)
        msg = queue.get_nowait()
        self._pending_size -= len(msg.data)
        queue.task_done()
        return msg

    next_msg._takes_queued = True  # type: ignore[attr-defined]
    Subscription.next_msg = next_msg  # type: ignore[method-assign]
