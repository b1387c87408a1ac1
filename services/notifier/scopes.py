"""Callers' scopes cached briefly: a reconnect storm costs one query per caller, not per socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from cachetools import TTLCache

from shared.access import Scope
from shared.auth import Claims

ScopeKey = tuple[str, str, str]
Loader = Callable[[Claims], Awaitable[Scope]]


def scope_key(claims: Claims) -> ScopeKey:
    return (claims.org, claims.sub, claims.role.value)


class ScopeCache:
    """TTL cache with single-flight loading (concurrent misses for one caller share a query).

    Each entry remembers when it was loaded, so the access refresh can ask for a scope younger
    than the TTL (`max_age_s`) and reload a caller just before its entry runs out.
    """

    def __init__(
        self,
        loader: Loader,
        *,
        ttl_s: float,
        maxsize: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
        load_timeout_s: float | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self._loader = loader
        #: Called once per failed (or timed-out) load, however many callers were waiting on it.
        self._on_failure = on_failure
        self.ttl_s = ttl_s
        self._load_timeout_s = load_timeout_s
        self._clock = clock
        self._cache: TTLCache[ScopeKey, tuple[Scope, float]] = TTLCache(
            maxsize=maxsize, ttl=ttl_s, timer=clock
        )
        self._inflight: dict[ScopeKey, asyncio.Future[Scope]] = {}

    def peek(self, key: ScopeKey, max_age_s: float) -> Scope | None:
        """The cached scope if it was loaded at most `max_age_s` ago; never loads."""
        entry = self._cache.get(key)
        if entry is None or self._clock() - entry[1] > max_age_s:
            return None
        return entry[0]

    async def get(self, claims: Claims, *, max_age_s: float | None = None) -> Scope:
        """The caller's scope, loaded at most `max_age_s` (default: the TTL) ago."""
        key = scope_key(claims)
        cached = self.peek(key, self.ttl_s if max_age_s is None else max_age_s)
        if cached is not None:
            return cached
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Scope] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        loaded_at = self._clock()
        try:
            scope = await _within(self._loader(claims), self._load_timeout_s)
        except Exception as exc:
            if self._on_failure is not None:
                self._on_failure()
            future.set_exception(exc)
            # Mark retrieved: waiters may be none, and an unobserved error would be logged.
            future.exception()
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            self._inflight.pop(key, None)
        # Aged from the query's start: a change committed during the query may be missed.
        self._cache[key] = (scope, loaded_at)
        future.set_result(scope)
        return scope


async def _within(load: Awaitable[Scope], timeout_s: float | None) -> Scope:
    """`load`'s result, or TimeoutError once `timeout_s` has passed.

    Unlike `asyncio.wait_for`, this does not wait for the cancelled load to wind down: on a
    hung database its clean-up (handing the connection back to the pool) hangs as well.
    """
    task = asyncio.ensure_future(load)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_observed)
        raise TimeoutError(f"scope load took longer than {timeout_s} s")
    return task.result()


def _observed(task: asyncio.Future[Scope]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an error of an abandoned load is not logged as unhandled
