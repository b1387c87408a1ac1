"""Every trigger ingest stores can be filtered on: the contract keeps unknown values as sent
(1 to 64 characters), and the list shows them, so `triggered_by=<that value>` finds them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from shared.db import connect
from tests.query.helpers import add_org, client_for, insert, make_rows, settings_for, token

ORG = "qt-org"
ADMIN = token(ORG, "ada", "admin")
ODD = ("slack bot", "web/hook", "Zapier (v2)", "cron@hourly", "é" * 64)


@pytest_asyncio.fixture(scope="module")
async def client(database_url: str, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        rows = make_rows(ORG, ("a1",), len(ODD) + 2, seed=13)
        for row, trigger in zip(rows, ODD, strict=False):
            row.update(id=f"odd-{ODD.index(trigger)}", triggered_by=trigger)
        rows[-2].update(triggered_by="manual")
        rows[-1].update(triggered_by="api")
        await insert(conn, rows)
    finally:
        await conn.close()
    async with client_for(settings_for(database_url, nats_url)) as found:
        yield found


@pytest.mark.parametrize("trigger", ODD)
async def test_a_stored_unknown_trigger_is_a_valid_filter(
    client: httpx.AsyncClient, trigger: str
) -> None:
    for path in ("/api/executions", "/api/executions/export"):
        params = (
            {"triggered_by": trigger, "format": "ndjson"}
            if "export" in path
            else {"triggered_by": trigger}
        )
        reply = await client.get(path, params=params, headers=ADMIN)
        assert reply.status_code == 200, (path, reply.text)
    body = (
        await client.get("/api/executions", params={"triggered_by": trigger}, headers=ADMIN)
    ).json()
    assert [e["triggered_by"] for e in body["executions"]] == [trigger]
    other = await client.get("/api/executions", params={"triggered_by": "other"}, headers=ADMIN)
    assert trigger in {e["triggered_by"] for e in other.json()["executions"]}


@pytest.mark.parametrize("bad", ["x" * 65, ""])
async def test_a_trigger_no_event_could_carry_is_422(client: httpx.AsyncClient, bad: str) -> None:
    reply = await client.get("/api/executions", params={"triggered_by": bad}, headers=ADMIN)
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"][0]["loc"] == ["query", "triggered_by"]
