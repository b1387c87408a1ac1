"""A cursor continues the list it came from: reused with other filters it is a 422 naming
`cursor`, not a page that silently skips the rows newer than its key under the new filters."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from shared.db import connect
from tests.query.helpers import add_agent, add_org, client_for, insert, make_rows, settings_for
from tests.query.helpers import token as make_token

ORG = "qc-org"
ADMIN = make_token(ORG, "ada", "admin")
LIST = "/api/executions"


@pytest_asyncio.fixture(scope="module")
async def client(database_url: str, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await add_agent(conn, ORG, "a1")
        await insert(conn, make_rows(ORG, ("a1", "a2"), 80, seed=17))
    finally:
        await conn.close()
    async with client_for(settings_for(database_url, nats_url)) as found:
        yield found


async def _cursor(client: httpx.AsyncClient, path: str, params: dict[str, str]) -> str:
    reply = await client.get(path, params={**params, "limit": "3"}, headers=ADMIN)
    assert reply.status_code == 200, reply.text
    cursor: str = reply.json()["next_cursor"]
    assert cursor
    return cursor


async def test_a_cursor_reused_with_other_filters_is_422(client: httpx.AsyncClient) -> None:
    cursor = await _cursor(client, LIST, {"status": "failed,success"})
    for other in ({"status": "failed"}, {}, {"status": "failed,success", "search": "refund"}):
        reply = await client.get(LIST, params={**other, "cursor": cursor}, headers=ADMIN)
        assert reply.status_code == 422, (other, reply.text)
        assert reply.json()["detail"][0]["loc"] == ["query", "cursor"]


async def test_the_same_list_takes_its_cursor_however_it_is_spelled(
    client: httpx.AsyncClient,
) -> None:
    cursor = await _cursor(client, LIST, {"status": "failed,success"})
    same: list[dict[str, str | list[str]]] = [
        {"status": "success,failed"},
        {"status": ["success", "failed", "success"]},
    ]
    for params in same:
        reply = await client.get(
            LIST, params={**params, "cursor": cursor, "limit": "10"}, headers=ADMIN
        )
        assert reply.status_code == 200, (params, reply.text)
    # The per-agent list is the fleet list filtered by that agent: one cursor serves both.
    cursor = await _cursor(client, "/api/agents/a1/executions", {})
    reply = await client.get(LIST, params={"agent_name": "a1", "cursor": cursor}, headers=ADMIN)
    assert reply.status_code == 200, reply.text
