"""SQL of the notifier: the caller's scope, read under the org's row-level security."""

from __future__ import annotations

import asyncpg

from shared.access import Scope, enter_org, load_scope
from shared.auth import Claims


async def fetch_scope(pool: asyncpg.Pool, claims: Claims) -> Scope:
    """`load_scope` inside a transaction bound to the caller's org (RLS's second lock)."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await enter_org(conn, claims.org)
        return await load_scope(conn, claims)
