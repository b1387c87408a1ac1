"""FLEETWATCH_TRUSTED_PROXIES: behind an ingress every connection's peer is the ingress, so
query and notifier take the client's address from `X-Forwarded-For`, but only from a peer
listed there. Before, every client behind the ingress shared one failed-authentication budget:
one client cycling bad tokens turned everyone's "log in again" (401/4401) into "back off"
(429/4429); and uvicorn believed any local process's `X-Forwarded-For`."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import websockets
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed

from services.notifier.settings import NotifierSettings
from services.query.app import create_app
from shared.cli import operator_error
from shared.client_address import client_address, parse_trusted_proxies
from shared.settings import CommonSettings
from shared.subjects import Subjects
from tests.notifier import helpers as notifier
from tests.procs import running
from tests.query import helpers as query

ALICE = "203.0.113.7"
BOB = "198.51.100.2"
LOOPBACK = "127.0.0.1/32"
NETS = parse_trusted_proxies("10.0.0.0/8, 127.0.0.1, fd00::/8")


# --- the pure rule --------------------------------------------------------------------------


def test_an_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    assert client_address(ALICE, [BOB], NETS) == ALICE
    assert client_address("10.1.2.3", [BOB], ()) == "10.1.2.3"  # nothing trusted: the default
    assert client_address(None, [BOB], NETS) is None
    assert client_address("/run/query.sock", [BOB], NETS) == "/run/query.sock"


def test_the_rightmost_address_a_trusted_proxy_appended_is_the_client() -> None:
    assert client_address("10.0.0.5", [ALICE], NETS) == ALICE
    # The client wrote the left part itself; the ingress appended what it saw.
    assert client_address("10.0.0.5", [f"192.0.2.1, {ALICE}"], NETS) == ALICE
    # A chain of trusted proxies is skipped, across header lines in order.
    assert client_address("10.0.0.5", [f"192.0.2.1, {ALICE}", "10.9.9.9, 127.0.0.1"], NETS) == ALICE
    assert client_address("fd00::1", ["2001:db8::7"], NETS) == "2001:db8::7"
    assert client_address("::ffff:10.0.0.5", [ALICE], NETS) == ALICE  # IPv4-mapped peer
    assert client_address("10.0.0.5", [], NETS) == "10.0.0.5"  # a proxy that adds nothing


def test_a_malformed_entry_stops_the_walk_and_all_trusted_takes_the_leftmost() -> None:
    assert client_address("10.0.0.5", [f"{ALICE}, not-an-ip"], NETS) == "10.0.0.5"
    assert client_address("10.0.0.5", [f"{ALICE}, garbage, 10.0.0.9"], NETS) == "10.0.0.9"
    assert client_address("10.0.0.5", ["10.0.0.7, 10.0.0.9"], NETS) == "10.0.0.7"
    assert client_address("10.0.0.5", [f"{ALICE}:port"], NETS) == "10.0.0.5"


def test_an_entry_with_a_port_names_its_address() -> None:
    """Some load balancers write `address:port` (and `[v6]:port`); read as malformed, every
    client behind them shared the proxy's one failure budget again."""
    assert client_address("10.0.0.5", [f"{ALICE}:4711"], NETS) == ALICE
    assert client_address("10.0.0.5", ["[2001:db8::7]:443"], NETS) == "2001:db8::7"
    assert client_address("10.0.0.5", ["[2001:db8::7]"], NETS) == "2001:db8::7"
    assert client_address("10.0.0.5", [f"{ALICE}, 10.0.0.9:80"], NETS) == ALICE


def test_the_setting_takes_addresses_and_networks_and_refuses_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETWATCH_TRUSTED_PROXIES", " 10.0.0.0/8 ,127.0.0.1,fd00::/8,")
    assert CommonSettings().trusted_proxies == NETS
    monkeypatch.delenv("FLEETWATCH_TRUSTED_PROXIES")
    assert CommonSettings().trusted_proxies == ()
    assert NETS[1] == ipaddress.ip_network("127.0.0.1/32")
    for bad in ("ingress", "10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/8;127.0.0.1"):
        monkeypatch.setenv("FLEETWATCH_TRUSTED_PROXIES", bad)
        with pytest.raises(ValidationError) as refused:
            CommonSettings()
        message = operator_error(refused.value)
        assert message is not None
        assert message.startswith("invalid setting: FLEETWATCH_TRUSTED_PROXIES: ")


# --- query ----------------------------------------------------------------------------------

BAD = {"Authorization": "Bearer not-a-jwt"}
LIMITS: dict[str, Any] = {"auth_failure_burst": 2, "auth_failure_per_minute": 1}


