"""Adversarial review of the WebSocket protocol, on the real NATS and Postgres.

An attacker with a valid token of org A (admin, user or client) tries to receive anything of
org B or of an agent not shared with them; a buggy client sends what it should not. Each
attempt is kept as a test: the server must refuse it, or survive it with bounded memory.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
import pytest_asyncio
import websockets
from nats.js import JetStreamContext

from services.notifier.app import Notifier
from shared.subjects import Subjects
from tests.notifier.helpers import (
    close_code,
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

QUEUE_BYTES = 64 * 1024


@pytest_asyncio.fixture
async def notifier(nats_url: str, database_url: str, subjects: Subjects) -> AsyncIterator[Notifier]:
    settings = settings_for(
        nats_url, database_url, subjects, client_queue_bytes=QUEUE_BYTES, slow_close_grace_s=0.5
    )
    async with running(settings) as app:
        yield app


async def _orgs(db: asyncpg.Connection, org: str) -> tuple[str, str]:
    """Org A (`org`) with users and shares, and an org B whose agent has the same name."""
    other = f"b{uuid.uuid4().hex[:10]}"
    await db.executemany("INSERT INTO organizations (org) VALUES ($1)", [(org,), (other,)])
    await db.executemany(
        "INSERT INTO users (org, user_id, role) VALUES ($1, $2, $3)",
        [(org, "owner", "user"), (org, "cust", "client"), (other, "owner", "user")],
    )
    await db.executemany(
        "INSERT INTO agents (org, name, owner) VALUES ($1, $2, $3)",
        [(org, "mine", "owner"), (org, "secret", None), (other, "mine", "owner")],
    )
    await db.execute(
        "INSERT INTO agent_shares (org, agent_name, user_id) VALUES ($1, 'mine', 'cust')", org
    )
    return org, other


async def test_filters_and_resume_points_never_reach_past_the_scope(
    notifier: Notifier, db: asyncpg.Connection, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    """Another org's agent names, wildcards, odd characters and huge lists as filters, and
    resume points anywhere in the (shared) stream: only the caller's own rows come back."""
    a, b = await _orgs(db, org)
    foreign = [await publish(js, subjects, execution_event(b, "mine")) for _ in range(3)]
    hidden = await publish(js, subjects, execution_event(a, "secret"))
    own = await publish(js, subjects, execution_event(a, "mine"))
    attempts: list[dict[str, object]] = [
        {"resume_from": 0},
        {"resume_from": foreign[0] - 1},
        {"resume_from": 0, "subscribe": {"agent_name": ["mine", "secret"]}},
        {"resume_from": 0, "subscribe": {"agent_name": [f"m{i}" for i in range(999)] + ["mine"]}},
    ]
    for role, user in (("admin", "boss"), ("user", "owner"), ("client", "cust")):
        for first in attempts:
            ws = await websockets.connect(
                ws_url(notifier.port),
                subprotocols=["bearer", token(a, user, role)],  # type: ignore[list-item]
            )
            await ws.send(orjson.dumps(first).decode())
            got = events_of(await collect(ws, until_seq=own))
            await ws.close()
            seqs = [e["seq"] for e in got]
            asked = first.get("subscribe", {"agent_name": ["mine", "secret"]})
            names = {"mine", "secret"} & set(asked["agent_name"])  # type: ignore[index]
            want = [own] if role != "admin" or "secret" not in names else [hidden, own]
            assert seqs == want, (role, first, seqs)
            assert {e["execution"]["agent_name"] for e in got} <= {"mine", "secret"}
    ws, _ = await connect_live(notifier.port, token(a, "owner", "user"))
    for bad in ("*", ">", "mine.>", "mine,secret", "../secret", "mine\u0000", "x" * 65):
        await ws.send(orjson.dumps({"subscribe": {"agent_name": [bad]}}).decode())
        answer = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer["type"] == "error", (bad, answer)
        assert answer["error"] == "invalid_frame", (bad, answer)
    for resume in ("-1", str(2**64), '"12"', "1.5", "true", "1e3", "[1]", "NaN"):
        fresh, _ = await connect_live(notifier.port, token(a, "owner", "user"))
        await fresh.send(f'{{"resume_from": {resume}}}')
        frames = await collect(fresh, idle_s=0.3)
        await fresh.close()
        assert not events_of(frames), (resume, frames)
    await ws.close()


