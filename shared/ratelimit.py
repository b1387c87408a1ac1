"""Token buckets in memory (each replica limits on its own; pure but for the clock), and whom
a client address's failed authentications count against. The query service keeps one per
authenticated caller and one per address; the notifier one per address for its handshakes."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """`rate` tokens per second up to `burst`; each request takes one."""

    def __init__(
        self,
        *,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = 50_000,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        # Bounded: forgetting an idle caller only hands them a full bucket again.
        self._buckets: LRUCache[str, _Bucket] = LRUCache(maxsize=max_callers)

    def _refilled(self, bucket: _Bucket, now: float) -> _Bucket:
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        return bucket

    def _wait(self, bucket: _Bucket) -> float:
        return (1.0 - bucket.tokens) / self.rate

    def check(self, caller: str) -> float | None:
        """None if allowed (and counted), else the seconds until a request would be allowed."""
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = _Bucket(self.burst, now)
        self._refilled(bucket, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return self._wait(bucket)


def address_key(host: str | None) -> str:
    """Whom failed authentications are counted against: the client's address, an IPv6 one
    by its /64 (a single host commonly holds a whole /64, and would otherwise get a fresh
    bucket per address), an IPv4-mapped one as its IPv4 address. Anything else (no client,
    a Unix socket) is kept as given."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
