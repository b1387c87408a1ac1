"""Tokens signed by an identity provider (JWKS), on a real key endpoint, NATS and Postgres.

The notifier's one event loop serves every socket, so fetching the provider's keys must not
block it; and a provider that cannot be reached is "try again" (1013), not a bad token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import jwt
import pytest
import pytest_asyncio
import websockets
from websockets.exceptions import ConnectionClosed

from services.notifier.app import Notifier
from shared.subjects import Subjects
from tests.jwks import Jwks, new_key, serving
from tests.notifier.helpers import SECRET, connect_live, running, settings_for, ws_url


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    with serving() as found:
        yield found


@pytest_asyncio.fixture
async def notifier(
    nats_url: str, database_url: str, subjects: Subjects, jwks: Jwks
) -> AsyncIterator[Notifier]:
    settings = settings_for(nats_url, database_url, subjects, FLEETWATCH_JWKS_URL=jwks.url)
    async with running(settings) as app:
        yield app


async def _close_code(port: int, token: str) -> int | None:
    ws = await websockets.connect(ws_url(port), subprotocols=["bearer", token])  # type: ignore[list-item]
    with contextlib.suppress(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 15)
    await ws.wait_closed()
    return ws.close_code


async def test_provider_tokens_are_accepted_and_forgeries_refused(
    notifier: Notifier, jwks: Jwks, org: str
) -> None:
    claims = {"sub": "u1", "org": org, "role": "admin"}
    ws, ready = await connect_live(notifier.port, jwks.token(claims))
    assert ready["type"] == "ready"
    await ws.close()
    forged = {
        "another_key": jwks.token(claims, key=new_key()),
        "unknown_kid": jwks.token(claims, kid="k9"),
        # Quoted in the error, which the close reason carries: cut to the protocol's 123 bytes,
        # not characters, or the close frame cannot be sent and the client sees 1011.
        "non_ascii_kid": jwks.token(claims, kid="é" * 80),
        # The development secret is not a key once a provider is configured.
        "hs256_secret": jwt.encode({**claims, "exp": int(time.time()) + 60}, SECRET, "HS256"),
    }
    codes = {kind: await _close_code(notifier.port, tok) for kind, tok in forged.items()}
    assert codes == dict.fromkeys(forged, 4401)


async def test_fetching_keys_does_not_stall_other_sockets(
    notifier: Notifier, jwks: Jwks, org: str
) -> None:
    jwks.delay_s = 1.5  # a slow identity provider, met by the first handshake

    def probe() -> float:
        """From another thread (this test shares the notifier's loop): how long /healthz
        takes while the key request is in flight."""
        deadline = time.monotonic() + 10
        while jwks.requests == 0:
            assert time.monotonic() < deadline, "the key request never came"
            time.sleep(0.005)
        started = time.monotonic()
        health = httpx.get(f"http://127.0.0.1:{notifier.port}/healthz", timeout=10)
        assert health.status_code == 200
        return time.monotonic() - started

    probing = asyncio.create_task(asyncio.to_thread(probe))
    handshake = asyncio.create_task(
        connect_live(notifier.port, jwks.token({"sub": "u1", "org": org, "role": "admin"}))
    )
    answered_in = await probing
    assert answered_in < 0.75, f"the loop was blocked {answered_in:.2f} s by the key fetch"
    ws, _ = await asyncio.wait_for(handshake, 15)
    await ws.close()


async def test_an_unreachable_provider_is_try_again_not_a_bad_token(
    notifier: Notifier, jwks: Jwks, org: str
) -> None:
    jwks.stop()
    token = jwks.token({"sub": "u1", "org": org, "role": "admin"})
    assert await _close_code(notifier.port, token) == 1013
    failures = notifier.metrics.registry.get_sample_value("notifier_auth_failures_total")
    assert not failures  # nobody offered a bad token
