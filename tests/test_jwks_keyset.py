"""The identity provider's key set (shared/jwks.py) against a real key endpoint: kept through
an outage for a while, no fetch per request after a failure, unknown kids bounded."""

from __future__ import annotations

import threading
import time

import pytest

from shared import auth
from shared.auth import AuthError, AuthUnavailable, decode_token
from shared.jwks import KeySet, KeysUnavailable, UnknownKey
from tests.jwks import age_key_set, serving

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
        age_key_set(keys, 301)  # expired while the provider is away
        assert decode_token(token, secret="unused", jwks_url=url).sub == "ada"
        age_key_set(keys, 3600)
        with pytest.raises(AuthUnavailable, match="signing keys unavailable"):
            decode_token(token, secret="unused", jwks_url=url)
    finally:
        auth._key_set.cache_clear()


def test_a_provider_that_never_answers_makes_no_request_wait_while_keys_are_kept() -> None:
    """Packets dropped (no refusal): each request waited for a fetch of its own in turn,
    since the 5 s pause was counted from the start of a fetch that took its whole timeout."""
    clock = Clock()
    with serving() as provider:
        keys = KeySet(provider.url, timeout_s=0.5, clock=clock)
        keys.key("k1")
        provider.delay_s = 2.0  # answers long after the fetch's timeout
        clock.now += 301
        waits: list[float] = []
        # All four ask at once: a caller that waited for the refresh would pay (nearly) all of
        # its 0.5 s timeout, while one answered from the kept keys takes milliseconds; 0.45 s
        # keeps the two apart with room for a loaded machine (0.2 s was overrun there).
        together = threading.Barrier(4)

        def check() -> None:
            together.wait(10)
            began = time.perf_counter()
            assert keys.key("k1").key_id == "k1"
            waits.append(time.perf_counter() - began)

        threads = [threading.Thread(target=check) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(waits) == 4
        assert keys.fetches == 2  # one refresh for all four
        assert sorted(waits)[2] < 0.45, waits  # three answered from the kept keys at once
        clock.now += 4.9  # 5 s after the refresh failed: not yet (its end counts)
        began = time.perf_counter()
        keys.key("k1")
        assert time.perf_counter() - began < 0.45  # a fetch would take its 0.5 s timeout
        assert keys.fetches == 2
        provider.delay_s = 0.0


def test_a_key_set_served_without_usable_keys_withdraws_the_kept_ones() -> None:
    """Every key withdrawn at once (an emergency): a served, well-formed set is the provider's
    word, not an outage, so the old keys stop verifying (unavailable, not a 401)."""
    clock = Clock()
    with serving() as provider:
        keys = KeySet(provider.url, timeout_s=2, clock=clock)
        keys.key("k1")
        provider._body = lambda: b'{"keys": []}'  # type: ignore[method-assign]
        clock.now += 301
        with pytest.raises(KeysUnavailable, match="no signing key"):
            keys.key("k1")


def test_a_failed_refresh_for_a_new_kid_is_unavailable_not_unknown() -> None:
    """A token signed with a key the provider just rotated in, while its key endpoint is
    away: 503 (retry), not a 401 that logs the user out."""
    clock = Clock()
    with serving() as provider:
        keys = KeySet(provider.url, timeout_s=2, clock=clock)
        keys.key("k1")
    clock.now += 31
    with pytest.raises(KeysUnavailable):
        keys.key("k2")
    assert keys.key("k1").key_id == "k1"  # the kept, fresh keys still answer
