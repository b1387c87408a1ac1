"""Open connections follow their caller's access: an expired token closes them, changes apply.

The handshake checks the token and loads the caller's scope once, but a connection may stay
open for days. So each connection gets a timer at its token's `exp` that closes it with 4401,
as the handshake would; and a sweep every `TTL / TICKS_PER_TTL` seconds reloads the scope of
each caller with open connections once it is about to reach the TTL (one query per caller,
shared by all its sockets and by new connections through the cache) and hands every socket the
new scope. A caller whose scope cannot be reloaded for a whole TTL is closed with 1013, as a
failed lookup at the handshake is: nobody can confirm what it may still see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from services.notifier.clients import Client
from services.notifier.hub import CLOSE_TRY_AGAIN, CLOSE_UNAUTHORIZED, Hub
from services.notifier.scopes import ScopeCache, ScopeKey, scope_key
from shared.access import Scope

log = logging.getLogger(__name__)

#: Sweeps per TTL. A scope is reloaded at the first sweep that finds it older than
#: `(1 - 1/TICKS_PER_TTL) * TTL`, so no open connection uses one older than the TTL, and each
#: caller costs about one query per TTL.
TICKS_PER_TTL = 4
#: Reloads one sweep runs at once, so a sweep never takes the whole pool from the handshakes.
RELOAD_CONCURRENCY = 2


def seconds_left(exp: int, now: float, leeway_s: float = 0.0) -> float:
    """Until a token with this `exp` is refused, the clock leeway included (none left: 0)."""
    return max(0.0, exp + leeway_s - now)


class AccessGuard:
    """Expiry timers per connection, and the periodic scope refresh per caller."""

    def __init__(self, hub: Hub, scopes: ScopeCache, leeway_s: float = 0.0) -> None:
        self.hub = hub
        self.scopes = scopes
        #: As when tokens are verified: one the socket was opened with stays good as long.
        self.leeway_s = leeway_s
        self.tick_s = scopes.ttl_s / TICKS_PER_TTL
        self.max_age_s = scopes.ttl_s - self.tick_s
        self._expiry: dict[Client, asyncio.TimerHandle] = {}
        #: Callers whose reloads fail, and since when (monotonic).
        self._failing_since: dict[ScopeKey, float] = {}

    def watch(self, client: Client) -> None:
        """Close the client with 4401 when its token expires."""
        delay = seconds_left(client.claims.exp, time.time(), self.leeway_s)
        loop = asyncio.get_running_loop()
        self._expiry[client] = loop.call_later(delay, self._expire, client)

    def forget(self, client: Client) -> None:
        handle = self._expiry.pop(client, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, client: Client) -> None:
        self._expiry.pop(client, None)
        if client not in self.hub.clients:
            return
        self.hub.metrics.access_closes.labels("token_expired").inc()
        self.hub.close((client,), CLOSE_UNAUTHORIZED, "token expired")

    async def run(self) -> None:
        """Sweep until cancelled."""
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.sweep()
            except Exception:  # the next sweep tries again; the guard must not stop
                log.exception("access sweep failed")

    async def sweep(self) -> None:
        """Hand each open caller's sockets its current scope, reloading the ones due."""
        callers = self.hub.by_caller()
        for gone in self._failing_since.keys() - callers.keys():
            del self._failing_since[gone]
        due: list[list[Client]] = []
        for key, clients in callers.items():
            scope = self.scopes.peek(key, self.max_age_s)
            if scope is None:
                due.append(clients)
            else:
                # Another socket of this caller may have loaded a newer scope at its handshake.
                self._apply(clients, scope)
        queue = iter(due)

        async def worker() -> None:
            for clients in queue:
                await self._reload(clients)

        await asyncio.gather(*(worker() for _ in range(min(RELOAD_CONCURRENCY, len(due)))))

    async def _reload(self, clients: list[Client]) -> None:
        claims = clients[0].claims
        key = scope_key(claims)
        try:
            scope = await self.scopes.get(claims, max_age_s=self.max_age_s)
        except Exception as exc:
            self._failed(key, clients, exc)
            return
        self._failing_since.pop(key, None)
        self._apply(clients, scope)

    def _apply(self, clients: Iterable[Client], scope: Scope) -> None:
        for client in clients:
            self.hub.set_scope(client, scope)

    def _failed(self, key: ScopeKey, clients: list[Client], exc: Exception) -> None:
        now = time.monotonic()
        since = self._failing_since.setdefault(key, now)
        if now - since < self.scopes.ttl_s:
            log.warning("scope reload for %s/%s failed, retrying: %r", key[0], key[1], exc)
            return
        del self._failing_since[key]
        open_ = [c for c in clients if c in self.hub.clients]
        log.warning(
            "scope of %s/%s unconfirmed for %.1fs: closing %d connections",
            key[0],
            key[1],
            now - since,
            len(open_),
        )
        self.hub.metrics.access_closes.labels("lookup_failed").inc(len(open_))
        self.hub.close(open_, CLOSE_TRY_AGAIN, "access lookup failed, retry")
