"""The identity provider's signing keys (JWKS), fetched and kept for token checks.

- Fresh for `lifespan_s` (300 s): a key the provider withdrew stops verifying within that.
- Kept past it while the provider cannot be reached or answers garbage, for `stale_s` more
  (1 h): a blip of the identity provider does not fail every request once the set expires.
  A key set the provider does serve is authoritative, even with no usable key in it (every
  key withdrawn at once): the old keys then verify nothing (unavailable, not a 401).
- While kept keys can answer, requests never wait for a fetch: one request refreshes, the
  others answer from the kept set at once. Only with nothing usable (the first fetch, or past
  `stale_s`), or for a kid the kept set lacks, does a request wait for the fetch.
- After a failed fetch, none for `retry_s` (5 s, counted from the failure's end).
- A kid missing from a fresh set fetches again at most every `refresh_s` (30 s): a key the
  provider just added is found, and forged tokens with made-up kids cannot drive fetches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

log = logging.getLogger(__name__)


class KeysUnavailable(Exception):
    """No usable key set: the provider cannot be reached or serves none (not the token's
    fault)."""


class UnknownKey(Exception):
    """A fresh key set holds no key with the token's `kid`."""


@dataclass(frozen=True, slots=True)
class _Held:
    """What the last fetches left: replaced as a whole, so a reader sees one consistent view."""

    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float | None = None
    #: When the last fetch failed (None: it did not); its error.
    failed_at: float | None = None
    error: str = "not fetched yet"


def _signing_keys(data: Any) -> dict[str, jwt.PyJWK] | None:
    """The signing keys by kid of a served key set; None when `data` is no key set at all."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        return None
    try:
        found = jwt.PyJWKSet.from_dict(data)
    except jwt.PyJWKSetError:  # well-formed, but no key it can use
        return {}
    return {k.key_id: k for k in found.keys if k.public_key_use in ("sig", None) and k.key_id}


class KeySet:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        lifespan_s: float = 300.0,
        stale_s: float = 3600.0,
        retry_s: float = 5.0,
        refresh_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Refuses a URL that is not http(s) (file:// would read local files).
        self._client = jwt.PyJWKClient(
            url, cache_jwk_set=False, cache_keys=False, timeout=timeout_s
        )
        self._lifespan_s, self._stale_s = lifespan_s, stale_s
        self._retry_s, self._refresh_s = retry_s, refresh_s
        self._clock = clock
        self._fetching = threading.Lock()
        self._held = _Held()
        #: Fetches tried (for tests and logs).
        self.fetches = 0

    def key(self, kid: str) -> jwt.PyJWK:
        """The signing key `kid` names; KeysUnavailable or UnknownKey."""
        if self._wants_fetch(kid):
            if self._usable() and kid in self._held.keys:
                # Kept keys answer now; one request refreshes, nobody waits for it.
                if self._fetching.acquire(blocking=False):
                    try:
                        if self._wants_fetch(kid):
                            self._fetch()
                    finally:
                        self._fetching.release()
            else:
                with self._fetching:  # one fetch; the others use its result
                    if self._wants_fetch(kid):
                        self._fetch()
        return self._answer(kid)

    def _age(self) -> float | None:
        fetched_at = self._held.fetched_at
        return None if fetched_at is None else self._clock() - fetched_at

    def _usable(self) -> bool:
        age = self._age()
        return age is not None and age < self._lifespan_s + self._stale_s

    def _wants_fetch(self, kid: str) -> bool:
        held, now = self._held, self._clock()
        if held.failed_at is not None and now - held.failed_at < self._retry_s:
            return False
        age = self._age()
        return (
            age is None
            or age >= self._lifespan_s
            or (kid not in held.keys and age >= self._refresh_s)
        )

    def _answer(self, kid: str) -> jwt.PyJWK:
        held, age = self._held, self._age()
        if age is None or age >= self._lifespan_s + self._stale_s:
            raise KeysUnavailable(held.error)
        if not held.keys:
            raise KeysUnavailable("the provider serves no signing key")
        key = held.keys.get(kid)
        if key is not None:
            return key
        if age >= self._lifespan_s or (
            held.failed_at is not None and held.failed_at > (held.fetched_at or 0)
        ):
            # A stale set, or one whose refresh just failed, cannot say the kid is unknown.
            raise KeysUnavailable(held.error)
        raise UnknownKey(f"no signing key with kid {kid!r}")

    def _fetch(self) -> None:
        self.fetches += 1
        try:
            keys = _signing_keys(self._client.fetch_data())
            if keys is None:
                raise ValueError("the answer is no JSON key set")
        except (jwt.PyJWTError, ValueError, TypeError, OSError) as exc:
            # The failure's end: a fetch that timed out must not leave the next one due.
            error = str(exc) or type(exc).__name__
            held = self._held
            self._held = _Held(held.keys, held.fetched_at, self._clock(), error)
            kept = "keeping the last keys" if held.keys else "no keys to fall back on"
            log.warning("identity provider keys not fetched (%s); %s", error, kept)
            return
        self._held = _Held(keys, self._clock())
