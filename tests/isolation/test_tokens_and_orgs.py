"""Probes against the query service as a process: bad tokens refused, other orgs invisible."""

from __future__ import annotations

import base64
import os
import random
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import jwt
import orjson
import pytest
import pytest_asyncio

from services.ingest.batch import Incoming, apply_batch
from shared.auth import mint_token
from shared.db import connect
from tests.ingest.events_factory import execution_events
from tests.procs import running

SECRET = "isolation-tests-secret-0123456789-abcdef-0123456789-abcdefghijklmn"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _bad_tokens(org: str) -> dict[str, str]:
    good = mint_token(secret=SECRET, org=org, user="u1", role="admin")
    head, body, sig = good.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(body + "=="))
    other_org = {**claims, "org": "someone-else"}
    exp = int(time.time()) + 3600
    return {
        "expired": jwt.encode(
            {"sub": "u1", "org": org, "role": "admin", "exp": int(time.time()) - 3600},
            SECRET,
            algorithm="HS256",
        ),
        "unsigned": _b64(b'{"alg":"none","typ":"JWT"}') + "." + body + ".",
        "wrong_algorithm": jwt.encode(
            {"sub": "u1", "org": org, "role": "admin", "exp": exp}, SECRET, algorithm="HS384"
        ),
        "wrong_secret": mint_token(
            secret="another-secret-0123456789-abcdefghij", org=org, user="u1", role="admin"
        ),
        "tampered": f"{head}.{_b64(orjson.dumps(other_org))}.{sig}",
        "garbage": "not-a-jwt",
        # Well signed, but a subject Postgres cannot compare with (was a 500).
        "nul_subject": jwt.encode(
            {"sub": "u\x001", "org": org, "role": "admin", "exp": exp}, SECRET, algorithm="HS256"
        ),
        "surrogate_subject": jwt.encode(
            {"sub": "u\ud8001", "org": org, "role": "user", "exp": exp}, SECRET, algorithm="HS256"
        ),
    }


@pytest_asyncio.fixture(scope="module")
async def query(nats_url: str, database_url: str) -> AsyncIterator[str]:
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "FLEETWATCH_SUBJECT_PREFIX": f"iso{uuid.uuid4().hex[:8]}",
        "FLEETWATCH_JWT_SECRET": SECRET,
    }
    async with running("query", env) as service:
        yield service.url


@pytest_asyncio.fixture
async def seeded(database_url: str) -> tuple[str, str, str]:
    """Two orgs with one execution each; returns (org a, org b, the id of a's execution)."""
    rng = random.Random(9)
    a, b = f"iso-a-{rng.randrange(10**9)}", f"iso-b-{rng.randrange(10**9)}"
    conn = await connect(database_url)
    try:
        for org in (a, b):
            async with conn.transaction():
                events = execution_events(org, "agent-1", f"{org}-exec", rng)
                await apply_batch(conn, [Incoming(e) for e in events])
    finally:
        await conn.close()
    return a, b, f"{a}-exec"


@pytest.mark.parametrize(
    "kind",
    [
        "expired",
        "unsigned",
        "wrong_algorithm",
        "wrong_secret",
        "tampered",
        "garbage",
        "nul_subject",
        "surrogate_subject",
    ],
)
async def test_bad_tokens_are_refused(query: str, kind: str) -> None:
    token = _bad_tokens("acme")[kind]
    async with httpx.AsyncClient(base_url=query, timeout=10) as client:
        for path in ("/api/executions", "/api/executions/stats", "/api/agents"):
            r = await client.get(path, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, (kind, path, r.status_code, r.text[:200])
        r = await client.get("/api/executions")
        assert r.status_code == 401


async def test_another_orgs_data_is_invisible(query: str, seeded: tuple[str, str, str]) -> None:
    a, b, a_exec = seeded
    token_b = mint_token(secret=SECRET, org=b, user="admin-b", role="admin")
    headers = {"Authorization": f"Bearer {token_b}"}
    async with httpx.AsyncClient(base_url=query, timeout=10, headers=headers) as client:
        listing = (await client.get("/api/executions", params={"limit": 200})).json()
        assert {e["id"] for e in listing["executions"]} == {f"{b}-exec"}
        assert listing["total_count"] == 1
        assert (await client.get(f"/api/executions/{a_exec}")).status_code == 404
        assert (await client.get(f"/api/executions/{a_exec}/log")).status_code == 404
        stats = (await client.get("/api/executions/stats", params={"hours": 168})).text
        assert a not in stats
        assert a not in (await client.get("/api/agents")).text
        found = (await client.get("/api/executions", params={"search": a})).json()
        assert found["executions"] == []
        assert found["total_count"] == 0


@pytest_asyncio.fixture(scope="module")
async def query_with_audience(nats_url: str, database_url: str) -> AsyncIterator[str]:
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "FLEETWATCH_SUBJECT_PREFIX": f"iso{uuid.uuid4().hex[:8]}",
        "FLEETWATCH_JWT_SECRET": SECRET,
        "FLEETWATCH_JWT_AUDIENCE": "fleetwatch",
        "FLEETWATCH_JWT_ISSUER": "https://idp.example",
    }
    async with running("query", env) as service:
        yield service.url


async def test_with_an_audience_configured_other_applications_tokens_are_refused(
    query_with_audience: str,
) -> None:
    """An identity provider shared with other applications signs their tokens too."""
    base = {"sub": "u1", "org": "acme", "role": "admin", "exp": int(time.time()) + 3600}
    tokens = {
        "no_audience": {**base, "iss": "https://idp.example"},
        "another_audience": {**base, "aud": "billing", "iss": "https://idp.example"},
        "another_issuer": {**base, "aud": "fleetwatch", "iss": "https://evil.example"},
        "ours": {**base, "aud": "fleetwatch", "iss": "https://idp.example"},
    }
    async with httpx.AsyncClient(base_url=query_with_audience, timeout=10) as client:
        codes = {}
        for kind, claims in tokens.items():
            token = jwt.encode(claims, SECRET, algorithm="HS256")
            r = await client.get("/api/executions", headers={"Authorization": f"Bearer {token}"})
            codes[kind] = r.status_code
    assert codes == {
        "no_audience": 401,
        "another_audience": 401,
        "another_issuer": 401,
        "ours": 200,
    }
