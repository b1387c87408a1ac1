"""Tokens an attacker or a misbehaving identity provider may send: each is refused as an
invalid token (401), never an unexpected error (500)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from shared.auth import AuthError, decode_token
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
