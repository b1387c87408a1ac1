"""Security review of token verification with an identity provider's keys (JWKS).

A key the provider withdraws stops verifying tokens once the key set is fetched again, and
a key set the provider cannot serve (an HTML error page, no keys) is "unavailable" (503,
retry), never a 500 nor a verdict on the token (401 logs the user out).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import orjson
import pytest

from shared import auth
from shared.auth import AuthError, AuthUnavailable, decode_token
from tests.jwks import Jwks, age_key_set, new_key, serving

CLAIMS = {"sub": "mallory", "org": "acme", "role": "admin"}


@pytest.fixture
def provider() -> Iterator[Jwks]:
    auth._key_set.cache_clear()
    with serving() as jwks:
        yield jwks
    auth._key_set.cache_clear()


def _expire_key_set(url: str) -> None:
    """As if the key set's lifespan (300 s) had passed."""
    age_key_set(auth._key_set(url), 301)


def test_a_key_the_provider_withdrew_stops_verifying_tokens(provider: Jwks) -> None:
    token = provider.token(CLAIMS)
    assert decode_token(token, secret="unused", jwks_url=provider.url).sub == "mallory"
    provider.key = new_key()  # rotated out (compromised): the old key is no longer served
    _expire_key_set(provider.url)
    with pytest.raises(AuthError):
        decode_token(token, secret="unused", jwks_url=provider.url)
    assert provider.requests >= 2  # the key set was fetched again


@pytest.mark.parametrize(
    "body",
    [b"<html>502 Bad Gateway</html>", b'{"keys": []}', b"[]", b'{"keys": [{"kty": "RSA"}]}'],
)
def test_a_key_set_the_provider_cannot_serve_is_unavailable(provider: Jwks, body: bytes) -> None:
    token = provider.token(CLAIMS)
    provider._body = lambda: body  # type: ignore[method-assign]
    with pytest.raises(AuthUnavailable):
        decode_token(token, secret="unused", jwks_url=provider.url)


def _unsigned(header: dict[str, object]) -> str:
    def b64(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

    return f"{b64(header)}.{b64({**CLAIMS, 'exp': 9_999_999_999})}.AAAA"


@pytest.mark.parametrize(
    "header",
    [{"alg": "RS256"}, {"alg": "RS256", "kid": "nope"}, {"alg": "none", "kid": "k1"}],
)
def test_a_token_without_a_known_key_is_refused_without_refetching(
    provider: Jwks, header: dict[str, object]
) -> None:
    decode_token(provider.token(CLAIMS), secret="unused", jwks_url=provider.url)
    for _ in range(5):
        with pytest.raises(AuthError):
            decode_token(_unsigned(header), secret="unused", jwks_url=provider.url)
    assert provider.requests == 1  # an attacker's unknown kids do not drive fetches


@pytest.mark.parametrize("url", ["htps://idp.example/jwks.json", "file:///etc/passwd"])
def test_a_key_url_that_is_not_http_is_unavailable_not_an_invalid_token(url: str) -> None:
    auth._key_set.cache_clear()
    token = Jwks().token(CLAIMS)
    with pytest.raises(AuthUnavailable, match="scheme"):
        decode_token(token, secret="unused", jwks_url=url)
