"""One WebSocket connection: authenticate, take filters, replay what was missed, then stay live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from dataclasses import dataclass

import nats.errors
from nats.js import JetStreamContext
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from services.notifier.access import AccessGuard
from services.notifier.clients import Client
from services.notifier.filters import (
    NOTHING,
    ClientFrame,
    Filter,
    FrameError,
    delivers,
    parse_frame,
)
from services.notifier.handshake import initial_frame, offered_subprotocols, token_from
from services.notifier.hub import (
    CLOSE_TOO_MANY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
    Hub,
    close_reason,
    close_soon,
)
from services.notifier.limits import SocketSlots
from services.notifier.resume import Replay, Resync, UpToDate, plan_resume
from services.notifier.scopes import ScopeCache, scope_key
from services.notifier.settings import NotifierSettings
from services.notifier.stream import Reached, bounds, read_range
from services.notifier.summary import build_outgoing, control_frame, decode
from services.notifier.triggers import TriggerMemory
from shared.auth import AuthError, AuthUnavailable, Claims, verify_token
from shared.client_address import client_address
from shared.ratelimit import RateLimiter, address_key

log = logging.getLogger(__name__)


#: After the hello window, how long a last look for a frame that arrived in time may take.
HELLO_LAST_LOOK_S = 0.01
#: How long a socket refused at NOTIFIER_MAX_SOCKETS has to read its 1013 before it is cut.
REFUSED_GRACE_S = 0.5


@dataclass(frozen=True, slots=True)
class SessionDeps:
    settings: NotifierSettings
    hub: Hub
    scopes: ScopeCache
    js: JetStreamContext
    guard: AccessGuard
    triggers: TriggerMemory
    #: Replays reading the stream at once (each through its own consumer), for all clients.
    stream_replays: asyncio.Semaphore
    #: Open sockets of the process (`settings.max_sockets`).
    sockets: SocketSlots
    #: Failed authentications per client address (`settings.auth_failure_*`).
    auth_failures: RateLimiter


async def handle(conn: ServerConnection, deps: SessionDeps) -> None:
    """The whole life of one `/ws` connection."""
    # Before the token is read: a process at its limit spends nothing on the newcomer.
    if not deps.sockets.take():
        deps.hub.metrics.socket_limit_closes.inc()
        # Not `conn.close()`: a client that never answers the close frame would keep the
        # socket for `close_timeout_s` outside the cap. The frame, then the socket is gone.
        close_soon(conn, CLOSE_TRY_AGAIN, "notifier at its connection limit", REFUSED_GRACE_S)
        await conn.wait_closed()
        return
    try:
        await _session(conn, deps)
    finally:
        deps.sockets.release()


async def _session(conn: ServerConnection, deps: SessionDeps) -> None:
    claims = await _authenticate(conn, deps)
    if claims is None:
        return
    try:
        scope = await deps.scopes.get(claims)
    except Exception:
        log.exception("scope lookup failed")
        await conn.close(CLOSE_TRY_AGAIN, "access lookup failed, retry")
        return
    # Counted and added with no await between: connections arriving together cannot all pass.
    limit = deps.settings.max_sockets_per_caller
    if deps.hub.open_for(scope_key(claims)) >= limit:
        deps.hub.metrics.caller_limit_closes.inc()
        await conn.close(CLOSE_TOO_MANY, f"more than {limit} connections for this caller")
        return
    _limit_send_buffer(conn, deps.settings.socket_sndbuf)
    client = Client(conn, claims, scope)
    deps.hub.add(client)
    deps.guard.watch(client)
    try:
        first = initial_frame(conn.request.path if conn.request else "")
        if first is None:
            first = await _hello(conn, deps.settings.hello_timeout_s)
        await _start(client, first, deps)
        async for data in conn:
            await _on_frame(client, parse_frame(data), deps, started=True)
    except ConnectionClosed:
        pass
    finally:
        deps.guard.forget(client)
        deps.hub.remove(client)


async def _authenticate(conn: ServerConnection, deps: SessionDeps) -> Claims | None:
    request = conn.request
    assert request is not None
    offered = offered_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol"))
    token = token_from(request.path, offered)
    if not token:
        await _refuse(conn, deps, "missing token")
        return None
    try:
        return await verify_token(token, deps.settings)
    except AuthError as exc:
        # The message may quote the token (an unknown `kid`), in any script.
        await _refuse(conn, deps, close_reason(str(exc)))
        return None
    except AuthUnavailable as exc:
        # The token was not judged: the client should retry, not ask its user to log in again.
        await conn.close(CLOSE_TRY_AGAIN, close_reason(str(exc)))
        return None


async def _refuse(conn: ServerConnection, deps: SessionDeps, reason: str) -> None:
    """Close a failed authentication with 4401, or with 4429 once the client's address has used
    up its budget of failures: a client cycling bad tokens gets its refusals slowed down, and a
    metric shows it. Only failures spend it; a good token from the same address is still
    admitted (clients behind one NAT share it, and one broken script there must not lock the
    others out). The address is the peer's, or the client a trusted proxy names
    (`trusted_proxies`: behind an ingress every peer is the ingress)."""
    remote = conn.remote_address
    peer = remote[0] if isinstance(remote, tuple) else remote or None
    forwarded = conn.request.headers.get_all("X-Forwarded-For") if conn.request else []
    host = client_address(peer, forwarded, deps.settings.trusted_proxies)
    wait = deps.auth_failures.check(address_key(host))
    if wait is not None:
        deps.hub.metrics.auth_limited.inc()
        retry = max(1, math.ceil(wait))
        await conn.close(
            CLOSE_TOO_MANY,
            f"too many failed authentications from this address, retry after {retry} s",
        )
        return
    deps.hub.metrics.auth_failures.inc()
    await conn.close(CLOSE_UNAUTHORIZED, reason)


def _limit_send_buffer(conn: ServerConnection, size: int) -> None:
    if size <= 0:
        return
    sock = conn.transport.get_extra_info("socket")
    if sock is not None:
        # The client may have left during the access lookup (its socket is closed): the
        # session then ends at its first read, as any closed connection's does.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


async def _hello(conn: ServerConnection, timeout_s: float) -> ClientFrame | FrameError | None:
    """Give the client a moment to send filters and `resume_from` before anything flows."""
    try:
        async with asyncio.timeout(timeout_s):
            data = await conn.recv()
    except TimeoutError:
        # On a loop busy past the window (a reconnect storm), uvloop runs the window's timer
        # before it polls the sockets, so a frame that arrived in time may not have been read
        # yet. Cancelling the first `recv` took a loop turn, which read it: look once more.
        try:
            async with asyncio.timeout(HELLO_LAST_LOOK_S):
                data = await conn.recv()
        except TimeoutError:
            return None
    return parse_frame(data)


async def _on_frame(
    client: Client, frame: ClientFrame | FrameError, deps: SessionDeps, *, started: bool
) -> int | None:
    """Apply a frame; answer errors with an `error` frame. Returns a resume point if asked for."""
    hub = deps.hub
    if isinstance(frame, FrameError):
        hub.metrics.frame_errors.inc()
        await _send_error(client, frame.error, frame.detail)
        return None
    if frame.subscribe is not None:
        hub.set_filter(client, Filter.from_subscribe(frame.subscribe))
    if not started:
        return frame.resume_from
    # An honoured late resume ends with a second `ready`; a refused one (an `error`) still set
    # the frame's filters, which a `subscribed` confirms as for any later `subscribe`.
    if frame.resume_from is not None and await _late_resume(client, frame.resume_from, deps):
        return None
    if frame.subscribe is not None:
        await client.conn.send(control_frame("subscribed"), text=True)
    return None


async def _send_error(client: Client, error: str, detail: str) -> None:
    await client.conn.send(control_frame("error", error=error, detail=detail[:500]), text=True)


async def _start(client: Client, first: ClientFrame | FrameError | None, deps: SessionDeps) -> None:
    if isinstance(first, FrameError):
        # The client asked for something we could not read, most likely filters: it gets
        # nothing until a valid `subscribe` (`{}` for everything), never the whole feed. Having
        # had no event frame, it may still send `resume_from` with it.
        deps.hub.set_filter(client, NOTHING)
    resume_from = None if first is None else await _on_frame(client, first, deps, started=False)
    await _catch_up(client, resume_from, deps)


async def _late_resume(client: Client, resume_from: int, deps: SessionDeps) -> bool:
    """A `resume_from` after live delivery began (the first frame missed the hello window).

    Under load a client's first frame can reach us after the window although the client sent
    it at once; as long as it has had no event frame, taking it out of live delivery and
    resuming is exactly what an in-time frame would have got. After its first event, a replay
    could only repeat events or send them out of order, so the frame is refused. So is any
    resume after the first one of the connection: each opens a replay, and the one that
    matters (the first, after a reconnect) has been served. Returns whether it was honoured.
    """
    hub = deps.hub
    if client.resumed:
        hub.metrics.frame_errors.inc()
        await _send_error(
            client,
            "resume_too_late",
            "resume_from is honoured once per connection; reconnect to resume",
        )
        return False
    if not hub.hold(client):
        hub.metrics.frame_errors.inc()
        await _send_error(
            client,
            "resume_too_late",
            "resume_from is honoured until the first event is sent; reconnect to resume",
        )
        return False
    await _catch_up(client, resume_from, deps)
    return True


async def _catch_up(client: Client, resume_from: int | None, deps: SessionDeps) -> None:
    """Replay what was missed (if asked), then hand over to live.

    The client is held (not live) since `Hub.add` or `Hub.hold`, so every event fanned out
    since then is in `pending`: events up to `live_seq` come from the replay, later ones from
    `pending`, and `go_live` drops held ones the replay already covered.
    """
    hub = deps.hub
    live_seq = hub.last_seq
    if resume_from is not None:
        client.resumed = True
        try:
            await _resume(client, resume_from, live_seq, deps)
        except nats.errors.Error as exc:
            # NATS cannot answer now (down, reconnecting, stream unavailable): what was missed
            # cannot be read, and going live would hide the gap. Reconnecting later with the
            # same `resume_from` loses nothing.
            log.warning("resume from %d failed, closing with 1013: %r", resume_from, exc)
            hub.metrics.resumes.labels("unavailable").inc()
            hub.close((client,), CLOSE_TRY_AGAIN, "event stream unavailable, retry")
            return
    hub.go_live(client, live_seq)


async def _resume(client: Client, resume_from: int, live_seq: int, deps: SessionDeps) -> None:
    hub = deps.hub
    subjects = deps.settings.subjects
    found = await bounds(deps.js, subjects)
    plan = plan_resume(
        resume_from, stream_first=found.first_seq, stream_last=found.last_seq, live_seq=live_seq
    )
    if isinstance(plan, UpToDate):
        hub.metrics.resumes.labels("up_to_date").inc()
        client.last_seq = resume_from
        return
    if isinstance(plan, Resync):
        hub.metrics.resumes.labels("resync").inc()
        frame = control_frame(
            "resync_required",
            reason=plan.reason,
            resume_from=resume_from,
            first_seq=plan.first_seq,
            last_seq=plan.last_seq,
        )
        await client.conn.send(frame, text=True)
        return
    assert isinstance(plan, Replay)
    client.last_seq = resume_from
    sent = 0
    held = hub.replay_from_ring(plan.first)
    if held is not None:
        hub.metrics.resumes.labels("ring").inc()
        for out in held:
            if out.seq > plan.last:
                break
            if delivers(client.scope, client.filter, out.meta):
                client.sent_event = True
                await client.conn.send(out.payload, text=True)
                sent += 1
            client.last_seq = out.seq
    else:
        # Only the caller's org: a replay past the ring must not read every org's events.
        reached = Reached()
        org_events = subjects.org_events(client.scope.org)
        # Hundreds of replay consumers at once (dashboards waking up past the ring) stall the
        # NATS server for every publisher (1,000: publishes time out), so they take turns.
        async with (
            deps.stream_replays,
            contextlib.aclosing(
                read_range(
                    deps.js, subjects, plan.first, plan.last, subject=org_events, reached=reached
                )
            ) as messages,
        ):
            async for msg in messages:
                if client.conn.protocol.state is not State.OPEN:
                    # The client left (the server does not cancel its handler): a replay
                    # matching nothing would read on for nobody, holding its turn and the
                    # caller's socket count until the range ends.
                    hub.metrics.resumes.labels("abandoned").inc()
                    return
                seq = msg.metadata.sequence.stream
                event = decode(subjects, msg.subject, msg.data)
                if event is not None:
                    # As live: a completion that omits its trigger still meets a trigger filter.
                    out = deps.triggers.enrich(build_outgoing(seq, event))
                    if delivers(client.scope, client.filter, out.meta):
                        client.sent_event = True
                        if not await _send_replayed(client, out.payload, deps):
                            return
                        sent += 1
                client.last_seq = seq
        client.last_seq = max(client.last_seq, reached.seq)
        if client.last_seq < plan.last:
            # The range could not be read to its end (messages expired meanwhile, or NATS
            # stalled): say so rather than hand over with a silent gap.
            hub.metrics.resumes.labels("resync").inc()
            frame = control_frame(
                "resync_required",
                reason="replay_incomplete",
                resume_from=resume_from,
                first_seq=found.first_seq,
                last_seq=plan.last,
            )
            await client.conn.send(frame, text=True)
        else:
            hub.metrics.resumes.labels("stream").inc()
    if sent:
        hub.metrics.messages_sent.labels("replay").inc(sent)


async def _send_replayed(client: Client, payload: bytes, deps: SessionDeps) -> bool:
    """Send one replayed event; a client that takes nothing for `replay_send_timeout_s` is
    cut off as slow (4008), so that it does not keep a turn of the stream replays from the
    others until keepalive finds it dead. False when cut off."""
    try:
        async with asyncio.timeout(deps.settings.replay_send_timeout_s):
            await client.conn.send(payload, text=True)
    except TimeoutError:
        deps.hub.cut_off(client, "queue_full")
        return False
    return True
