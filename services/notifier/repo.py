"""SQL of the notifier: the caller's scope, read under the org's row-level-security setting."""

from __future__ import annotations

import asyncpg

from shared.access import Scope, load_scope
from shared.auth import Claims

SET_ORG = "SELECT set_config('fleetwatch.org', $1, true)"


async def fetch_scope(pool: asyncpg.Pool, claims: Claims) -> Scope:
    """`load_scope` inside a transaction bound to the caller's org (RLS's second lock)."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(SET_ORG, claims.org)
        return await load_scope(conn, claims)
