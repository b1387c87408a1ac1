"""Fan-out: every event serialized once and written to each entitled client without awaiting.

A client's queue is its transport's write buffer. Writing is synchronous (as
`websockets.broadcast` does), so one stuck socket never delays the others; when a buffer passes
`client_queue_bytes` that client is closed with 4008 and dropped from fan-out. All clients'
queues together are held to `buffer_budget`: past it the clients holding the most are cut the
same way, so a burst while many clients read slowly cannot take the process's memory.

Clients are grouped by what decides delivery, (scope's rows, filters), so each event is checked
once per group, and framed once: every member's transport gets the same WebSocket frame bytes.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from services.notifier.clients import Client, Group, GroupKey
from services.notifier.filters import Filter, delivers
from services.notifier.metrics import Metrics
from services.notifier.scopes import ScopeKey, scope_key
from services.notifier.summary import Outgoing, control_frame
from shared.access import Scope

log = logging.getLogger(__name__)

#: Close codes of the protocol (docs/notifier.md).
CLOSE_GOING_AWAY = 1001
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
CLOSE_SLOW = 4008
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_MANY = 4429
#: A close frame's reason is at most 123 bytes of UTF-8 (RFC 6455 5.5.1).
CLOSE_REASON_MAX_BYTES = 123
#: Over budget, clients are cut until the queues hold at most this share of it: each cut then
#: makes room for a while, and a burst does not cut (and sort the queues) at every write.
BUDGET_LOW_WATER = 7 / 8
#: Budget cuts less than this far apart are one episode, logged once.
BUDGET_EPISODE_GAP_S = 60.0


def close_reason(text: str) -> str:
    """`text` cut to what a close frame can carry, never inside a character (a longer reason
    cannot be sent at all: the close fails and the client sees 1011)."""
    return text.encode()[:CLOSE_REASON_MAX_BYTES].decode(errors="ignore")


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented server text frame (RFC 6455 5.2); the server sends no
    extensions (compression is off), so these are exactly the bytes `send_text` would write.
    """
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def close_soon(conn: ServerConnection, code: int, reason: str, grace_s: float) -> None:
    """A close frame behind what the client has queued, then abort after `grace_s`, whether
    or not the client answered: the closing handshake does not get `close_timeout_s` to hold
    the socket (and its buffer) open."""
    try:
        if conn.protocol.state is State.OPEN:
            conn.protocol.send_close(code, reason)
            conn.send_data()
    except Exception as exc:
        log.debug("close frame failed: %s", exc)
    asyncio.get_running_loop().call_later(grace_s, conn.transport.abort)


def close_slow(conn: ServerConnection, reason: str, grace_s: float) -> None:
    """4008 behind what the client has queued, then abort after `grace_s`: the close frame
    waits behind the buffered data, so a reader that wakes up within the grace sees 4008, and
    a dead one is aborted so that its buffer is freed."""
    close_soon(conn, CLOSE_SLOW, f"slow consumer: {reason}", grace_s)


