"""Callers' scopes cached briefly: a reconnect storm costs one query per caller, not per socket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from cachetools import TTLCache

from shared.access import Scope
from shared.auth import Claims

ScopeKey = tuple[str, str, str]
Loader = Callable[[Claims], Awaitable[Scope]]


def scope_key(claims: Claims) -> ScopeKey:
    return (claims.org, claims.sub, claims.role.value)


class ScopeCache:
    """TTL cache with single-flight loading (concurrent misses for one caller share a query)."""

    def __init__(self, loader: Loader, *, ttl_s: float, maxsize: int = 50_000) -> None:
        self._loader = loader
        self._cache: TTLCache[ScopeKey, Scope] = TTLCache(maxsize=maxsize, ttl=ttl_s)
        self._inflight: dict[ScopeKey, asyncio.Future[Scope]] = {}

    async def get(self, claims: Claims) -> Scope:
        key = scope_key(claims)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Scope] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            scope = await self._loader(claims)
        except Exception as exc:
            future.set_exception(exc)
            # Mark retrieved: waiters may be none, and an unobserved error would be logged.
            future.exception()
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            self._inflight.pop(key, None)
        self._cache[key] = scope
        future.set_result(scope)
        return scope
