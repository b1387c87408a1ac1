"""A search's answer, count and count kind depend only on rows the caller may see, and a
count is never more than the matches that exist."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest_asyncio

from services.query import repo
from services.query.filters import search_pattern
from shared.access import enter_org
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

NOW = datetime.now(UTC)
# Two orgs alike for the user (same agents, same rows of theirs); only in LEAKY do executions
# of an agent hidden from them mention the term, often and recently.
LEAKY, QUIET = "scope-leaky", "scope-quiet"
TERM = "quasar"
SCAN = 30  # search_count_scan: the user's list (80 rows) is longer, so a walk only bounds


def _visible(org: str) -> list[dict[str, Any]]:
    rows = make_rows(org, ("mine",), 80, seed=21, now=NOW - timedelta(hours=1))
    oldest = sorted(rows, key=lambda r: (r["started_at"] or r["first_seen_at"], r["id"]))
    for row in oldest[:2]:  # older than the newest SCAN rows of the user's list
        row["message"] = f"ask about the {TERM} today"
    return rows


def _hidden(org: str, *, mentions: bool) -> list[dict[str, Any]]:
    rows = make_rows(org, ("theirs",), 40, seed=22, now=NOW)
    for i, row in enumerate(rows):
        row["id"] = f"{org}-hidden{i:03d}"
        row["started_at"] = row["first_seen_at"] = NOW - timedelta(seconds=i)
        if mentions and i < 10:
            row["message"] = f"secret {TERM} plans"
    return rows


@pytest_asyncio.fixture(scope="module")
async def seeded(database_url: str) -> list[dict[str, Any]]:
    conn = await connect(database_url)
    try:
        visible = []
        for org in (LEAKY, QUIET):
            await add_org(conn, org)
            await add_agent(conn, org, "mine", owner="ulrich")
            await add_agent(conn, org, "theirs", owner="olga")
            rows = _visible(org)
            visible += rows
            await insert(conn, rows + _hidden(org, mentions=org == LEAKY))
        return visible
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module")
async def client(database_url: str, nats_url: str, seeded: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(database_url, nats_url, search_count_scan=SCAN, count_ttl_s=0)
    async with client_for(settings) as found:
        yield found


def _seen_by_user(body: dict[str, Any], org: str) -> dict[str, Any]:
    """Everything of a list answer, with the org taken out of the ids."""
    return {
        **body,
        # `updated_at` is when the seed inserted the row: the one field the orgs differ in.
        "executions": [
            {**e, "id": e["id"].removeprefix(org), "updated_at": None} for e in body["executions"]
        ],
        "next_cursor": None if body["next_cursor"] is None else "set",
    }


async def test_hidden_rows_never_change_what_a_user_sees(client: httpx.AsyncClient) -> None:
    cases: list[dict[str, str | int]] = [
        {"search": TERM, "limit": 1},
        {"search": TERM, "limit": 1, "offset": 1},
        {"search": TERM, "limit": 5},
        {"search": TERM, "agent_name": "mine", "limit": 1},
    ]
    for params in cases:
        answers = []
        for org in (LEAKY, QUIET):
            headers = token(org, "ulrich", "user")
            reply = await client.get("/api/executions", headers=headers, params=params)
            assert reply.status_code == 200, reply.text
            answers.append(_seen_by_user(reply.json(), org))
        assert answers[0] == answers[1], params
        assert answers[0]["total_count"] == 2, params
        assert answers[0]["total_count_exact"] is True, params
        per_agent = []
        for org in (LEAKY, QUIET):
            headers = token(org, "ulrich", "user")
            query = {k: v for k, v in params.items() if k != "agent_name"}
            reply = await client.get("/api/agents/mine/executions", headers=headers, params=query)
            per_agent.append(_seen_by_user(reply.json(), org))
        assert per_agent[0] == per_agent[1], params


async def test_an_admin_still_finds_every_match(client: httpx.AsyncClient) -> None:
    body = (
        await client.get(
            "/api/executions", headers=token(LEAKY, "ada", "admin"), params={"search": TERM}
        )
    ).json()
    assert body["total_count"] == 12
    assert len(body["executions"]) == 12


async def test_a_count_with_no_match_is_zero(database_url: str, nats_url: str, seeded: Any) -> None:
    """Past the end of a search with no match, the page proves nothing: not `offset` rows."""
    settings = settings_for(
        database_url, nats_url, search_count_scan=SCAN, search_candidates=0, count_ttl_s=0
    )
    async with client_for(settings) as walking:
        for headers in (token(QUIET, "ulrich", "user"), token(QUIET, "ada", "admin")):
            for offset in (1, 7):
                params = {"search": "nothing like this", "offset": offset}
                body = (await walking.get("/api/executions", headers=headers, params=params)).json()
                assert body["executions"] == []
                assert body["total_count"] == 0, (offset, body)


async def _candidates(
    conn: asyncpg.Connection, org: str, agents: frozenset[str] | None
) -> list[str] | None:
    async with conn.transaction():
        await enter_org(conn, org)
        return await repo.search_candidates(conn, search_pattern(TERM), cap=2000, agents=agents)


async def test_the_function_reads_only_the_agents_it_is_given(
    database_url: str, seeded: list[dict[str, Any]]
) -> None:
    mine = [
        r["id"]
        for r in sorted(seeded, key=lambda r: (r["started_at"] or r["first_seen_at"], r["id"]))
        if r["org"] == LEAKY and TERM in r["message"]
    ][::-1]
    conn = await connect(database_url)
    try:
        assert await _candidates(conn, LEAKY, frozenset({"mine"})) == mine
        assert await _candidates(conn, QUIET, frozenset({"mine"})) == [
            i.replace(LEAKY, QUIET) for i in mine
        ]
        assert await _candidates(conn, LEAKY, None) is None  # common across the org
        assert await _candidates(conn, LEAKY, frozenset({"theirs"})) is None
        assert await _candidates(conn, LEAKY, frozenset()) == []
        assert await _candidates(conn, LEAKY, frozenset({"nobody"})) == []
    finally:
        await conn.close()
