"""The query service's rate limits: a bucket per authenticated caller and one per client address
for failed authentications (the limiter is shared with the notifier, in `shared.ratelimit`)."""

from __future__ import annotations

from shared.ratelimit import RateLimiter, address_key

__all__ = ["RateLimiter", "address_key"]
