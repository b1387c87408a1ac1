"""Values that once widened a list silently or reached the database and failed there: each is
now a 422 naming its field, on every endpoint that takes it."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from shared.db import connect
from tests.query.helpers import (
    add_agent,
    add_org,
    client_for,
    insert,
    make_rows,
    settings_for,
    token,
)

ORG = "val-org"
ADMIN = token(ORG, "ada", "admin")
USER = token(ORG, "ulrich", "user")
# Offsets that carry a valid local date-time past the range of a UTC datetime.
EDGES = ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00")
LISTS = ("/api/executions", "/api/agents/a1/executions")


@pytest_asyncio.fixture(scope="module")
async def client(database_url: str, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await add_agent(conn, ORG, "a1", owner="ulrich")
        await add_agent(conn, ORG, "a2", owner="ulrich")
        await insert(conn, make_rows(ORG, ("a1", "a2"), 60, seed=4))
    finally:
        await conn.close()
    async with client_for(settings_for(database_url, nats_url)) as found:
        yield found


def fields(reply: httpx.Response) -> list[str]:
    assert reply.status_code == 422, (reply.status_code, reply.text[:300])
    return [d["loc"][-1] for d in reply.json()["detail"]]


def forged_cursor(moment: str) -> str:
    raw = orjson.dumps({"v": 1, "t": moment, "i": "x"})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("moment", EDGES)
@pytest.mark.parametrize("path", LISTS)
async def test_cursor_past_the_datetime_range_is_422(
    client: httpx.AsyncClient, path: str, moment: str
) -> None:
    reply = await client.get(path, headers=ADMIN, params={"cursor": forged_cursor(moment)})
    assert fields(reply) == ["cursor"]


async def test_a_timeline_start_before_its_window_is_422_not_cut_off(
    client: httpx.AsyncClient,
) -> None:
    path = "/api/executions/timeline"
    reply = await client.get(path, headers=ADMIN, params={"hours": 1, "start_time": "2000-01-01"})
    assert fields(reply) == ["start_time"]
    inside = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    reply = await client.get(path, headers=ADMIN, params={"hours": 24, "start_time": inside})
    assert reply.status_code == 200, reply.text[:300]
    assert reply.json()["filters_applied"]["start_time"]
    # The window's own start, as the client computed it a moment before the server: not 422.
    edge = (datetime.now(UTC) - timedelta(hours=24)).isoformat()
    reply = await client.get(path, headers=ADMIN, params={"hours": 24, "start_time": edge})
    assert reply.status_code == 200, reply.text[:300]
    assert reply.json()["filters_applied"]["start_time"] == edge.replace("+00:00", "Z")
    late = (datetime.now(UTC) - timedelta(hours=24, minutes=5)).isoformat()
    reply = await client.get(path, headers=ADMIN, params={"hours": 24, "start_time": late})
    assert fields(reply) == ["start_time"]


@pytest.mark.parametrize("query", ["cursor=", "cursor", "status=failed&cursor="])
@pytest.mark.parametrize("path", LISTS)
async def test_an_empty_cursor_is_422_not_the_first_page(
    client: httpx.AsyncClient, path: str, query: str
) -> None:
    reply = await client.get(f"{path}?{query}", headers=ADMIN)
    assert fields(reply) == ["cursor"]


@pytest.mark.parametrize("moment", EDGES)
@pytest.mark.parametrize("name", ["start_time", "end_time"])
@pytest.mark.parametrize("path", [*LISTS, "/api/executions/export", "/api/executions/timeline"])
async def test_times_past_the_range_are_422(
    client: httpx.AsyncClient, path: str, name: str, moment: str
) -> None:
    reply = await client.get(path, headers=ADMIN, params={name: moment})
    assert fields(reply) == [name]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "failed"}, "status"),
        ({"agent_name": "a1", "search": "x"}, "search"),
        ({"start_time": EDGES[0]}, "start_time"),
        ({"triggered_by": "api"}, "triggered_by"),
        ({"hours": "6", "project": "alpha"}, "project"),
    ],
)
async def test_stats_name_the_parameter_they_cannot_apply(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    reply = await client.get("/api/executions/stats", headers=ADMIN, params=params)
    assert fields(reply) == [field]


async def test_stats_still_take_agent_name_and_hours(client: httpx.AsyncClient) -> None:
    params = {"agent_name": "a1", "hours": "72"}
    reply = await client.get("/api/executions/stats", headers=ADMIN, params=params)
    assert reply.status_code == 200, reply.text
    assert {a["agent_name"] for a in reply.json()["by_agent"]} == {"a1"}
    assert fields(
        await client.get("/api/executions/stats", headers=ADMIN, params={"agent_name": "a b"})
    ) == ["agent_name"]


@pytest.mark.parametrize("blank", ["   ", "", "\t \n"])
@pytest.mark.parametrize("path", [*LISTS, "/api/executions/export", "/api/executions/timeline"])
async def test_blank_search_is_422(client: httpx.AsyncClient, path: str, blank: str) -> None:
    reply = await client.get(path, headers=ADMIN, params={"search": blank})
    assert fields(reply) == ["search"]


@pytest.mark.parametrize("headers", [ADMIN, USER], ids=["admin", "user"])
@pytest.mark.parametrize("name", ["a1,a2", "a1%2Ca2", "a1 ", "a1,"])
async def test_path_agent_name_is_one_name(
    client: httpx.AsyncClient, headers: dict[str, str], name: str
) -> None:
    reply = await client.get(f"/api/agents/{name}/executions", headers=headers)
    assert [d["loc"] for d in reply.json()["detail"]] == [["path", "name"]]
    assert fields(reply) == ["name"]


async def test_path_agent_name_lists_that_agent(client: httpx.AsyncClient) -> None:
    body: dict[str, Any] = (
        await client.get("/api/agents/a2/executions", headers=USER, params={"limit": 200})
    ).json()
    assert body["executions"]
    assert {e["agent_name"] for e in body["executions"]} == {"a2"}
    assert body["filters_applied"]["agent_name"] == ["a2"]


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/api/executions/stats", "hours=1&hours=2", "hours"),
        ("/api/executions/timeline", "bucket=week&bucket=day", "bucket"),
        ("/api/executions/timeline", "bucket=day&bucket=day", "bucket"),
        ("/api/executions/timeline", "hours=1&hours=2", "hours"),
        ("/api/executions/export", "format=xml&format=ndjson", "format"),
        ("/api/executions/export", "format=csv&format=ndjson", "format"),
        ("/api/workflows", "hours=1&hours=2", "hours"),
        ("/api/projects", "hours=1&hours=2", "hours"),
        ("/api/workflows/wf-1/stats", "hours=1&hours=96", "hours"),
        ("/api/projects/alpha/stats", "hours=1&hours=96", "hours"),
    ],
)
async def test_repeated_single_valued_parameters_are_422(
    client: httpx.AsyncClient, path: str, query: str, field: str
) -> None:
    reply = await client.get(f"{path}?{query}", headers=ADMIN)
    assert fields(reply) == [field]
    # Given once, each is taken.
    once = query.split("&")[-1]
    assert (await client.get(f"{path}?{once}", headers=ADMIN)).status_code == 200, once


@pytest.mark.parametrize(
    ("path", "query"),
    [("/api/executions/timeline", "bucket="), ("/api/executions/export", "format=")],
)
async def test_an_empty_choice_is_422_not_the_default(
    client: httpx.AsyncClient, path: str, query: str
) -> None:
    reply = await client.get(f"{path}?{query}", headers=ADMIN)
    assert fields(reply) == [query.rstrip("=")]


async def test_a_bad_agent_name_in_the_path_is_422_at_the_path(client: httpx.AsyncClient) -> None:
    reply = await client.get("/api/agents/no%20spaces/executions", headers=ADMIN)
    assert reply.status_code == 422, reply.text
    assert [d["loc"] for d in reply.json()["detail"]] == [["path", "name"]]
    # A filter on the agent here is the query's own mistake, and said so there.
    reply = await client.get("/api/agents/a1/executions?agent_name=a2", headers=ADMIN)
    assert [d["loc"] for d in reply.json()["detail"]] == [["query", "agent_name"]]
