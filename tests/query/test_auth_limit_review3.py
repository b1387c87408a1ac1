"""Review 3: failed authentications are rate-limited per client address. Before, only
authenticated callers had a bucket: a client sending missing, malformed or wrongly signed
tokens got 401s at full speed, each costing a signature check (or a key lookup)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.query.app import create_app
from services.query.deps import QueryState
from shared.auth import mint_token, verify_token
from shared.ratelimit import RateLimiter, address_key
from tests.query.helpers import settings_for, token

ORG = "qal-org"
GOOD = token(ORG, "ada", "admin")
BAD_TOKENS: list[dict[str, str]] = [
    {},  # missing
    {"Authorization": "Basic dXNlcjpwYXNz"},  # not a bearer token
    {"Authorization": "Bearer not-a-jwt"},  # malformed
    {  # well formed, signed with another secret
        "Authorization": "Bearer "
        + mint_token(secret="another-secret-0123456789abcdef-xyz", org=ORG, user="x", role="admin")
    },
]
ATTACKER = "203.0.113.7"
NEIGHBOUR = "198.51.100.2"


@dataclass
class Served:
    """The app's shared state, and clients that connect to it from a given peer address."""

    app: FastAPI

    @property
    def state(self) -> QueryState:
        state: QueryState = self.app.state.query
        return state

    def client(self, address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 40_000))
        return httpx.AsyncClient(transport=transport, base_url="http://query")

    def limited(self) -> float:
        name = "fleetwatch_query_auth_limited_total"
        return self.state.metrics.registry.get_sample_value(name) or 0.0


@asynccontextmanager
async def serving(database_url: str, nats_url: str, **extra: Any) -> AsyncIterator[Served]:
    app = create_app(settings_for(database_url, nats_url, **extra))
    async with app.router.lifespan_context(app):
        yield Served(app)


async def test_bad_tokens_from_one_address_get_429_after_the_budget(
    database_url: str, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []

    async def counting_verify(raw: str, settings: Any) -> Any:
        checked.append(raw)
        return await verify_token(raw, settings)

    monkeypatch.setattr("services.query.deps.verify_token", counting_verify)
    limits = {"auth_failure_burst": 4, "auth_failure_per_minute": 2}
    async with (
        serving(database_url, nats_url, **limits) as served,
        served.client(ATTACKER) as attacker,
        served.client(NEIGHBOUR) as neighbour,
    ):
        codes = [
            (await attacker.get("/api/agents", headers=headers)).status_code
            for headers in BAD_TOKENS
        ]
        assert codes == [401] * 4
        assert len(checked) == 2  # the malformed and the wrongly signed ones
        for headers in BAD_TOKENS:
            refused = await attacker.get("/api/agents", headers=headers)
            assert refused.status_code == 429
            assert 1 <= int(refused.headers["retry-after"]) <= 30  # one refill at 2/min
            assert "failed authentications" in refused.json()["detail"]
        assert served.limited() == 4
        # Headers claiming another client are not believed from an untrusted peer.
        for n in range(3):
            spoofed = {"X-Forwarded-For": f"192.0.2.{n}", **BAD_TOKENS[2]}
            assert (await attacker.get("/api/agents", headers=spoofed)).status_code == 429
        assert served.limited() == 7
        # A good token from the limited address is still let through (clients behind one NAT
        # share it), and takes nothing from the budget.
        assert (await attacker.get("/api/agents", headers=GOOD)).status_code == 200
        assert served.limited() == 7
        # A correct client elsewhere is untouched, and so is its own failure budget.
        assert (await neighbour.get("/api/agents", headers=GOOD)).status_code == 200
        assert (await neighbour.get("/api/agents", headers=BAD_TOKENS[0])).status_code == 401
        assert served.limited() == 7


async def test_good_requests_take_nothing_from_the_failure_budget(
    database_url: str, nats_url: str
) -> None:
    async with (
        serving(database_url, nats_url, auth_failure_burst=2) as served,
        served.client(NEIGHBOUR) as client,
    ):
        for _ in range(10):
            assert (await client.get("/api/agents", headers=GOOD)).status_code == 200
        codes = [(await client.get("/api/agents")).status_code for _ in range(3)]
        assert codes == [401, 401, 429]
        assert served.limited() == 1


async def test_the_per_caller_limit_is_unchanged(database_url: str, nats_url: str) -> None:
    limits = {"rate_limit_burst": 3, "rate_limit_per_minute": 6, "auth_failure_burst": 1}
    async with (
        serving(database_url, nats_url, **limits) as served,
        served.client(NEIGHBOUR) as client,
    ):
        codes = [(await client.get("/api/agents", headers=GOOD)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert served.limited() == 0  # that 429 is the caller's own limit
        name = "fleetwatch_query_rate_limited_total"
        assert served.state.metrics.registry.get_sample_value(name) == pytest.approx(1)


def test_the_failure_limiter_forgets_the_least_recent_address_beyond_its_bound() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=1, burst=1, clock=lambda: now[0], max_callers=2)
    for address in ("a", "b"):
        assert limiter.check(address) is None
        assert limiter.check(address) is not None  # its one failure is used up
    assert limiter.check("c") is None  # "a" is forgotten: memory stays bounded
    assert limiter.check("a") is None  # a full bucket again (which pushes "b" out)
    assert limiter.check("c") is not None


def test_addresses_are_keyed_as_one_client_holds_them() -> None:
    assert address_key("203.0.113.7") == "203.0.113.7"
    # One host commonly holds a whole IPv6 /64: one bucket for it, not one per address.
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key(None) == "unknown"
    assert address_key("/run/query.sock") == "/run/query.sock"