async def test_the_url_token_or_resume_of_another_org_changes_nothing(
    notifier: Notifier, db: asyncpg.Connection, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    """Token in the subprotocol and another in the URL: the subprotocol's is the one used;
    a bad token anywhere is refused before any event."""
    a, b = await _orgs(db, org)
    seq_b = await publish(js, subjects, execution_event(b, "mine"))
    seq_a = await publish(js, subjects, execution_event(a, "mine"))
    query = f"token={token(b, 'owner', 'user')}&resume_from=0"
    ws = await websockets.connect(
        ws_url(notifier.port, query),
        subprotocols=["bearer", token(a, "cust", "client")],  # type: ignore[list-item]
    )
    got = events_of(await collect(ws, until_seq=seq_a))
    await ws.close()
    assert seq_b < seq_a
    assert [e["seq"] for e in got] == [seq_a]
    for bad in ("", "x", token(a, "cust", "client", ttl_s=-120), "a.b.c"):
        refused = await websockets.connect(ws_url(notifier.port, f"token={bad}&resume_from=0"))
        assert await close_code(refused, limit_s=5) == 4401, bad


async def test_binary_oversized_and_flooded_frames_keep_the_server_usable(
    notifier: Notifier, db: asyncpg.Connection, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    a, _ = await _orgs(db, org)
    ws, _ = await connect_live(notifier.port, token(a, "owner", "user"))
    await ws.send(b'{"subscribe": {}}')  # binary, valid JSON: applied like text
    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "subscribed"
    await ws.send(b"\xff\xfe\x00")
    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["error"] == "invalid_json"
    await ws.send("x" * (1 << 20))  # 1 MB
    assert await close_code(ws, limit_s=5) == 1009
    # Many sockets of one caller all work and all close cleanly.
    tok = token(a, "owner", "user")
    many = [
        ws for ws, _ in await asyncio.gather(*(connect_live(notifier.port, tok) for _ in range(50)))
    ]
    seq = await publish(js, subjects, execution_event(a, "mine"))
    for each in many:
        assert [e["seq"] for e in events_of(await collect(each, until_seq=seq))] == [seq]
        await each.close()
    assert await _drained(notifier)


async def _drained(app: Notifier) -> bool:
    for _ in range(100):
        if not app.hub.clients:
            return True
        await asyncio.sleep(0.05)
    return False


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + body


@pytest.mark.parametrize(("opcode", "cut"), [(0x9, True), (0x1, False)], ids=["ping", "bad_json"])
async def test_a_client_that_floods_and_never_reads_has_a_bounded_queue(
    notifier: Notifier, db: asyncpg.Connection, org: str, opcode: int, cut: bool
) -> None:
    """Every ping is answered with a pong written into the client's queue. A client that
    floods pings and never reads must not grow the server's buffer without bound: past
    `client_queue_bytes` it is closed (4008) and its socket freed, as a slow consumer is.
    Frames answered with an `error` frame are awaited, so the server just stops reading."""
    a, _ = await _orgs(db, org)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", notifier.port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws?token={token(a, 'owner', 'user')} HTTP/1.1\r\nHost: x\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    ping = _masked(opcode, b"p" * 125) * 64
    peak = 0
    try:
        for _ in range(1000):  # up to ~16 MB of pongs asked for
            await asyncio.wait_for(loop.sock_sendall(sock, ping), 2)
            await asyncio.sleep(0)
            peak = max(peak, _largest_queue(notifier))
            if not notifier.hub.clients and peak:
                break
    except (TimeoutError, OSError):
        pass  # the server stopped reading or closed us: what matters is its buffer
    finally:
        sock.close()
    assert peak <= QUEUE_BYTES + 256 * 1024, peak
    assert await _drained(notifier)
    cut_off = notifier.metrics.registry.get_sample_value(
        "notifier_slow_client_disconnects_total", {"reason": "queue_full"}
    )
    assert (cut_off or 0) == (1 if cut else 0)


def _largest_queue(app: Notifier) -> int:
    return max(
        (c.conn.transport.get_write_buffer_size() for c in app.hub.clients),
        default=0,
    )
