"""A share revoked through this process applies at once, even to a scope being read meanwhile.

A request that read the caller's visible agents just before the revoke committed must not
put that old scope back into the cache after the revoke dropped it (it would stand for
`QUERY_SCOPE_TTL_S`, while docs/query.md promises "at once").
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.query import deps
from shared.access import Scope, load_scope
from shared.auth import Claims
from shared.db import connect
from tests.query.helpers import add_agent, add_org, client_for, insert, make_rows, settings_for
from tests.query.helpers import token as bearer

ORG = "scope-race-org"
ADMIN = bearer(ORG, "ada", "admin")
USER = bearer(ORG, "uma", "user")


async def test_a_scope_read_before_a_revoke_is_not_cached_after_it(
    database_url: str, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await add_agent(conn, ORG, "a1", owner="olga", shared_with=("uma",))
        await insert(conn, make_rows(ORG, ("a1",), 3, seed=4))
    finally:
        await conn.close()

    loaded, release = asyncio.Event(), asyncio.Event()
    real_load = load_scope

    async def slow_first_load(conn: Any, claims: Claims) -> Scope:
        scope = await real_load(conn, claims)
        if not loaded.is_set():  # the first read only: its answer arrives after the revoke
            loaded.set()
            await release.wait()
        return scope

    monkeypatch.setattr(deps, "load_scope", slow_first_load)
    params = {"limit": 1}
    async with client_for(settings_for(database_url, nats_url, scope_ttl_s=60)) as client:
        before = asyncio.create_task(
            client.get("/api/agents/a1/executions", params=params, headers=USER)
        )
        await asyncio.wait_for(loaded.wait(), 10)
        revoked = await client.delete("/api/agents/a1/shares/uma", headers=ADMIN)
        assert revoked.status_code == 204, revoked.text
        release.set()
        assert (await before).status_code == 200  # asked before the revoke: may still see it
        after = await client.get("/api/agents/a1/executions", params=params, headers=USER)
        assert after.status_code == 403, after.text
