"""The identity provider's key set (shared/jwks.py) against a real key endpoint: kept through
an outage for a while, no fetch per request after a failure, unknown kids bounded."""

from __future__ import annotations

import pytest

from shared import auth
from shared.auth import AuthError, AuthUnavailable, decode_token
from shared.jwks import KeySet, KeysUnavailable, UnknownKey
from tests.jwks import serving

CLAIMS = {"sub": "ada", "org": "acme", "role": "admin"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_bridged_by_the_last_keys_for_an_hour_then_unavailable() -> None:
    """Once the key set expired, every request failed (503) for as long as the identity
    provider was away, and each one first waited out the fetch's timeout."""
    clock = Clock()
    with serving() as provider:
        keys = KeySet(provider.url, timeout_s=2, clock=clock)
        assert keys.key("k1").key_id == "k1"
        url = provider.url
    assert url  # the provider is gone from here on
    clock.now += 301  # the set has expired
    assert keys.key("k1").key_id == "k1"  # kept: the provider cannot be asked
    assert keys.fetches == 2
    clock.now += 2
    assert keys.key("k1").key_id == "k1"
    assert keys.fetches == 2  # within 5 s of a failed fetch: none tried
    with pytest.raises(KeysUnavailable):  # a stale set cannot say a kid is unknown
        keys.key("k2")
    clock.now += 3600
    with pytest.raises(KeysUnavailable):
        keys.key("k1")


def test_a_failed_fetch_is_not_retried_by_every_request() -> None:
    with serving() as provider:
        url = provider.url
    clock = Clock()
    keys = KeySet(url, timeout_s=2, clock=clock)
    for _ in range(5):
        with pytest.raises(KeysUnavailable):
            keys.key("k1")
    assert keys.fetches == 1
    clock.now += 5
    with pytest.raises(KeysUnavailable):
        keys.key("k1")
    assert keys.fetches == 2


def test_unknown_kids_fetch_at_most_every_30_s_and_a_new_key_is_found() -> None:
    clock = Clock()
    with serving() as provider:
        keys = KeySet(provider.url, timeout_s=2, clock=clock)
        keys.key("k1")
        for _ in range(5):
            with pytest.raises(UnknownKey):
                keys.key("forged")
        assert provider.requests == 1
        provider.kid = "k2"  # the provider rotates a new key in
        clock.now += 30
        assert keys.key("k2").key_id == "k2"
        assert provider.requests == 2


def test_through_decode_token_an_outage_keeps_tokens_valid_and_forgeries_refused() -> None:
    auth._key_set.cache_clear()
    try:
        with serving() as provider:
            token = provider.token(CLAIMS)
            forged = provider.token(CLAIMS, kid="nope")
            url = provider.url
            assert decode_token(token, secret="unused", jwks_url=url).sub == "ada"
            with pytest.raises(AuthError):
                decode_token(forged, secret="unused", jwks_url=url)
        keys = auth._key_set(url)
        assert keys._fetched_at is not None
        keys._fetched_at -= 301  # expired while the provider is away
        assert decode_token(token, secret="unused", jwks_url=url).sub == "ada"
        keys._fetched_at -= 3600
        keys._failed_at = None
        with pytest.raises(AuthUnavailable, match="signing keys unavailable"):
            decode_token(token, secret="unused", jwks_url=url)
    finally:
        auth._key_set.cache_clear()
