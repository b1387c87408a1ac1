"""The query API in-process on a real Postgres: filters, search, stats, access, errors."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from services.query.stats import StatsGroup, fold_stats
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

A, B = "qa-org-a", "qa-org-b"
NOW = datetime.now(UTC)


@pytest_asyncio.fixture(scope="module")
async def rows(database_url: str) -> list[dict[str, Any]]:
    conn = await connect(database_url)
    try:
        for org in (A, B):
            await add_org(conn, org)
        await add_agent(conn, A, "a1", owner="ulrich", display_name="Agent One")
        await add_agent(conn, A, "a2", owner="olga", shared_with=("ulrich", "clara"))
        await add_agent(conn, A, "a3", owner="olga")
        await add_agent(conn, B, "a1", owner="bob")
        data = make_rows(A, ("a1", "a2", "a3"), 400, seed=1, now=NOW)
        data[0].update(message="100% sure_thing", response=None)
        data[1].update(message="plain", response="answer with 5_0 underscore")
        await insert(conn, data)
        await insert(conn, make_rows(B, ("a1",), 150, seed=2, now=NOW))
        return data
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module")
async def client(database_url: str, nats_url: str, rows: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings_for(database_url, nats_url)) as found:
        yield found


ADMIN = token(A, "ada", "admin")
USER = token(A, "ulrich", "user")
CLIENT = token(A, "clara", "client")
ADMIN_B = token(B, "bea", "admin")


async def all_ids(
    client: httpx.AsyncClient, params: dict[str, Any], headers: Any = ADMIN
) -> list[str]:
    """Every id of the list, page by page through the cursor."""
    ids: list[str] = []
    query = {**params, "limit": 200}
    while True:
        reply = await client.get("/api/executions", params=query, headers=headers)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        ids += [e["id"] for e in body["executions"]]
        assert body["total_count"] >= len(ids)
        if not body["has_more"]:
            assert body["total_count"] == len(ids)
            return ids
        query["cursor"] = body["next_cursor"]


def sort_key(row: dict[str, Any]) -> tuple[datetime, str]:
    return (row["started_at"] or row["first_seen_at"], row["id"])


def trig(row: dict[str, Any]) -> str:
    known = {"manual", "schedule", "agent", "user", "mcp", "api"}
    return row["triggered_by"] if row["triggered_by"] in known else "other"


def served_window(
    rows: list[dict[str, Any]], hours: int, before: datetime, after: datetime, total: int
) -> list[dict[str, Any]]:
    """The rows of a window the server began at its own `now - hours`, that `now` being some
    moment between `before` and `after` (taken around the request). A row that started in
    that sliver at the edge may be on either side: the server's `total` says how many of
    them it took, the newest (its window is a cut in start order, never between equal ones).
    Outside the sliver, the window is exact."""
    late, early = after - timedelta(hours=hours), before - timedelta(hours=hours)
    sure = [r for r in rows if sort_key(r)[0] >= late]
    edge = sorted((r for r in rows if early <= sort_key(r)[0] < late), key=sort_key, reverse=True)
    assert len(sure) <= total <= len(sure) + len(edge), (total, len(sure), len(edge))
    taken, left = edge[: total - len(sure)], edge[total - len(sure) :]
    assert not (taken and left) or sort_key(taken[-1])[0] > sort_key(left[0])[0]
    return sure + taken


def expected(rows: list[dict[str, Any]], pred: Any) -> list[str]:
    return [r["id"] for r in sorted((r for r in rows if pred(r)), key=sort_key, reverse=True)]


def contains(text: str | None, needle: str) -> bool:
    return text is not None and needle.lower() in text.lower()


T1 = NOW - timedelta(hours=30)
T2 = NOW - timedelta(hours=10)
CASES: list[tuple[dict[str, Any], Any]] = [
    ({}, lambda r: True),
    ({"agent_name": "a1"}, lambda r: r["agent_name"] == "a1"),
    ({"agent_name": ["a1", "a3"]}, lambda r: r["agent_name"] in ("a1", "a3")),
    ({"status": "failed"}, lambda r: r["status"] == "failed"),
    ({"status": ["failed", "running"]}, lambda r: r["status"] in ("failed", "running")),
    ({"status": "failed,pending"}, lambda r: r["status"] in ("failed", "pending")),
    ({"triggered_by": "manual"}, lambda r: r["triggered_by"] == "manual"),
    ({"triggered_by": "other"}, lambda r: trig(r) == "other"),
    ({"triggered_by": ["api", "other"]}, lambda r: trig(r) in ("api", "other")),
    ({"project": "alpha"}, lambda r: r["project"] == "alpha"),
    ({"workflow": ["wf-2", "wf-3"]}, lambda r: r["workflow"] in ("wf-2", "wf-3")),
    ({"start_time": T1.isoformat()}, lambda r: sort_key(r)[0] >= T1),
    ({"end_time": T2.isoformat()}, lambda r: sort_key(r)[0] < T2),
    (
        {"start_time": T1.isoformat(), "end_time": T2.isoformat()},
        lambda r: T1 <= sort_key(r)[0] < T2,
    ),
    (
        {"search": "INVOICE"},
        lambda r: contains(r["message"], "invoice") or contains(r["response"], "invoice"),
    ),
    ({"search": "done: refund"}, lambda r: contains(r["response"], "done: refund")),
    ({"search": "0%"}, lambda r: contains(r["message"], "0%")),
    ({"search": "_"}, lambda r: contains(r["message"], "_") or contains(r["response"], "_")),
    (
        {"status": "success", "agent_name": "a2", "project": "beta"},
        lambda r: r["status"] == "success" and r["agent_name"] == "a2" and r["project"] == "beta",
    ),
    (
        {
            "status": ["failed", "success"],
            "triggered_by": ["schedule", "manual"],
            "search": "re",
            "start_time": T1.isoformat(),
        },
        lambda r: (
            r["status"] in ("failed", "success")
            and r["triggered_by"] in ("schedule", "manual")
            and (contains(r["message"], "re") or contains(r["response"], "re"))
            and sort_key(r)[0] >= T1
        ),
    ),
]


def _case_id(params: dict[str, Any]) -> str:
    """The case's parameters, with T1/T2 by name: ids must not change between collections
    (pytest-xdist's workers each collect, and refuse to run if their lists differ)."""
    return str(params).replace(T1.isoformat(), "T1").replace(T2.isoformat(), "T2")


@pytest.mark.parametrize(("params", "pred"), CASES, ids=[_case_id(c[0]) for c in CASES])
async def test_each_filter_matches_brute_force(
    client: httpx.AsyncClient, rows: list[dict[str, Any]], params: dict[str, Any], pred: Any
) -> None:
    want = expected(rows, pred)
    assert want, "a case that matches nothing tests nothing"
    assert await all_ids(client, params) == want


async def test_search_escapes_like_metacharacters(client: httpx.AsyncClient) -> None:
    ids = await all_ids(client, {"search": "0%"})
    assert ids == [f"{A}-x00000"]
    ids = await all_ids(client, {"search": "5_0"})
    assert ids == [f"{A}-x00001"]  # found in the response


async def test_summary_shape(client: httpx.AsyncClient, rows: list[dict[str, Any]]) -> None:
    body = (await client.get("/api/executions", headers=ADMIN, params={"limit": 200})).json()
    assert body["total_count"] == len(rows)
    assert body["has_more"] is True
    assert len(body["executions"]) == 200
    by_id = {r["id"]: r for r in rows}
    for e in body["executions"]:
        assert "execution_log" not in e
        assert "response" not in e
        assert len(e["message"]) <= 200
        assert e["message"] == by_id[e["id"]]["message"][:200]
        src = by_id[e["id"]]
        assert e["has_error"] == (src["status"] == "failed" or src["error"] is not None)
        assert e["agent_display_name"] == ("Agent One" if e["agent_name"] == "a1" else None)
    assert body["filters_applied"] == {}


async def test_offset_paging_matches_cursor_paging(client: httpx.AsyncClient) -> None:
    first = (await client.get("/api/executions", headers=ADMIN, params={"limit": 30})).json()
    second = (
        await client.get("/api/executions", headers=ADMIN, params={"limit": 30, "offset": 30})
    ).json()
    by_cursor = (
        await client.get(
            "/api/executions", headers=ADMIN, params={"limit": 30, "cursor": first["next_cursor"]}
        )
    ).json()
    assert [e["id"] for e in second["executions"]] == [e["id"] for e in by_cursor["executions"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "bogus"}, "status"),
        ({"status": ""}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"start_time": "2026-02-02", "end_time": "2026-02-01"}, "end_time"),
        ({"stauts": "failed"}, "stauts"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"agent_name": "bad name!"}, "agent_name"),
        ({"search": "x" * 201}, "search"),
        ({"triggered_by": "x" * 65}, "triggered_by"),  # longer than any event carries
    ],
)
async def test_invalid_filter_is_422_naming_the_field(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    reply = await client.get("/api/executions", headers=ADMIN, params=params)
    assert reply.status_code == 422, reply.text
    assert field in [d["loc"][-1] for d in reply.json()["detail"]]


async def test_stats_equal_brute_force_fold(
    client: httpx.AsyncClient, rows: list[dict[str, Any]]
) -> None:
    # The server's window starts at its own `now - 48h`, a moment after the test's `now`: a
    # row starting in between was counted by it and not by `now - 48h` taken after the reply.
    before = datetime.now(UTC)
    reply = await client.get("/api/executions/stats", headers=ADMIN, params={"hours": 48})
    after = datetime.now(UTC)
    assert reply.status_code == 200
    body = reply.json()
    window = served_window(rows, 48, before, after, body["total"])
    groups = [
        StatsGroup(
            r["agent_name"],
            r["triggered_by"],
            r["status"],
            1,
            r["cost"] or 0.0,
            float(r["duration_ms"] or 0),
            1 if r["duration_ms"] is not None else 0,
        )
        for r in window
    ]
    running = sum(1 for r in rows if r["status"] == "running")
    want = fold_stats(groups, running_now=running, display_names={"a1": "Agent One"})
    assert body["total"] == len(window) == want["total"]
    assert body["successful"] == sum(1 for r in window if r["status"] == "success")
    for key in ("failed", "running", "by_trigger", "success_rate", "by_agent"):
        assert body[key] == want[key], key
    assert body["total_cost"] == pytest.approx(want["total_cost"])
    assert body["avg_duration_ms"] == pytest.approx(want["avg_duration_ms"], abs=0.1)
    assert body["computed_at"]
    again = (await client.get("/api/executions/stats", headers=ADMIN, params={"hours": 48})).json()
    assert again["computed_at"] == body["computed_at"]  # served from the cache
    metrics = (await client.get("/metrics")).text
    assert 'fleetwatch_query_cache_total{cache="stats",result="hit"}' in metrics


async def test_timeline_buckets_sum_to_window(
    client: httpx.AsyncClient, rows: list[dict[str, Any]]
) -> None:
    before = datetime.now(UTC)  # the server's `now - 24h` is taken between these two
    reply = await client.get(
        "/api/executions/timeline", headers=ADMIN, params={"hours": 24, "status": "failed"}
    )
    after = datetime.now(UTC)
    assert reply.status_code == 200, reply.text
    buckets = reply.json()["buckets"]
    assert len(buckets) in (24, 25)
    total = sum(b["total"] for b in buckets)
    failed = [r for r in rows if r["status"] == "failed"]
    # Exactly the failed rows of the window (any doubt only about those in the sliver).
    assert total == len(served_window(failed, 24, before, after, total))
    assert all(b["total"] == b["failed"] for b in buckets)
    day = await client.get(
        "/api/executions/timeline", headers=ADMIN, params={"hours": 72, "bucket": "day"}
    )
    assert len(day.json()["buckets"]) in (3, 4)
    bad = await client.get("/api/executions/timeline", headers=ADMIN, params={"bucket": "week"})
    assert bad.status_code == 422


async def test_user_sees_owned_and_shared_agents_only(
    client: httpx.AsyncClient, rows: list[dict[str, Any]]
) -> None:
    ids = await all_ids(client, {}, USER)
    assert ids == expected(rows, lambda r: r["agent_name"] in ("a1", "a2"))
    assert (
        await client.get("/api/executions", headers=USER, params={"agent_name": "a3"})
    ).status_code == 403
    stats = (await client.get("/api/executions/stats", headers=USER)).json()
    assert {a["agent_name"] for a in stats["by_agent"]} <= {"a1", "a2"}
    agents = (await client.get("/api/agents", headers=USER)).json()["agents"]
    assert [a["name"] for a in agents] == ["a1", "a2"]
    assert "shared_with" in agents[0]
    assert "shared_with" not in agents[1]


async def test_client_sees_shared_agents_only_through_per_agent_endpoints(
    client: httpx.AsyncClient, rows: list[dict[str, Any]]
) -> None:
    for path in (
        "/api/executions",
        "/api/executions/stats",
        "/api/executions/export",
        "/api/executions/timeline",
        "/api/workflows",
    ):
        assert (await client.get(path, headers=CLIENT)).status_code == 403, path
    reply = await client.get("/api/agents/a2/executions", headers=CLIENT, params={"limit": 200})
    assert reply.status_code == 200
    want = expected(rows, lambda r: r["agent_name"] == "a2")
    assert reply.json()["total_count"] == len(want)
    assert (await client.get("/api/agents/a1/executions", headers=CLIENT)).status_code == 403
    a1_row = next(r for r in rows if r["agent_name"] == "a1")
    assert (await client.get(f"/api/executions/{a1_row['id']}", headers=CLIENT)).status_code == 404
    a2_row = next(r for r in rows if r["agent_name"] == "a2")
    assert (await client.get(f"/api/executions/{a2_row['id']}", headers=CLIENT)).status_code == 200


async def test_no_request_reaches_another_org(
    client: httpx.AsyncClient, rows: list[dict[str, Any]]
) -> None:
    ids = await all_ids(client, {}, ADMIN_B)
    assert len(ids) == 150
    assert all(i.startswith(B) for i in ids)
    # Same agent name in both orgs: still only B's rows.
    per_agent = (await client.get("/api/agents/a1/executions", headers=ADMIN_B)).json()
    assert all(e["id"].startswith(B) for e in per_agent["executions"])
    other = rows[5]["id"]
    for path in (f"/api/executions/{other}", f"/api/executions/{other}/log"):
        assert (await client.get(path, headers=ADMIN_B)).status_code == 404
    assert (
        await client.post(f"/api/executions/{other}/terminate", headers=ADMIN_B)
    ).status_code == 404
    stats = (
        await client.get("/api/executions/stats", headers=ADMIN_B, params={"hours": 168})
    ).json()
    assert stats["total"] == 150
    export = await client.get(
        "/api/executions/export", headers=ADMIN_B, params={"format": "ndjson"}
    )
    assert all(orjson.loads(line)["id"].startswith(B) for line in export.text.splitlines())


async def test_auth_errors(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/executions")).status_code == 401
    bad = await client.get("/api/executions", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"] == "Bearer"
    forged = token(A, "ada", "admin")["Authorization"][:-3] + "abc"
    assert (
        await client.get("/api/executions", headers={"Authorization": forged})
    ).status_code == 401


async def test_export_streams_every_matching_row(
    client: httpx.AsyncClient, rows: list[dict[str, Any]]
) -> None:
    want = expected(rows, lambda r: r["status"] == "failed")
    reply = await client.get("/api/executions/export", headers=ADMIN, params={"status": "failed"})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(reply.text)))
    assert [r["id"] for r in table] == want
    nd = await client.get(
        "/api/executions/export", headers=ADMIN, params={"status": "failed", "format": "ndjson"}
    )
    assert [orjson.loads(x)["id"] for x in nd.text.splitlines()] == want
    assert (
        await client.get("/api/executions/export", headers=ADMIN, params={"format": "xml"})
    ).status_code == 422


async def test_metrics_use_route_templates(
    client: httpx.AsyncClient, rows: list[dict[str, Any]]
) -> None:
    await client.get(f"/api/executions/{rows[3]['id']}", headers=ADMIN)
    text = (await client.get("/metrics")).text
    assert 'route="/api/executions/{execution_id}"' in text
    assert rows[3]["id"] not in text
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = (await client.get("/readyz")).json()
    assert ready["database"] is True
    assert ready["app_role"] is True
    spec = (await client.get("/openapi.json")).json()
    assert "/api/executions" in spec["paths"]
    assert "/api/executions/{execution_id}/terminate" in spec["paths"]


async def test_count_is_capped_and_says_so(database_url: str, nats_url: str, rows: Any) -> None:
    async with client_for(settings_for(database_url, nats_url, exact_count_limit=100)) as capped:
        body = (await capped.get("/api/executions", headers=ADMIN)).json()
        assert body["total_count"] == 100
        assert body["total_count_exact"] is False
        few = (await capped.get("/api/executions", headers=ADMIN, params={"search": "0%"})).json()
        assert few["total_count"] == 1
        assert few["total_count_exact"] is True


async def test_cached_stats_and_scopes_need_no_database(
    database_url: str, nats_url: str, rows: Any
) -> None:
    """A stats hit is answered from memory: auth, the scope cache and the encoded answer."""
    async with client_for(settings_for(database_url, nats_url)) as fresh:
        app = fresh._transport.app  # type: ignore[attr-defined]
        state = app.state.query
        callers = (ADMIN, USER)
        first = [(await fresh.get("/api/executions/stats", headers=h)).json() for h in callers]
        pool, state.pool = state.pool, None  # any database access now answers 503
        try:
            for h, before in zip(callers, first, strict=True):
                again = await fresh.get("/api/executions/stats", headers=h)
                assert again.status_code == 200
                assert again.json() == before
            assert (await fresh.get("/api/executions", headers=USER)).status_code == 503
        finally:
            state.pool = pool
        assert first[1]["total"] < first[0]["total"]


async def test_search_count_is_a_bounded_lower_bound(
    database_url: str, nats_url: str, rows: Any
) -> None:
    settings = settings_for(database_url, nats_url, search_count_scan=30)
    async with client_for(settings) as scanned:
        params: dict[str, str | int] = {"search": "please", "limit": 10}
        body = (await scanned.get("/api/executions", headers=ADMIN, params=params)).json()
        assert body["total_count_exact"] is False
        assert 11 <= body["total_count"] <= 30
        assert body["has_more"] is True
        # A search whose matches fit on the page is counted exactly from the page.
        few = (await scanned.get("/api/executions", headers=ADMIN, params={"search": "0%"})).json()
        assert (few["total_count"], few["total_count_exact"]) == (1, True)
    async with client_for(settings_for(database_url, nats_url, search_count_scan=0)) as exact:
        body = (await exact.get("/api/executions", headers=ADMIN, params=params)).json()
        assert body["total_count_exact"] is True
        assert body["total_count"] == sum(1 for r in rows if "please" in r["message"])


async def test_stats_are_refreshed_ahead_of_expiry(
    database_url: str, nats_url: str, rows: Any
) -> None:
    """Past half the TTL a hit still answers at once and a background task recomputes."""
    # A TTL long enough that a loaded machine still asks again between half of it and its end.
    ttl_s = 4.0
    async with client_for(settings_for(database_url, nats_url, stats_ttl_s=ttl_s)) as fresh:
        state = fresh._transport.app.state.query  # type: ignore[attr-defined]
        expires = time.monotonic() + ttl_s  # at the earliest: the entry is computed after this
        first = (await fresh.get("/api/executions/stats", headers=ADMIN)).json()
        await asyncio.sleep(ttl_s / 2 + 0.2)
        stale = (await fresh.get("/api/executions/stats", headers=ADMIN)).json()
        assert stale["computed_at"] == first["computed_at"]  # served from the cache
        while state.refreshing:  # the refresh lands before the entry would expire
            assert time.monotonic() < expires, "the background refresh did not land in time"
            await asyncio.sleep(0.01)
        again = (await fresh.get("/api/executions/stats", headers=ADMIN)).json()
        assert again["computed_at"] > first["computed_at"]
