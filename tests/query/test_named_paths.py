"""Workflow, project and share-user names holding `/` (or other reserved characters) are
addressed percent-encoded, as execution ids are: `/api/workflows/team%2Fetl/stats`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio

from shared.db import connect
from tests.query.helpers import add_agent, add_org, client_for, insert, make_rows, settings_for
from tests.query.helpers import token as make_token

ORG = "qn-org"
ADMIN = make_token(ORG, "ada", "admin")
OWNER = make_token(ORG, "uma", "user")
#: `team` exists too: `team%2Fetl` must never read as `team` with extra segments.
WORKFLOWS = ("team/etl", "team", "q?x#y%z &+;=é/..")
PROJECTS = ("ops/eu", "ops")
SHARED_USER = "corp/alice"


def seg(name: str) -> str:
    return quote(name, safe="")


@pytest_asyncio.fixture(scope="module")
async def client(database_url: str, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await add_agent(conn, ORG, "worker", owner="uma")
        rows = make_rows(ORG, ("worker",), 12, seed=7)
        for i, row in enumerate(rows):
            row.update(workflow=WORKFLOWS[i % 3], project=PROJECTS[i % 2])
        await insert(conn, rows)
    finally:
        await conn.close()
    async with client_for(settings_for(database_url, nats_url)) as found:
        yield found


@pytest.mark.parametrize("name", WORKFLOWS)
async def test_workflow_stats_by_encoded_name(client: httpx.AsyncClient, name: str) -> None:
    reply = await client.get(f"/api/workflows/{seg(name)}/stats", headers=ADMIN)
    assert reply.status_code == 200, (name, reply.text)
    body = reply.json()
    assert body["name"] == name
    assert body["runs"] == 4
    assert {r["workflow"] for r in body["recent_runs"]} == {name}


@pytest.mark.parametrize("name", PROJECTS)
async def test_project_stats_by_encoded_name(client: httpx.AsyncClient, name: str) -> None:
    reply = await client.get(f"/api/projects/{seg(name)}/stats", headers=ADMIN)
    assert reply.status_code == 200, (name, reply.text)
    assert reply.json()["name"] == name
    assert reply.json()["runs"] == 6


async def test_unencoded_slash_separates_segments(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/workflows/team/etl/stats", headers=ADMIN)).status_code == 404
    assert (await client.get("/api/projects/ops/eu/stats", headers=ADMIN)).status_code == 404
    missing = await client.get(f"/api/workflows/{seg('team/none')}/stats", headers=ADMIN)
    assert missing.status_code == 404
    assert "team/none" in missing.json()["detail"]


async def test_share_with_a_user_id_holding_a_slash(client: httpx.AsyncClient) -> None:
    path = f"/api/agents/worker/shares/{seg(SHARED_USER)}"
    shared = make_token(ORG, SHARED_USER, "client")
    assert (await client.get("/api/agents", headers=shared)).json()["agents"] == []
    assert (await client.put(path, headers=OWNER)).status_code == 204
    agents = (await client.get("/api/agents", headers=ADMIN)).json()["agents"]
    assert agents[0]["shared_with"] == [SHARED_USER]
    seen = (await client.get("/api/agents", headers=shared)).json()["agents"]
    assert [a["name"] for a in seen] == ["worker"]
    assert (await client.delete(path, headers=ADMIN)).status_code == 204
    assert (await client.delete(path, headers=ADMIN)).status_code == 404
    assert (await client.get("/api/agents", headers=shared)).json()["agents"] == []
