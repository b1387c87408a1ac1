"""Review 3 of the notifier, on the real NATS and Postgres: replicas, resumes, limits."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import websockets
from nats.js import JetStreamContext

from services.notifier import session
from services.notifier.stream import read_range
from shared.subjects import Subjects
from tests.notifier.helpers import (
    collect,
    connect_live,
    events_of,
    execution_event,
    publish,
    running,
    settings_for,
    token,
    ws_url,
)


async def test_a_resume_on_a_replica_behind_the_client_sends_nothing_twice(
    nats_url: str, database_url: str, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    """Replicas each follow the stream; one may be a little behind another. A client that saw
    seq N on replica A and reconnects to replica B before B has fanned N out is up to date
    (`ready` says N), so B must not send it N again, nor anything before it, once B catches up:
    that broke both "no duplicate" and "seq only ever increases"."""
    settings = settings_for(nats_url, database_url, subjects)
    tok = token(org, "boss", "admin")
    async with running(settings) as a, running(settings) as b:
        assert b._feed is not None
        await b._feed.stop()  # replica B falls behind: it fans nothing out for now
        on_a, _ = await connect_live(a.port, tok)
        seqs = [await publish(js, subjects, execution_event(org, "x")) for _ in range(3)]
        seen = [f["seq"] for f in events_of(await collect(on_a, until_seq=seqs[-1]))]
        assert seen == seqs
        await on_a.close()
        on_b = await websockets.connect(ws_url(b.port, f"token={tok}&resume_from={seen[-1]}"))
        ready = orjson.loads(await asyncio.wait_for(on_b.recv(), 5))
        assert ready == {"type": "ready", "seq": seen[-1]}
        b._feed.reconnected()  # B follows again from where it was, and catches up
        later = await publish(js, subjects, execution_event(org, "x"))
        got = [f["seq"] for f in events_of(await collect(on_b, until_seq=later))]
        assert got == [later]
        await on_b.close()


async def test_replays_from_the_stream_take_turns(
    nats_url: str,
    database_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    org: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each resume past the ring reads the stream through its own consumer. Dashboards waking
    up together (all asleep past the ring's reach) started them all at once: 1,000 of them
    stalled the NATS server until every org's publishes timed out. They now take turns,
    `replay_concurrency` at a time, and each still gets exactly what it missed."""
    settings = settings_for(nats_url, database_url, subjects, ring_size=1, replay_concurrency=2)
    active = peak = 0

    async def counted(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.1)  # a replay takes a moment: the others overlap it
            async for msg in read_range(*args, **kwargs):
                yield msg
        finally:
            active -= 1

    monkeypatch.setattr(session, "read_range", counted)
    tok = token(org, "boss", "admin")
    async with running(settings) as app:
        seqs = [await publish(js, subjects, execution_event(org, "x")) for _ in range(5)]
        url = ws_url(app.port, f"token={tok}&resume_from={seqs[0]}")
        clients = await asyncio.gather(*(websockets.connect(url) for _ in range(12)))
        for ws in clients:
            frames = await collect(ws, until_seq=seqs[-1])
            assert [f["seq"] for f in events_of(frames)] == seqs[1:]
            await ws.close()
    assert peak == 2


async def test_a_client_that_stops_reading_during_a_replay_does_not_keep_its_turn(
    nats_url: str, database_url: str, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    """Replays from the stream take turns; one whose client reads nothing for
    `replay_send_timeout_s` is cut off as slow (4008) rather than holding its turn until
    keepalive finds it dead: clients that stop reading must not keep everybody else from
    resuming."""
    settings = settings_for(
        nats_url,
        database_url,
        subjects,
        ring_size=1,
        replay_concurrency=1,
        replay_send_timeout_s=0.5,
        ping_interval_s=60,
    )
    tok = token(org, "boss", "admin")
    async with running(settings) as app:
        seqs = [
            await publish(js, subjects, execution_event(org, "x", message="m" * 200))
            for _ in range(800)
        ]
        stuck = await _never_reading(app.port, f"token={tok}&resume_from={seqs[0]}")
        try:
            for _ in range(200):  # its replay takes the only turn, and gets stuck sending
                if app.stream_replays.locked():
                    break
                await asyncio.sleep(0.01)
            assert app.stream_replays.locked()
            url = ws_url(app.port, f"token={tok}&resume_from={seqs[-3]}")
            ws = await websockets.connect(url)
            frames = await collect(ws, until_seq=seqs[-1], limit_s=5)
            assert [f["seq"] for f in events_of(frames)] == seqs[-2:]
            await ws.close()
        finally:
            stuck.close()
        cut = None
        for _ in range(300):
            cut = app.metrics.registry.get_sample_value(
                "notifier_slow_client_disconnects_total", {"reason": "queue_full"}
            )
            if cut:
                break
            await asyncio.sleep(0.01)
        assert cut == 1


async def _never_reading(port: int, query: str) -> socket.socket:
    """A WebSocket client that opens the connection, then reads nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock
