"""SQL of the notifier: the caller's scope, read under the org's row-level security."""

from __future__ import annotations

import asyncpg

from shared.access import Scope, load_scope
from shared.auth import Claims

#: As the query service's scoped transactions (services/query/repo.py): the application role,
#: whose policies (migration 0003) show only the rows of the org set here. The connecting user
#: owns the tables, so without the role the policies would not apply to it at all.
ENTER_ORG = (
    "SELECT set_config('role', 'fleetwatch_app', true), set_config('fleetwatch.org', $1, true)"
)


async def fetch_scope(pool: asyncpg.Pool, claims: Claims) -> Scope:
    """`load_scope` inside a transaction bound to the caller's org (RLS's second lock)."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(ENTER_ORG, claims.org)
        return await load_scope(conn, claims)
