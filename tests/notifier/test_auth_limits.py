"""What one notifier process lets in (real NATS, Postgres and WebSocket clients): failed
authentications per client address (NOTIFIER_AUTH_FAILURE_*), past which a failure closes with
4429 while a good token still connects, and open sockets in all (NOTIFIER_MAX_SOCKETS), past
which a socket closes with 1013 before anything is spent on it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
from collections.abc import Callable, Iterator

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from services.notifier.app import Notifier
from shared.auth import mint_token
from shared.subjects import Subjects
from tests.jwks import Jwks, serving
from tests.notifier.helpers import connect_live, running, settings_for, token, ws_url

BURST = 3
TOO_MANY = re.compile(r"too many failed authentications from this address, retry after (\d+) s")


async def _closed_with(port: int, tok: str | None) -> tuple[int | None, str | None]:
    """Connect (with the bearer subprotocol when `tok` is given) and read until the server
    closes; its close code and reason. Fails if the server sends a frame instead."""
    protocols = ["bearer", tok] if tok is not None else None
    ws = await websockets.connect(ws_url(port), subprotocols=protocols)  # type: ignore[arg-type]
    try:
        frame = await asyncio.wait_for(ws.recv(), 15)
    except ConnectionClosed:
        await ws.wait_closed()
        return ws.close_code, ws.close_reason
    await ws.close()
    raise AssertionError(f"connection accepted: {frame!r}")


def _sample(app: Notifier, name: str) -> float:
    return app.metrics.registry.get_sample_value(name) or 0.0


async def _until(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    """The server notices a client's close a moment after the client does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_bad_tokens_from_one_address_get_4429_once_its_budget_is_spent(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    # One failure refilled a minute: nothing comes back while the test runs.
    settings = settings_for(
        nats_url,
        database_url,
        subjects,
        auth_failure_burst=BURST,
        auth_failure_per_minute=1,
    )
    forged = mint_token(
        secret="another-secret-0123456789-abcdefghijkl", org=org, user="u1", role="admin"
    )
    good = token(org, "u1", "admin")
    async with running(settings) as app:
        # Good tokens spend nothing: more of them than the budget holds.
        for _ in range(BURST + 2):
            ws, _ready = await connect_live(app.port, good)
            await ws.close()
        # Missing, malformed and wrongly signed tokens spend it, each still refused with 4401.
        for bad in (None, "not-a-jwt", forged):
            code, _reason = await _closed_with(app.port, bad)
            assert code == 4401
        assert _sample(app, "notifier_auth_failures_total") == BURST
        assert _sample(app, "notifier_auth_limited_total") == 0
        # Spent: every further failure, of either kind, is 4429 with when to retry.
        for bad in (forged, None):
            code, reason = await _closed_with(app.port, bad)
            assert code == 4429
            found = TOO_MANY.fullmatch(reason or "")
            assert found is not None, reason
            assert 1 <= int(found.group(1)) <= 60
        assert _sample(app, "notifier_auth_limited_total") == 2
        assert _sample(app, "notifier_auth_failures_total") == BURST
        # A good token from the same address (another client behind the same NAT) connects.
        ws, ready = await connect_live(app.port, good)
        assert ready["type"] == "ready"
        # ...and gives the address no failures back.
        code, _reason = await _closed_with(app.port, forged)
        assert code == 4429
        await ws.close()


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    with serving() as found:
        yield found


async def test_tokens_not_judged_spend_no_failures(
    nats_url: str, database_url: str, subjects: Subjects, org: str, jwks: Jwks
) -> None:
    settings = settings_for(
        nats_url,
        database_url,
        subjects,
        FLEETWATCH_JWKS_URL=jwks.url,
        auth_failure_burst=BURST,
        auth_failure_per_minute=1,
    )
    async with running(settings) as app:
        jwks.stop()  # the identity provider cannot be reached: tokens are not judged
        unjudged = jwks.token({"sub": "u1", "org": org, "role": "admin"})
        for _ in range(BURST + 2):
            code, _reason = await _closed_with(app.port, unjudged)
            assert code == 1013
        for _ in range(BURST):
            code, _reason = await _closed_with(app.port, None)
            assert code == 4401
        code, _reason = await _closed_with(app.port, None)
        assert code == 4429


async def test_sockets_past_the_process_limit_get_1013_until_one_leaves(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    settings = settings_for(nats_url, database_url, subjects, max_sockets=2)
    good = token(org, "u1", "admin")
    async with running(settings) as app:
        first, _ = await connect_live(app.port, good)
        second, _ = await connect_live(app.port, token(org, "u2", "admin"))
        scope_loads = _sample(app, "notifier_scope_loads_total")
        # Refused before its token is read: a bad one is not counted as a failed authentication.
        for tok in (token(org, "u3", "admin"), "not-a-jwt"):
            code, reason = await _closed_with(app.port, tok)
            assert (code, reason) == (1013, "notifier at its connection limit")
        assert _sample(app, "notifier_socket_limit_closes_total") == 2
        assert _sample(app, "notifier_auth_failures_total") == 0
        # Nothing of the hub's was taken by the refused ones.
        assert _sample(app, "notifier_scope_loads_total") == scope_loads
        assert len(app.hub.clients) == 2
        assert _sample(app, "notifier_connections") == 2
        # A socket that left frees its place.
        await first.close()
        await _until(lambda: app.sockets.open == 1)
        again, ready = await connect_live(app.port, good)
        assert ready["type"] == "ready"
        code, _reason = await _closed_with(app.port, good)
        assert code == 1013
        assert _sample(app, "notifier_socket_limit_closes_total") == 3
        for ws in (second, again):
            with contextlib.suppress(ConnectionClosed):
                await ws.close()


async def _silent_socket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake, then nothing: it never reads nor answers a close frame."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def test_sockets_refused_at_the_process_limit_do_not_stay_open(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    """A refused socket waited out the closing handshake (`close_timeout_s`) before it was
    let go, so clients that never answer the close frame held sockets outside the cap: 50 of
    them were 51 open sockets with NOTIFIER_MAX_SOCKETS=1. Now each is cut soon after its 1013."""
    settings = settings_for(nats_url, database_url, subjects, max_sockets=1, close_timeout_s=30)
    async with running(settings) as app:
        ws, _ = await connect_live(app.port, token(org, "u1", "admin"))
        silent = [await _silent_socket(app.port) for _ in range(50)]
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5  # far below close_timeout_s
            for reader, _ in silent:
                # Everything the server sends (its 1013 frame), then the end of the stream.
                while not reader.at_eof():
                    assert loop.time() < deadline, "a refused socket is still open"
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(1 << 16), deadline - loop.time())
            assert app.sockets.open == 1
            assert _sample(app, "notifier_socket_limit_closes_total") == 50
        finally:
            for _, writer in silent:
                writer.close()
            await ws.close()
