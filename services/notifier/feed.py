"""The live feed: this replica's consumer on the events stream, kept following through NATS
reconnects and a stream made anew.

The consumer is ordered and ephemeral, held in the NATS server's memory. After a reconnect the
server (or the cluster node now serving us) may no longer have it, and nats-py would notice only
after two missed idle heartbeats (10 s or more), so the feed follows anew at once from what
fan-out has passed. A stream deleted and made again starts its sequences over: following from
the old position would wait, silently, until the new stream passed it. A periodic look at the
stream's bounds catches that; the caller is told (`on_reset`) and the feed follows the new stream
from its end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.notifier.stream import StreamBounds, bounds, follow
from shared.subjects import Subjects

log = logging.getLogger(__name__)

#: Back-off between attempts to make the consumer again (JetStream may need a moment).
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0


def was_reset(found: StreamBounds, followed: StreamBounds, position: int) -> bool:
    """Whether `found` is another stream than the `followed` one, made anew since: its creation
    time differs, or its last sequence, which never goes back (a purge keeps it), is behind
    what fan-out has passed."""
    if None not in (found.created, followed.created) and found.created != followed.created:
        return True
    return found.last_seq < position


class LiveFeed:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        handler: Callable[[Msg], Awaitable[None]],
        *,
        position: Callable[[], int],
        on_reset: Callable[[StreamBounds], None],
        ensure_stream: Callable[[], Awaitable[None]],
        check_s: float,
        on_following: Callable[[bool], None] = lambda _following: None,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._handler = handler
        #: The last stream seq fan-out has passed; the feed goes on right after it.
        self._position = position
        self._on_reset = on_reset
        self._ensure_stream = ensure_stream
        self._check_s = check_s
        #: Told each change of `following` (clients are told the feed is interrupted/back).
        self._on_following = on_following
        self._sub: JetStreamContext.PushSubscription | None = None
        #: The stream as found when the feed last followed it.
        self._followed = StreamBounds(first_seq=0, last_seq=0)
        self._lock = asyncio.Lock()
        self._refollow_wanted = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._following = False

    @property
    def following(self) -> bool:
        """Whether the consumer is in place (false from a reconnect until it is made again)."""
        return self._following

    def _set_following(self, following: bool) -> None:
        if following != self._following:
            self._following = following
            self._on_following(following)

    async def start(self, found: StreamBounds) -> None:
        """Follow from right after `position()`; `found` is the stream as the caller saw it."""
        self._followed = found
        self._sub = await follow(self._js, self._subjects, self._position() + 1, self._handler)
        self._set_following(True)
        self._spawn(self._watch(), "notifier-stream-watch")

    def reconnected(self) -> None:
        """NATS reconnected: follow anew (several reconnects in a row cost one refollow).

        Not following from now on: the old consumer may be gone with the server's memory, so
        until the new one is in place neither /readyz nor the clients are told "live"."""
        self._set_following(False)
        if not self._refollow_wanted:
            self._refollow_wanted = True
            self._spawn(self._refollow(), "notifier-refollow")

    async def stop(self) -> None:
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._drop()

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refollow(self) -> None:
        async with self._lock:
            self._refollow_wanted = False
            self._set_following(False)
            await self._drop()
            delay = RETRY_FIRST_S
            while True:
                try:
                    await self._check()
                    self._sub = await follow(
                        self._js, self._subjects, self._position() + 1, self._handler
                    )
                    break
                except Exception as exc:
                    log.warning("following the events stream again failed, retrying: %r", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
            self._set_following(True)
            log.info("following the events stream again from seq %d", self._position() + 1)

    async def looks_reset(self) -> bool:
        """One look at the stream: whether it was deleted (and maybe made anew) since followed."""
        # Read before the look: events fanned out while it is under way must not make the
        # stream seem to lag behind fan-out.
        position = self._position()
        try:
            found = await bounds(self._js, self._subjects)
        except NotFoundError:
            return True
        return was_reset(found, self._followed, position)

    async def _check(self) -> None:
        """Make the stream if it is missing; report a stream made anew."""
        position = self._position()
        try:
            found = await bounds(self._js, self._subjects)
        except NotFoundError:
            await self._ensure_stream()
            found = await bounds(self._js, self._subjects)
        if was_reset(found, self._followed, position):
            log.warning(
                "events stream %s was made anew (last seq %d, fan-out passed %d)",
                self._subjects.events_stream,
                found.last_seq,
                position,
            )
            self._on_reset(found)
        self._followed = found

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._check_s)
            try:
                reset = await self.looks_reset()
            except Exception as exc:  # NATS away: the reconnect makes the feed again
                log.debug("stream check failed: %r", exc)
                continue
            if reset and not self._refollow_wanted:
                self._refollow_wanted = True
                await self._refollow()

    async def _drop(self) -> None:
        old, self._sub = self._sub, None
        if old is not None:
            try:
                await old.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe of the old consumer failed: %s", exc)
