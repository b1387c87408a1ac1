"""Review 2 of the query service: the list's cached count never contradicts its own page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.db import connect
from tests.query.helpers import add_org, client_for, insert, make_rows, settings_for, token

ORG = "qr2-org"
ADMIN = token(ORG, "ada", "admin")


async def test_a_cached_count_below_the_rows_a_page_shows_is_not_served_as_exact(
    database_url: str, nats_url: str
) -> None:
    """The count is cached per (scope, filters) for `count_ttl_s`. Rows arriving meanwhile
    once left an offset page answering `total_count: 3, total_count_exact: true` while it
    showed the 3rd and 4th rows and `has_more: true`: a count its own page proves wrong."""
    now = datetime.now(UTC)
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        first = make_rows(ORG, ("a1",), 3, seed=21, now=now)
        for i, row in enumerate(first):
            row.update(id=f"first-{i}", started_at=now - timedelta(minutes=i), first_seen_at=now)
        await insert(conn, first)
        settings = settings_for(database_url, nats_url, count_ttl_s=60)
        async with client_for(settings) as client:
            page = await client.get("/api/executions", params={"limit": 2}, headers=ADMIN)
            body = page.json()
            assert (body["total_count"], body["has_more"]) == (3, True)  # counted, cached
            later = make_rows(ORG, ("a1",), 3, seed=22, now=now)
            for i, row in enumerate(later):  # older rows: they sort after the first three
                row.update(id=f"later-{i}", started_at=now - timedelta(hours=1 + i))
                row["first_seen_at"] = row["started_at"]
            await insert(conn, later)
            page = await client.get(
                "/api/executions", params={"limit": 2, "offset": 2}, headers=ADMIN
            )
            body = page.json()
            assert page.status_code == 200, page.text
            assert len(body["executions"]) == 2
            assert body["has_more"] is True
            # Rows 3 and 4 shown, and more after them: at least 5 rows match.
            assert body["total_count"] >= 5, body
            assert (body["total_count"], body["total_count_exact"]) == (6, True)
    finally:
        await conn.close()


async def test_a_workflow_or_project_name_holding_nul_is_404_not_a_query_422(
    database_url: str, nats_url: str
) -> None:
    """`/api/workflows/a%00b/stats` answered 422 `loc: ["query", "workflow"]`: a query
    parameter the client never sent. No stored name can hold NUL, so none ran: 404, as a
    missing one (and as an execution id holding NUL) is answered."""
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
    finally:
        await conn.close()
    async with client_for(settings_for(database_url, nats_url)) as client:
        for kind in ("workflows", "projects"):
            reply = await client.get(f"/api/{kind}/a%00b/stats", headers=ADMIN)
            assert reply.status_code == 404, (kind, reply.text)
            assert reply.json()["detail"].startswith("no executions of")


async def test_a_cursor_continues_a_search_spelled_in_another_case(
    database_url: str, nats_url: str
) -> None:
    """The search ignores case, but the cursor's filter fingerprint did not: the next page of
    `search=Please` asked as `search=please` (a box that lower-cases) was a needless 422."""
    org = "qr2-case-org"
    conn = await connect(database_url)
    try:
        await add_org(conn, org)
        await insert(conn, make_rows(org, ("a1",), 6, seed=23))  # every message: "please ..."
    finally:
        await conn.close()
    admin = token(org, "ada", "admin")
    async with client_for(settings_for(database_url, nats_url)) as client:
        first = await client.get(
            "/api/executions", params={"limit": 4, "search": "Please"}, headers=admin
        )
        body = first.json()
        assert body["next_cursor"], body
        rest = await client.get(
            "/api/executions",
            params={"limit": 4, "search": "please", "cursor": body["next_cursor"]},
            headers=admin,
        )
        assert rest.status_code == 200, rest.text
        ids = [r["id"] for r in body["executions"] + rest.json()["executions"]]
        assert len(set(ids)) == len(ids) == 6
        other = await client.get(
            "/api/executions",
            params={"limit": 4, "search": "plea", "cursor": body["next_cursor"]},
            headers=admin,
        )
        assert other.status_code == 422, other.text  # another search is another list