class Hub:
    def __init__(
        self,
        metrics: Metrics,
        *,
        queue_bytes: int,
        pending_max: int,
        slow_close_grace_s: float,
        ring_size: int = 10_000,
        buffer_budget: int | None = None,
    ) -> None:
        self.metrics = metrics
        self.queue_bytes = queue_bytes
        #: Bytes all clients' queues may hold together (None: no limit but each client's own).
        self.buffer_budget = buffer_budget
        self._budget = float("inf") if buffer_budget is None else buffer_budget
        #: Sum of every client's `queued`, kept as each changes: checking it costs one compare.
        self.queued_bytes = 0
        #: Clients whose `queued` is not 0; fast readers' buffers stay empty, so this is small
        #: and is all that needs looking at again when the sum passes the budget.
        self._queuing: set[Client] = set()
        #: When the last budget cut was (monotonic), to log once per episode.
        self._last_budget_cut = -float("inf")
        metrics.queued_bytes.set_function(lambda: self.queued_bytes)
        self.pending_max = pending_max
        self.slow_close_grace_s = slow_close_grace_s
        self.clients: set[Client] = set()
        #: Open clients per caller (the key their scope is cached under).
        self._per_caller: Counter[ScopeKey] = Counter()
        self.groups: dict[GroupKey, Group] = {}
        #: Last stream seq fan-out has passed; set by the live consumer before the first event.
        self.last_seq = 0
        #: Recent events for cheap resumes; it holds every valid event with seq > ring_floor.
        self.ring: deque[Outgoing] = deque(maxlen=ring_size)
        self.ring_floor = 0
        #: Whether the live consumer delivers (NATS connected, consumer in place); clients are
        #: told each change with `feed_status` (`set_feed_live`).
        self.feed_live = True
        #: Closing handshakes under way (`close`), referenced so they are not collected.
        self._closing: set[asyncio.Task[None]] = set()

    def start_at(
        self, last_seq: int, recent: Sequence[Outgoing] = (), floor: int | None = None
    ) -> None:
        """The stream's last seq when the live consumer starts after it, and what the ring holds
        then: `recent`, every valid event with seq in `floor+1..last_seq`, or nothing."""
        self.last_seq = last_seq
        self.ring.clear()
        self.ring.extend(recent)
        self.ring_floor = last_seq if floor is None else floor
        kept = self.ring.maxlen or 0
        if len(recent) > kept:
            self.ring_floor = recent[len(recent) - kept - 1].seq

    def add(self, client: Client) -> None:
        self.clients.add(client)
        self._per_caller[scope_key(client.claims)] += 1
        self._join(client)
        self.metrics.connections.set(len(self.clients))

    def remove(self, client: Client) -> None:
        if client in self.clients:
            key = scope_key(client.claims)
            self._per_caller[key] -= 1
            if self._per_caller[key] <= 0:
                del self._per_caller[key]
        self.clients.discard(client)
        self._leave(client)
        client.pending.clear()
        # Its buffer is no longer fan-out's to bound: being closed, it only drains or is aborted.
        self._track(client, 0)
        self.metrics.connections.set(len(self.clients))

    def set_filter(self, client: Client, flt: Filter) -> None:
        """Replace a client's filters (a later `subscribe`), moving it to its new group."""
        if flt == client.filter:
            return
        client.filter = flt
        if client.group is not None:
            self._leave(client)
            self._join(client)

    def set_scope(self, client: Client, scope: Scope) -> None:
        """Replace a client's scope (its caller's access was reloaded), moving it to its group.

        Fan-out decides by group, so from this call on only what the new scope allows is sent;
        events already held for the client are checked again when `go_live` sends them.
        """
        if client not in self.clients:
            return
        moved = scope.cache_key != client.scope.cache_key
        client.scope = scope
        if moved and client.group is not None:
            self._leave(client)
            self._join(client)

    def _join(self, client: Client) -> None:
        key: GroupKey = (client.scope.cache_key, client.filter)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(key, client.scope, client.filter)
        group.members[client] = None
        client.group = group

    def _leave(self, client: Client) -> None:
        group = client.group
        if group is None:
            return
        client.group = None
        group.members.pop(client, None)
        if not group.members and self.groups.get(group.key) is group:
            del self.groups[group.key]

    def publish(self, out: Outgoing, published_at: float | None = None) -> None:
        """Fan one event out. Synchronous on purpose: nothing here waits for any client."""
        self.last_seq = out.seq
        if self.ring.maxlen is not None and len(self.ring) == self.ring.maxlen:
            self.ring_floor = self.ring[0].seq
        self.ring.append(out)
        sent = 0
        meta = out.meta
        frame: bytes | None = None
        for group in tuple(self.groups.values()):
            if not delivers(group.scope, group.filter, meta):
                continue
            if frame is None:
                frame = text_frame(out.payload)
            for client in tuple(group.members):
                if client.live:
                    sent += self._write(client, out.seq, frame)
                else:
                    client.pending.append(out)
                    if len(client.pending) > self.pending_max:
                        self.cut_off(client, "replay_backlog")
        self.metrics.events.inc()
        if sent:
            self.metrics.messages_sent.labels("live").inc(sent)
        if published_at is not None:
            self.metrics.delivery_lag.observe(max(0.0, time.time() - published_at))

    def _write(self, client: Client, seq: int, frame: bytes) -> int:
        """Write a pre-built frame straight into the client's transport.

        What `protocol.send_text` + `send_data` would do, minus building the frame again for
        every client. It is safe because the connection flushes the protocol's own output
        (pongs, close frames) synchronously after producing it, so nothing is queued there
        for this frame to overtake, and the server never sends fragmented messages.
        """
        if seq <= client.last_seq:
            # Already seen: a client that resumed from another replica ahead of this one is
            # up to date past what fan-out here has passed (`ready` told it so).
            return 0
        conn = client.conn
        if conn.protocol.state is not State.OPEN:
            self.remove(client)
            return 0
        transport = conn.transport
        if transport.get_write_buffer_size() > self.queue_bytes:
            self.metrics.drops.inc()
            self.cut_off(client, "queue_full")
            return 0
        try:
            transport.write(frame)
        except Exception as exc:  # a broken socket must not stop the fan-out
            log.debug("write to client failed: %s", exc)
            self.remove(client)
            return 0
        client.last_seq = seq
        client.sent_event = True
        # Most writes go straight to the kernel and leave the buffer empty, as it was.
        queued = transport.get_write_buffer_size()
        if queued != client.queued:
            self._track(client, queued)
            if self.queued_bytes > self._budget:
                self._enforce_budget()
        return 1

    def _track(self, client: Client, queued: int) -> None:
        """Record what the client's buffer holds now, keeping `queued_bytes` the exact sum."""
        before = client.queued
        if queued == before:
            return
        self.queued_bytes += queued - before
        client.queued = queued
        if not before:
            self._queuing.add(client)
        elif not queued:
            self._queuing.discard(client)

    def _enforce_budget(self) -> None:
        """All queues together passed the budget: cut the clients holding the most.

        What a buffer held at its last write may have drained since, so the non-empty ones are
        looked at again first; only if still over are the largest cut (4008, the slow-client
        path), down to `BUDGET_LOW_WATER` of the budget. Fast readers hold (next to) nothing,
        so they are the last candidates and in practice never cut.
        """
        for client in tuple(self._queuing):
            self._track(client, client.conn.transport.get_write_buffer_size())
        if self.queued_bytes <= self._budget:
            return
        total = self.queued_bytes
        target = self._budget * BUDGET_LOW_WATER
        cut = 0
        for client in sorted(self._queuing, key=lambda c: c.queued, reverse=True):
            if self.queued_bytes <= target:
                break
            self.cut_off(client, "buffer_budget", quiet=True)
            self._track(client, 0)  # already done by `remove`, unless it was not in `clients`
            cut += 1
        self.metrics.buffer_budget_cuts.inc(cut)
        now = time.monotonic()
        if now - self._last_budget_cut > BUDGET_EPISODE_GAP_S:
            log.warning(
                "clients' queues hold %d bytes in all, past the buffer budget of %d: closing "
                "the %d holding the most (4008); further cuts until %.0f s pass without one "
                "are only counted (notifier_buffer_budget_cuts_total)",
                total,
                self.buffer_budget,
                cut,
                BUDGET_EPISODE_GAP_S,
            )
        self._last_budget_cut = now

    def go_live(self, client: Client, ready_seq: int) -> None:
        """End the hand-over: `ready`, then held events past what replay sent, then live.

        All in one synchronous step, so no live event can slip in between (no gap, no duplicate).
        Held events were matched against the scope and filters in force when they were fanned
        out (in the hello window: no filters yet), so each is checked again against today's.
        """
        if client not in self.clients:
            return
        conn = client.conn
        try:
            conn.protocol.send_text(control_frame("ready", seq=max(ready_seq, client.last_seq)))
            conn.send_data()
        except Exception:
            self.remove(client)
            return
        held, client.pending = client.pending, deque()
        sent = 0
        for out in held:
            if out.seq > client.last_seq and delivers(client.scope, client.filter, out.meta):
                sent += self._write(client, out.seq, text_frame(out.payload))
                if client not in self.clients:
                    return
        client.live = True
        if sent:
            self.metrics.messages_sent.labels("held").inc(sent)
        # Connected (or held for a late resume) while the feed changed: told now, after `ready`.
        self._tell_feed(client)

    def set_feed_live(self, live: bool) -> None:
        """The live consumer stopped (NATS lost) or resumed delivering: tell every live client.

        Without it a client saw nothing during an outage, as on a quiet day, and a dashboard
        kept saying "live" over stale data. Held clients are told at `go_live`, after `ready`.
        """
        if live == self.feed_live:
            return
        self.feed_live = live
        for client in tuple(self.clients):
            if client.live:
                self._tell_feed(client)

    def _tell_feed(self, client: Client) -> None:
        """Send `feed_status` if the client was last told otherwise (synchronous, as `ready`)."""
        if client.told_live == self.feed_live:
            return
        fields: dict[str, object] = {"live": self.feed_live}
        if not self.feed_live:
            fields["reason"] = "event stream unavailable"
        try:
            client.conn.protocol.send_text(control_frame("feed_status", **fields))
            client.conn.send_data()
        except Exception as exc:
            log.debug("feed_status to client failed: %s", exc)
            self.remove(client)
            return
        client.told_live = self.feed_live

    def hold(self, client: Client) -> bool:
        """Take a live client that has had no event out of live delivery, for a late resume.

        Synchronous, so no event can be fanned out between the check and the switch: every
        event up to `last_seq` was not for this client, every later one is held in `pending`
        until `go_live`. False once the client has had an event frame: a replay now could
        only repeat events or send them out of order.
        """
        if client not in self.clients or not client.live or client.sent_event:
            return False
        client.live = False
        # Nothing was sent, so nothing needs deduplicating: the resume point decides alone.
        client.last_seq = 0
        return True

    def cut_off(self, client: Client, reason: str, *, quiet: bool = False) -> None:
        """Drop a client that cannot keep up: 4008 behind what it has, then abort after a grace.

        `quiet`: logged at debug only (budget cuts come many at once and are logged together).
        """
        if client not in self.clients:
            return
        self.metrics.drops.inc(len(client.pending))
        self.remove(client)
        self.metrics.slow_disconnects.labels(reason).inc()
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "closing slow client %s/%s: %s",
            client.claims.org,
            client.claims.sub,
            reason,
        )
        close_slow(client.conn, reason, self.slow_close_grace_s)

    def replay_from_ring(self, first: int) -> list[Outgoing] | None:
        """Events with seq >= first still in memory, or None if the ring does not reach back."""
        if first <= self.ring_floor:
            return None
        return [out for out in self.ring if out.seq >= first]

    def open_for(self, key: ScopeKey) -> int:
        """How many clients the caller with this scope key holds open."""
        return self._per_caller[key]

    def by_caller(self) -> dict[ScopeKey, list[Client]]:
        """Open clients by caller (the key their scope is cached under)."""
        callers: dict[ScopeKey, list[Client]] = {}
        for client in self.clients:
            callers.setdefault(scope_key(client.claims), []).append(client)
        return callers

    def close(self, clients: Iterable[Client], code: int, reason: str) -> None:
        """Drop clients from fan-out and close them with `code`: nothing reaches them after.

        The close frame goes out synchronously, so no replay or held event written later can
        slip out before it; the closing handshake (bounded by the close timeout) runs on.
        """
        loop = asyncio.get_running_loop()
        for client in tuple(clients):
            if client not in self.clients:
                continue
            self.remove(client)
            conn = client.conn
            try:
                if conn.protocol.state is State.OPEN:
                    conn.protocol.send_close(code, reason)
                    conn.send_data()
            except Exception as exc:
                log.debug("close frame failed: %s", exc)
            task = loop.create_task(conn.close(code, reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
