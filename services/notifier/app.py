"""Composition root: NATS, the live consumer, the pool, the hub and the WebSocket server."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import asyncpg
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.protocol import State

from services.notifier.access import AccessGuard
from services.notifier.feed import LiveFeed
from services.notifier.handshake import choose_subprotocol
from services.notifier.http import make_process_request
from services.notifier.hub import CLOSE_SERVICE_RESTART, Hub, close_slow
from services.notifier.limits import SocketSlots
from services.notifier.metrics import Metrics
from services.notifier.repo import fetch_scope
from services.notifier.scopes import ScopeCache
from services.notifier.session import SessionDeps, handle
from services.notifier.settings import NotifierSettings
from services.notifier.stream import StreamBounds, bounds
from services.notifier.summary import build_outgoing, decode
from services.notifier.triggers import TriggerMemory
from services.notifier.warmup import read_recent
from shared.access import Scope
from shared.auth import Claims
from shared.db import create_pool
from shared.ratelimit import RateLimiter
from shared.shutdown import close_pool
from shared.streams import ensure_streams
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Seconds a step of the stop may wait on a dependency (the feed, the pool) before going on:
#: Kubernetes sends SIGKILL 30 s after SIGTERM, 5 of them spent in preStop
#: (deploy/k8s/base/notifier.yaml), and a hung database must not use them all.
_STOP_STEP_S = 5.0


class NotifierConnection(ServerConnection):
    """A server connection whose keepalive starts at a random point of its first interval.

    Connections opened together (a reconnect storm after a restart, a benchmark) would
    otherwise ping together every interval for the rest of their lives: a burst of 1,000
    pings and pongs that delays the event fanned out behind it. Later pings keep the interval.
    """

    #: Bytes queued for the client past which it is cut off (0: no limit until `limit_queue`).
    queue_bytes = 0
    slow_close_grace_s = 0.0
    on_cut_off: Callable[[], None] | None = None
    cut = False

    async def keepalive(self) -> None:
        assert self.ping_interval is not None
        await asyncio.sleep(random.uniform(0, self.ping_interval))
        await super().keepalive()

    def limit_queue(self, queue_bytes: int, grace_s: float, on_cut_off: Callable[[], None]) -> None:
        self.queue_bytes = queue_bytes
        self.slow_close_grace_s = grace_s
        self.on_cut_off = on_cut_off

    def data_received(self, data: bytes) -> None:
        if self.cut:
            return  # reading may be resumed by the message queue's flow control: ignore it
        super().data_received(data)
        # Every ping read is answered with a pong written into the client's queue, whether the
        # client reads or not, and fan-out only checks the queue when an event is for it. A
        # client flooding pings without reading grew it without bound (8 MB in a second), so
        # past the fan-out's limit it is a slow consumer too.
        # (A client already closing was cut off by fan-out or is leaving: not counted again.)
        if (
            self.queue_bytes
            and self.protocol.state is State.OPEN
            and self.transport.get_write_buffer_size() > self.queue_bytes
        ):
            self._cut_off()

    def _cut_off(self) -> None:
        """As `Hub.cut_off`: 4008 behind what is queued, abort after the grace. Nothing more is
        read, so no further pong is queued meanwhile (pongs are sent even while closing)."""
        self.cut = True
        self.transport.pause_reading()
        if self.on_cut_off is not None:
            self.on_cut_off()
        close_slow(self, "queue_full", self.slow_close_grace_s)


class Notifier:
    """One notifier replica; `start()` and `stop()` are its whole lifecycle."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.hub = Hub(
            self.metrics,
            queue_bytes=settings.client_queue_bytes,
            buffer_budget=settings.buffer_budget_bytes,
            pending_max=settings.replay_pending_max,
            slow_close_grace_s=settings.slow_close_grace_s,
            ring_size=settings.ring_size,
        )
        self.triggers = TriggerMemory()
        self.sockets = SocketSlots(settings.max_sockets)
        self.auth_failures = RateLimiter(
            per_minute=settings.auth_failure_per_minute,
            burst=settings.auth_failure_burst,
            max_callers=settings.auth_failure_addresses,
        )
        #: Turns of the replays that read the stream (past the ring), for all clients.
        self.stream_replays = asyncio.Semaphore(settings.replay_concurrency)
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._pool: asyncpg.Pool | None = None
        self._feed: LiveFeed | None = None
        self._server: Server | None = None
        self._guard_task: asyncio.Task[None] | None = None
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready and self.delivering

    @property
    def delivering(self) -> bool:
        """Whether events reach the hub: NATS connected and the live consumer in place."""
        return (
            self._feed is not None
            and self._feed.following
            and self._nc is not None
            and self._nc.is_connected
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    async def start(self) -> None:
        s = self.settings
        self._nc = await nats.connect(
            s.nats_url,
            name="fleetwatch-notifier",
            max_reconnect_attempts=-1,
            # A link cut without a reset is dropped, and clients told (shared/nats_keepalive.py).
            ping_interval=s.nats_keepalive.ping_interval,
            max_outstanding_pings=s.nats_keepalive.max_outstanding_pings,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._js = self._nc.jetstream()
        await ensure_streams(self._js, s)
        self._pool = await create_pool(s.database_url, min_size=1, max_size=s.db_pool_max)
        pool = self._pool

        async def load(claims: Claims) -> Scope:
            self.metrics.scope_loads.inc()
            return await fetch_scope(pool, claims)

        scopes = ScopeCache(
            load,
            ttl_s=s.scope_ttl_s,
            load_timeout_s=s.scope_load_timeout_s,
            on_failure=self.metrics.scope_load_failures.inc,
        )
        guard = AccessGuard(self.hub, scopes, s.jwt_leeway_s)
        # Start right after the stream's current end; every later event reaches the hub. What
        # came before is read back first, so a reconnect storm resumes from memory.
        start = await bounds(self._js, s.subjects)
        floor, recent = await read_recent(self._js, s.subjects, start, s.ring_size, self.triggers)
        self.hub.start_at(start.last_seq, recent, floor)
        js = self._js

        async def ensure_stream() -> None:
            await ensure_streams(js, s)

        self._feed = LiveFeed(
            js,
            s.subjects,
            self._on_message,
            position=lambda: self.hub.last_seq,
            on_reset=self._on_stream_reset,
            ensure_stream=ensure_stream,
            check_s=s.stream_check_s,
            on_following=lambda _following: self._feed_changed(),
        )
        await self._feed.start(start)
        deps = SessionDeps(
            settings=s,
            hub=self.hub,
            scopes=scopes,
            js=self._js,
            guard=guard,
            triggers=self.triggers,
            stream_replays=self.stream_replays,
            sockets=self.sockets,
            auth_failures=self.auth_failures,
        )

        def ping_flood() -> None:
            self.metrics.slow_disconnects.labels("queue_full").inc()

        async def handler(conn: ServerConnection) -> None:
            if isinstance(conn, NotifierConnection):
                conn.limit_queue(s.client_queue_bytes, s.slow_close_grace_s, ping_flood)
            await handle(conn, deps)

        self._server = await serve(
            handler,
            s.host,
            s.port,
            create_connection=NotifierConnection,
            process_request=make_process_request(self.metrics.registry, lambda: self.ready),
            select_subprotocol=lambda _conn, offered: choose_subprotocol(offered),  # type: ignore[arg-type,return-value]
            compression=None,  # per-message deflate would compress each frame once per client
            ping_interval=s.ping_interval_s,
            ping_timeout=s.ping_timeout_s,
            close_timeout=s.close_timeout_s,
            max_size=s.max_client_frame,
            logger=logging.getLogger("services.notifier.ws"),
        )
        self._guard_task = asyncio.create_task(guard.run(), name="notifier-access-guard")
        self._ready = True
        self._feed_changed()  # NATS may have been lost while starting
        log.info("notifier listening on %s:%s", s.host, self.port)

    async def _on_disconnected(self) -> None:
        self._feed_changed()

    async def _on_reconnected(self) -> None:
        if self._feed is not None:
            self._feed.reconnected()
        self._feed_changed()

    def _feed_changed(self) -> None:
        """Tell the clients whether the feed delivers (`feed_status`): while NATS is lost they
        would otherwise get nothing, as on a quiet day. Said as /readyz says it; back to live
        once the consumer is in place again (events missed meanwhile follow from it)."""
        if self._ready:  # not while starting (nobody connected) or stopping (closing anyway)
            self.hub.set_feed_live(self.delivering)

    def _on_stream_reset(self, found: StreamBounds) -> None:
        """The stream was made anew: every client holds sequences it no longer has. Closed with
        1012, they reconnect, resume and are told to reload (`unknown_sequence`)."""
        self.hub.close(tuple(self.hub.clients), CLOSE_SERVICE_RESTART, "event stream reset, resume")
        self.hub.start_at(found.last_seq)

    async def _on_message(self, msg: Msg) -> None:
        try:
            meta = msg.metadata
            seq = meta.sequence.stream
            if seq <= self.hub.last_seq:
                return  # already fanned out (an old consumer's message after a refollow)
            event = decode(self.settings.subjects, msg.subject, msg.data)
            if event is None:
                self.metrics.invalid_events.inc()
                self.hub.last_seq = seq
                return
            out = self.triggers.enrich(build_outgoing(seq, event))
            self.hub.publish(out, published_at=meta.timestamp.timestamp())
        except Exception:  # one bad message must not stop the feed
            log.exception("fan-out failed for %s", msg.subject)
        # nats-py hands queued messages over without yielding; during a burst that would starve
        # handshakes, pings and client frames, so give the loop a turn after each event.
        await asyncio.sleep(0)

    async def stop(self) -> None:
        """Close every socket with 1001 "going away", then let go of NATS and Postgres."""
        self._ready = False
        if self._guard_task is not None:
            await cancel_and_wait(self._guard_task)
        if self._server is not None:
            self._server.close(close_connections=True)
            try:
                # Each socket's closing handshake is bounded by close_timeout_s already.
                async with asyncio.timeout(self.settings.close_timeout_s + _STOP_STEP_S):
                    await self._server.wait_closed()
            except TimeoutError:
                log.warning("stop went on with WebSocket sessions still ending")
        if self._feed is not None:
            try:
                async with asyncio.timeout(_STOP_STEP_S):
                    await self._feed.stop()
            except TimeoutError:
                log.warning("stop went on with the live feed still ending")
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
        if self._pool is not None:
            # A scope load given up on a hung database may still hold a connection.
            await close_pool(self._pool, _STOP_STEP_S)


def create_app(settings: NotifierSettings) -> Notifier:
    return Notifier(settings)