async def _codes(client: httpx.AsyncClient, forwarded: str | None, n: int) -> list[int]:
    headers = dict(BAD) if forwarded is None else {**BAD, "X-Forwarded-For": forwarded}
    return [(await client.get("/api/agents", headers=headers)).status_code for _ in range(n)]


@asynccontextmanager
async def _query_app(
    database_url: str, nats_url: str, **extra: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The app as the ingress reaches it: every request from one peer, 127.0.0.1."""
    app = create_app(query.settings_for(database_url, nats_url, **LIMITS, **extra))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40_000))
        async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
            yield client


async def test_query_behind_a_trusted_proxy_keeps_a_budget_per_client(
    database_url: str, nats_url: str
) -> None:
    async with _query_app(database_url, nats_url, trusted_proxies=LOOPBACK) as client:
        assert await _codes(client, f"192.0.2.9, {ALICE}", 3) == [401, 401, 429]
        # Bob's expired token still tells him to log in again.
        assert await _codes(client, BOB, 2) == [401, 401]
        assert await _codes(client, BOB, 1) == [429]
        # Alice writing another address in front gains nothing.
        assert await _codes(client, f"192.0.2.10, {ALICE}", 1) == [429]


@asynccontextmanager
async def _query_process(env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """`fleetwatch query` under uvicorn, reached from 127.0.0.1 (what uvicorn trusts by
    default)."""
    extra = {
        "FLEETWATCH_JWT_SECRET": query.SECRET,
        "QUERY_AUTH_FAILURE_BURST": "2",
        "QUERY_AUTH_FAILURE_PER_MINUTE": "1",
    }
    async with (
        running("query", env, extra_env=extra) as service,
        httpx.AsyncClient(base_url=service.url) as client,
    ):
        yield client


@pytest.mark.e2e
async def test_query_process_ignores_forwarded_for_from_an_untrusted_peer(
    service_env: dict[str, str],
) -> None:
    # Not even with uvicorn's own FORWARDED_ALLOW_IPS: the one setting is the app's.
    env = {**service_env, "FORWARDED_ALLOW_IPS": "*"}
    env.pop("FLEETWATCH_TRUSTED_PROXIES", None)
    async with _query_process(env) as client:
        codes = [(await _codes(client, f"192.0.2.{n}", 1))[0] for n in range(4)]
        assert codes == [401, 401, 429, 429]  # a fresh address per request: no fresh budget


@pytest.mark.e2e
async def test_query_process_behind_a_trusted_proxy_keeps_a_budget_per_client(
    service_env: dict[str, str],
) -> None:
    env = {**service_env, "FLEETWATCH_TRUSTED_PROXIES": LOOPBACK}
    async with _query_process(env) as client:
        assert await _codes(client, ALICE, 3) == [401, 401, 429]
        assert await _codes(client, BOB, 2) == [401, 401]


# --- notifier -------------------------------------------------------------------------------


async def _close_code(port: int, forwarded: str | None) -> int | None:
    """Connect with a bad token (and `X-Forwarded-For`), and read until the server closes."""
    headers = [] if forwarded is None else [("X-Forwarded-For", forwarded)]
    ws = await websockets.connect(
        notifier.ws_url(port),
        subprotocols=["bearer", "not-a-jwt"],  # type: ignore[list-item]
        additional_headers=headers,
    )
    try:
        frame = await asyncio.wait_for(ws.recv(), 15)
    except ConnectionClosed:
        await ws.wait_closed()
        return ws.close_code
    await ws.close()
    raise AssertionError(f"connection accepted: {frame!r}")


def _notifier_settings(
    nats_url: str, database_url: str, subjects: Subjects, **extra: Any
) -> NotifierSettings:
    return notifier.settings_for(
        nats_url,
        database_url,
        subjects,
        auth_failure_burst=2,
        auth_failure_per_minute=1,
        **extra,
    )


async def test_notifier_behind_a_trusted_proxy_keeps_a_budget_per_client(
    nats_url: str, database_url: str, subjects: Subjects
) -> None:
    settings = _notifier_settings(nats_url, database_url, subjects, trusted_proxies=LOOPBACK)
    async with notifier.running(settings) as app:
        assert [await _close_code(app.port, f"192.0.2.9, {ALICE}") for _ in range(3)] == [
            4401,
            4401,
            4429,
        ]
        assert [await _close_code(app.port, BOB) for _ in range(3)] == [4401, 4401, 4429]
        assert await _close_code(app.port, f"192.0.2.10, {ALICE}") == 4429


async def test_notifier_ignores_forwarded_for_from_an_untrusted_peer(
    nats_url: str, database_url: str, subjects: Subjects
) -> None:
    async with notifier.running(_notifier_settings(nats_url, database_url, subjects)) as app:
        codes = [await _close_code(app.port, f"192.0.2.{n}") for n in range(4)]
        assert codes == [4401, 4401, 4429, 4429]
