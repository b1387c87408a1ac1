"""Review 3 of the filtered list: a cursor continues only its caller's own list, times whose
`+` was lost to URL decoding say so, and rows sharing one `sort_at` page exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest_asyncio

from shared.db import connect
from tests.query.helpers import add_agent, add_org, client_for, insert, make_rows, settings_for
from tests.query.helpers import token as make_token

ORG = "lr3-org"
OTHER_ORG = "lr3-other"
ADMIN = make_token(ORG, "ada", "admin")
ADMIN2 = make_token(ORG, "abe", "admin")
USER = make_token(ORG, "uma", "user")
OTHER_ADMIN = make_token(OTHER_ORG, "oz", "admin")
LIST = "/api/executions"
MOMENT = datetime(2026, 3, 8, 9, 30, tzinfo=UTC)
#: Ids that sort differently bytewise, by case and by accents; all share one `sort_at`.
IDS = ("a", "B", "b", "a-1", "a_1", "A1", "é", "z", "Z", "10", "9", "a b", "a%", "ä", "-", "_")


def _rows(org: str) -> list[dict[str, Any]]:
    rows = make_rows(org, ("a1", "a2"), 40, seed=5)
    template = rows[0]
    for i, ident in enumerate(IDS + tuple(f"{ident}~" for ident in IDS)):
        rows.append(
            {
                **template,
                "id": ident,
                "agent_name": ("a1", "a2")[i % 2],
                "started_at": MOMENT,
                "first_seen_at": MOMENT,
                "message": f"tied refund {i}",
            }
        )
    return rows


@pytest_asyncio.fixture(scope="module")
async def client(database_url: str, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    conn = await connect(database_url)
    try:
        for org in (ORG, OTHER_ORG):
            await add_org(conn, org)
            await add_agent(conn, org, "a1", owner="uma")
            await add_agent(conn, org, "a2")
            await insert(conn, _rows(org))
    finally:
        await conn.close()
    settings = settings_for(database_url, nats_url, rate_limit_burst=100_000)
    async with client_for(settings) as found:
        yield found


async def _page(
    client: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str]
) -> httpx.Response:
    return await client.get(LIST, params=params, headers=headers)


async def _walk(
    client: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str], limit: int
) -> tuple[list[str], set[int]]:
    """Every id of the list paged by cursor, and the total counts the pages reported."""
    seen: list[str] = []
    totals: set[int] = set()
    cursor = None
    while True:
        query = {**params, "limit": str(limit)} | ({"cursor": cursor} if cursor else {})
        reply = await _page(client, query, headers)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        seen += [e["id"] for e in body["executions"]]
        totals.add(body["total_count"])
        cursor = body["next_cursor"]
        if not cursor:
            return seen, totals


async def test_a_cursor_continues_only_the_list_of_callers_who_see_the_same_rows(
    client: httpx.AsyncClient,
) -> None:
    first = await _page(client, {"limit": "3"}, ADMIN)
    cursor = first.json()["next_cursor"]
    assert cursor
    # Another org's admin, or a user seeing fewer agents: it would start their list mid-way.
    for other in (OTHER_ADMIN, USER):
        reply = await _page(client, {"cursor": cursor}, other)
        assert reply.status_code == 422, reply.text[:300]
        assert reply.json()["detail"][0]["loc"] == ["query", "cursor"]
    # Another admin of the same org sees the same rows: the same list.
    reply = await _page(client, {"cursor": cursor, "limit": "3"}, ADMIN2)
    assert reply.status_code == 200, reply.text
    mine = await _page(client, {"cursor": cursor, "limit": "3"}, ADMIN)
    assert reply.json()["executions"] == mine.json()["executions"]


async def test_a_time_whose_plus_was_decoded_as_a_space_says_so(
    client: httpx.AsyncClient,
) -> None:
    for name in ("start_time", "end_time"):
        # The `+` is sent unencoded, as typed into a browser or curl: it arrives as a space.
        reply = await client.get(f"{LIST}?{name}=2026-03-08T09:30:00+01:00", headers=ADMIN)
        assert reply.status_code == 422, reply.text
        detail = reply.json()["detail"][0]
        assert detail["loc"] == ["query", name]
        assert "%2B" in detail["msg"]
    encoded = await _page(client, {"start_time": "2026-03-08T09:30:00+01:00"}, ADMIN)
    assert encoded.status_code == 200, encoded.text


async def test_rows_sharing_one_sort_at_are_paged_once_each_with_one_total(
    client: httpx.AsyncClient,
) -> None:
    tied = {"start_time": "2026-03-08T09:30:00Z", "end_time": "2026-03-08T09:30:00.000001Z"}
    for params in ({}, tied, {"search": "tied"}, {"search": "refund"}):
        for headers in (ADMIN, USER):
            whole, totals = await _walk(client, params, headers, 200)
            assert totals == {len(whole)}
            for limit in (1, 3, 7):
                paged, totals = await _walk(client, params, headers, limit)
                assert paged == whole, (params, limit)
                assert totals == {len(whole)}, (params, limit)
    whole, _ = await _walk(client, tied, ADMIN, 200)
    assert len(whole) == 2 * len(IDS)


async def test_the_cached_count_of_one_caller_is_never_another_callers(
    database_url: str, nats_url: str
) -> None:
    """The list's capped count is cached per (scope, filters): callers of one org who see
    different agents each get their own count, asked one after another within its TTL."""
    org = "qc-count-org"
    conn = await connect(database_url)
    try:
        await add_org(conn, org)
        await add_agent(conn, org, "a1", owner="ursula")
        await add_agent(conn, org, "a2", owner="victor")
        rows = make_rows(org, ("a1",), 30, seed=21) + make_rows(org, ("a2",), 12, seed=22)
        for i, row in enumerate(rows):
            row["id"] = f"{org}-c{i:03d}"
        await insert(conn, rows)
    finally:
        await conn.close()
    settings = settings_for(database_url, nats_url, count_ttl_s=60)
    callers = {
        "admin": (make_token(org, "ada", "admin"), 42),
        "ursula": (make_token(org, "ursula", "user"), 30),
        "victor": (make_token(org, "victor", "user"), 12),
        "nobody": (make_token(org, "nobody", "user"), 0),
    }
    async with client_for(settings) as client:
        for _ in range(2):  # the second time round, every count comes from the cache
            for name, (headers, total) in callers.items():
                reply = await client.get("/api/executions?limit=5", headers=headers)
                assert reply.status_code == 200, reply.text
                body = reply.json()
                assert (body["total_count"], body["total_count_exact"]) == (total, True), name
