"""The identity provider's signing keys (JWKS), fetched and kept for token checks.

- Fresh for `lifespan_s` (300 s): a key the provider withdrew stops verifying within that.
- Kept past it while the provider cannot be reached, for `stale_s` more (1 h): a blip of the
  identity provider does not fail every request once the set expires; past that, unavailable.
- After a failed fetch, none for `retry_s` (5 s): meanwhile requests are answered at once,
  from the kept keys or as unavailable, instead of each waiting out the fetch's timeout.
- A `kid` missing from a fresh set fetches again at most every `refresh_s` (30 s): a key the
  provider just added is found, and forged tokens with made-up kids cannot drive fetches.

One fetch at a time (a lock): when the set expires, the waiting requests use its result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import jwt

log = logging.getLogger(__name__)


class KeysUnavailable(Exception):
    """No usable key set: the provider cannot be reached or serves none (not the token's
    fault)."""


class UnknownKey(Exception):
    """A fresh key set holds no key with the token's `kid`."""


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
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._error = "not fetched yet"
        #: Fetches tried (for tests and logs).
        self.fetches = 0

    def key(self, kid: str) -> jwt.PyJWK:
        """The signing key `kid` names; KeysUnavailable or UnknownKey."""
        with self._lock:
            now = self._clock()
            age = None if self._fetched_at is None else now - self._fetched_at
            if (
                age is None
                or age >= self._lifespan_s
                or (kid not in self._keys and age >= self._refresh_s)
            ):
                self._fetch(now)
                age = None if self._fetched_at is None else now - self._fetched_at
            if age is None or age >= self._lifespan_s + self._stale_s:
                raise KeysUnavailable(self._error)
            key = self._keys.get(kid)
            if key is not None:
                return key
            if age >= self._lifespan_s:  # a stale set cannot say the kid is unknown
                raise KeysUnavailable(self._error)
            raise UnknownKey(f"no signing key with kid {kid!r}")

    def _fetch(self, now: float) -> None:
        if self._failed_at is not None and now - self._failed_at < self._retry_s:
            return
        self.fetches += 1
        try:
            found = self._client.get_jwk_set()
            keys = {
                k.key_id: k
                for k in found.keys
                if k.public_key_use in ("sig", None) and k.key_id is not None
            }
            if not keys:
                raise jwt.PyJWKSetError("the key set holds no signing key with a kid")
        except (jwt.PyJWTError, ValueError, TypeError, AttributeError) as exc:
            self._failed_at, self._error = now, str(exc) or type(exc).__name__
            kept = "keeping the last keys" if self._keys else "no keys to fall back on"
            log.warning("identity provider keys not fetched (%s); %s", self._error, kept)
            return
        self._keys, self._fetched_at, self._failed_at = keys, now, None
