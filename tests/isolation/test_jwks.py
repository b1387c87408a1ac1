"""The query service with an identity provider's keys (JWKS), as a process, on a real key endpoint.

Its tokens are accepted; forgeries (another key, an unknown key id, the development secret,
the public key used as an HMAC secret) are 401; a provider that cannot be reached is 503 with
`Retry-After`, since the token was never judged and the client must not log its user out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import jwt
import orjson
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization

from tests.jwks import Jwks, new_key, serving
from tests.procs import running

SECRET = "jwks-tests-dev-secret-0123456789-abcdef-0123456789-abcdefghijklmn"


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    with serving() as found:
        yield found


def _env(nats_url: str, database_url: str, jwks_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "FLEETWATCH_SUBJECT_PREFIX": f"jw{uuid.uuid4().hex[:8]}",
        "FLEETWATCH_JWT_SECRET": SECRET,
        "FLEETWATCH_JWKS_URL": jwks_url,
    }


@pytest_asyncio.fixture(scope="module")
async def query(nats_url: str, database_url: str, jwks: Jwks) -> AsyncIterator[str]:
    async with running("query", _env(nats_url, database_url, jwks.url)) as service:
        yield service.url


def _hmac_with(secret: bytes, claims: dict[str, object]) -> str:
    """HS256 by hand: PyJWT itself refuses a PEM key as an HMAC secret."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    signing = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"
    return f"{signing}.{b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"


async def test_provider_tokens_are_accepted_and_forgeries_refused(query: str, jwks: Jwks) -> None:
    claims = {"sub": "u1", "org": "acme", "role": "admin", "exp": int(time.time()) + 600}
    public_pem = jwks.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tokens = {
        "ours": jwks.token(claims),
        "another_key": jwks.token(claims, key=new_key()),
        "unknown_kid": jwks.token(claims, kid="k9"),
        "dev_secret": jwt.encode(claims, SECRET, algorithm="HS256"),
        "public_key_as_hmac_secret": _hmac_with(public_pem, claims),
        "expired": jwks.token({**claims, "exp": int(time.time()) - 3600}),
    }
    async with httpx.AsyncClient(base_url=query, timeout=20) as client:
        codes = {}
        for kind, token in tokens.items():
            r = await client.get("/api/executions", headers={"Authorization": f"Bearer {token}"})
            codes[kind] = r.status_code
    assert codes == {**dict.fromkeys(tokens, 401), "ours": 200}


async def test_an_unreachable_provider_is_503_not_401(nats_url: str, database_url: str) -> None:
    with serving() as gone:
        token = gone.token({"sub": "u1", "org": "acme", "role": "admin"})
    env = _env(nats_url, database_url, gone.url)  # stopped: nothing answers there
    async with (
        running("query", env) as service,
        httpx.AsyncClient(base_url=service.url, timeout=20) as client,
    ):
        r = await client.get("/api/executions", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"]
    assert "signing keys unavailable" in r.json()["detail"]
