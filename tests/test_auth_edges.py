"""Tokens an attacker or a misbehaving identity provider may send: each is refused as an
invalid token (401), never an unexpected error (500)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pydantic import ValidationError

from shared.auth import AuthError, decode_token
from shared.settings import CommonSettings
from tests.jwks import Jwks, serving

CLAIMS = {"sub": "mallory", "org": "acme", "role": "admin"}


@pytest.fixture(scope="module")
def provider() -> Iterator[Jwks]:
    with serving() as jwks:
        yield jwks


def _signed(algorithm: str, key: object, kid: str) -> str:
    claims = {**CLAIMS, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("algorithm", "key"),
    [
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
    ],
)
def test_a_token_naming_an_algorithm_of_another_key_type_is_invalid(
    provider: Jwks, algorithm: str, key: object
) -> None:
    # The provider's key `k1` is RSA; the header asks to verify it as another kind of key.
    token = _signed(algorithm, key, provider.kid)
    with pytest.raises(AuthError):
        decode_token(token, secret="", jwks_url=provider.url)


def test_the_providers_own_token_still_passes(provider: Jwks) -> None:
    claims = decode_token(
        provider.token({**CLAIMS, "sub": "ann"}), secret="", jwks_url=provider.url
    )
    assert claims.sub == "ann"


def test_a_symmetric_algorithm_is_never_accepted_with_jwks(provider: Jwks) -> None:
    token = _signed("HS256", "x" * 40, provider.kid)
    with pytest.raises(AuthError):
        decode_token(token, secret="x" * 40, jwks_url=provider.url)


SECRET = "s" * 40


def _hs256(**times: int) -> str:
    now = int(time.time())
    claims = {**CLAIMS, "exp": now + 3600, **{k: now + v for k, v in times.items()}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "skew",
    [
        {"iat": 20},  # an identity provider whose clock runs 20 s ahead
        {"nbf": 20},
        {"exp": -20},  # expired 20 s ago by this machine's clock
    ],
)
def test_a_clock_difference_within_the_leeway_is_forgiven(skew: dict[str, int]) -> None:
    token = _hs256(**skew)
    assert decode_token(token, secret=SECRET, leeway_s=30).sub == "mallory"
    with pytest.raises(AuthError):
        decode_token(token, secret=SECRET, leeway_s=5)


@pytest.mark.parametrize("skew", [{"iat": 90}, {"nbf": 90}, {"exp": -90}])
def test_a_clock_difference_past_the_leeway_is_refused(skew: dict[str, int]) -> None:
    with pytest.raises(AuthError):
        decode_token(_hs256(**skew), secret=SECRET, leeway_s=30)


def test_the_services_forgive_30_seconds_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETWATCH_JWT_LEEWAY_S", raising=False)
    assert CommonSettings().jwt_leeway_s == 30
    monkeypatch.setenv("FLEETWATCH_JWT_LEEWAY_S", "0")
    assert CommonSettings().jwt_leeway_s == 0
    for refused in ("-1", "3600"):
        monkeypatch.setenv("FLEETWATCH_JWT_LEEWAY_S", refused)
        with pytest.raises(ValidationError, match="FLEETWATCH_JWT_LEEWAY_S"):
            CommonSettings()
