"""Search through `search_candidates()` (migrations 0012, 0014): the same answers as the ordered
scan, and a function that can never answer for another org than the transaction's."""

from __future__ import annotations

import contextlib
import csv
import io
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from services.query import repo
from services.query.filters import search_pattern
from shared.db import connect
from tests.query.helpers import add_agent, add_org, client_for, insert, make_rows, settings_for
from tests.query.helpers import token as make_token

A, B = "sc-org-a", "sc-org-b"
NOW = datetime.now(UTC)
ADMIN = make_token(A, "ada", "admin")
USER = make_token(A, "ulrich", "user")
# Rare terms (a handful of rows), a multi-word rare term, LIKE metacharacters, a term in
# the response only, a common one, and one that matches nothing.
TERMS = (
    "customer 4242",
    "4242",
    "zebra",
    "ZEBRA crossing",
    "50%_off",
    "back\\slash",
    "quartz",
    "please help customer 4242",
    "please",
    "refund",
    "no such thing at all",
)


def _seed(org: str, n: int, seed: int) -> list[dict[str, Any]]:
    rows = make_rows(org, ("a1", "a2", "a3"), n, seed=seed, now=NOW)
    rnd = random.Random(seed)
    # The rare terms go to rows older than the function's sample (the newest 500 of the org),
    # so that it answers with candidates rather than "common".
    old = sorted(rows, key=lambda r: (r["started_at"] or r["first_seen_at"], r["id"]))[: n - 500]
    specials = (
        ("message", "please help customer 4242 today"),
        ("message", "customer 42420 again"),
        ("message", "a Zebra Crossing ahead"),
        ("message", "zebra"),
        ("response", "saw a zebra"),
        ("message", "sale: 50%_off now"),
        ("message", "sale: 50% off now"),  # not a match of "50%_off" (escaped)
        ("message", "path back\\slash here"),
        ("response", "quartz clock"),
    )
    for field, text in specials:
        for _ in range(3):
            rnd.choice(old)[field] = text
    rnd.choice(old)["message"] = f"only in {org}"
    # Two rows at the very same time: the keyset must break the tie by id.
    rows[5]["started_at"] = rows[6]["started_at"] = rows[6]["first_seen_at"] = NOW
    rows[5]["first_seen_at"] = NOW
    rows[5]["message"] = rows[6]["message"] = "zebra twins"
    return rows


@pytest_asyncio.fixture(scope="module")
async def rows(database_url: str) -> list[dict[str, Any]]:
    conn = await connect(database_url)
    try:
        for org in (A, B):
            await add_org(conn, org)
            await add_agent(conn, org, "a1", owner="ulrich")
            await add_agent(conn, org, "a2", owner="olga", shared_with=("ulrich",))
            await add_agent(conn, org, "a3", owner="olga")
        data = _seed(A, 700, seed=11)
        await insert(conn, data)
        await insert(conn, _seed(B, 600, seed=12))  # the same rare terms in another org
        await conn.execute("ANALYZE executions")
        return data
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module")
async def clients(
    database_url: str, nats_url: str, rows: Any
) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """`with`: candidates on (default 2,000), `small`: a cap of 3 (common sooner),
    `without`: today's ordered scan only. Count caches off."""
    out: dict[str, httpx.AsyncClient] = {}
    opts: dict[str, Any] = {"count_ttl_s": 0}
    async with (
        client_for(settings_for(database_url, nats_url, **opts)) as with_,
        client_for(settings_for(database_url, nats_url, search_candidates=3, **opts)) as small,
        client_for(settings_for(database_url, nats_url, search_candidates=0, **opts)) as without,
    ):
        out.update({"with": with_, "small": small, "without": without})
        yield out


async def pages(client: httpx.AsyncClient, params: dict[str, Any], headers: Any) -> list[Any]:
    """Every page of the list through the cursor: (ids, has_more, next_cursor) each."""
    out = []
    query = {**params, "limit": 20}
    for _ in range(200):
        reply = await client.get("/api/executions", params=query, headers=headers)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        out.append(([e["id"] for e in body["executions"]], body["has_more"], body["next_cursor"]))
        assert body["total_count"] >= sum(len(p[0]) for p in out)
        if not body["has_more"]:
            return out
        query["cursor"] = body["next_cursor"]
    raise AssertionError("too many pages")


def expected(rows: list[dict[str, Any]], term: str, pred: Any = None) -> list[str]:
    def hit(r: dict[str, Any]) -> bool:
        return any(term.lower() in (r[f] or "").lower() for f in ("message", "response"))

    chosen = [r for r in rows if hit(r) and (pred is None or pred(r))]
    chosen.sort(key=lambda r: (r["started_at"] or r["first_seen_at"], r["id"]), reverse=True)
    return [r["id"] for r in chosen]


async def test_candidates_give_the_same_pages_as_the_ordered_scan(
    clients: dict[str, httpx.AsyncClient], rows: list[dict[str, Any]]
) -> None:
    combos: list[tuple[dict[str, Any], Any, Any]] = [
        ({}, None, ADMIN),
        ({"status": "success"}, lambda r: r["status"] == "success", ADMIN),
        ({"agent_name": "a2"}, lambda r: r["agent_name"] == "a2", ADMIN),
        ({}, lambda r: r["agent_name"] in ("a1", "a2"), USER),  # owned + shared
        (
            {"start_time": (NOW - timedelta(days=1)).isoformat()},
            lambda r: (r["started_at"] or r["first_seen_at"]) >= NOW - timedelta(days=1),
            ADMIN,
        ),
    ]
    for term in TERMS:
        for params, pred, headers in combos:
            query = {**params, "search": term}
            want = expected(rows, term, pred)
            base = await pages(clients["without"], query, headers)
            assert [i for p in base for i in p[0]] == want, (term, params)
            for name in ("with", "small"):
                got = await pages(clients[name], query, headers)
                assert got == base, (name, term, params)


async def test_offset_paging_count_and_export_agree(
    clients: dict[str, httpx.AsyncClient], rows: list[dict[str, Any]]
) -> None:
    for term in ("zebra", "4242", "quartz", "please"):
        want = expected(rows, term)
        for name in ("with", "without"):
            client = clients[name]
            params = {"search": term, "limit": 2, "offset": 1}
            body = (await client.get("/api/executions", params=params, headers=ADMIN)).json()
            assert [e["id"] for e in body["executions"]] == want[1:3], (name, term)
            if body["total_count_exact"]:
                assert body["total_count"] == len(want), (name, term)
            reply = await client.get(
                "/api/executions/export", params={"search": term}, headers=ADMIN
            )
            assert [r["id"] for r in csv.DictReader(io.StringIO(reply.text))] == want
        # With candidates a selective term is counted exactly (the ids are known).
        if len(want) < 20:
            body = (
                await clients["with"].get(
                    "/api/executions", params={"search": term, "limit": 2}, headers=ADMIN
                )
            ).json()
            assert (body["total_count"], body["total_count_exact"]) == (len(want), True)


async def _in_org(conn: asyncpg.Connection, org: str | None, pattern: str, cap: int) -> Any:
    async with conn.transaction():
        await conn.execute("SELECT set_config('role', 'fleetwatch_app', true)")
        if org is not None:
            await conn.execute("SELECT set_config('fleetwatch.org', $1, true)", org)
        return await repo.search_candidates(conn, pattern, cap=cap)


async def test_function_answers_for_the_transactions_org_only(
    database_url: str, rows: list[dict[str, Any]]
) -> None:
    conn = await connect(database_url)
    try:
        zebra = search_pattern("zebra")
        in_a = await _in_org(conn, A, zebra, 2000)
        assert in_a is not None
        assert sorted(in_a) == sorted(expected(rows, "zebra"))
        assert all(i.startswith(A) for i in in_a)
        # Newest first.
        assert in_a == expected(rows, "zebra")
        in_b = await _in_org(conn, B, zebra, 2000)
        assert in_b
        assert all(i.startswith(B) for i in in_b)
        # No org set, an unknown org, an empty org: nothing (as the RLS policy).
        assert await _in_org(conn, None, zebra, 2000) == []
        assert await _in_org(conn, "sc-org-nope", zebra, 2000) == []
        assert await _in_org(conn, "", zebra, 2000) == []
        assert await _in_org(conn, A, "%", 0) == []
        # Not even the owner gets anything without the setting.
        assert await conn.fetchval("SELECT search_candidates($1, 2000, NULL)", zebra) == []
        # A common term (or more matches than the cap) is NULL: keep the ordered scan.
        assert await _in_org(conn, A, search_pattern("please"), 2000) is None
        assert await _in_org(conn, A, zebra, 3) is None
        # Selective terms get their candidates; one org's term is never found from another.
        for term in ("4242", "customer 4242", "ZEBRA crossing", "50%_off", "quartz"):
            found = await _in_org(conn, A, search_pattern(term), 2000)
            assert found == expected(rows, term), term
        assert await _in_org(conn, A, search_pattern(f"only in {B}"), 2000) == []
        only_b = await _in_org(conn, B, search_pattern(f"only in {B}"), 2000)
        assert only_b is not None
        assert len(only_b) == 1
        assert only_b[0].startswith(B)
        # The org is never a parameter, and the function runs as its owner with a fixed path.
        proc = await conn.fetchrow(
            "SELECT p.prosecdef, p.provolatile::text AS provolatile, p.proconfig, p.pronargs, "
            "pg_get_function_identity_arguments(p.oid) AS args, "
            "has_function_privilege('public', p.oid, 'EXECUTE') AS public_exec, "
            "has_function_privilege('fleetwatch_app', p.oid, 'EXECUTE') AS app_exec "
            "FROM pg_proc AS p WHERE p.proname = 'search_candidates'"
        )
        assert proc["prosecdef"] is True
        # 0014 replaced the org-wide two-argument form: no caller can reach it any more.
        count = "SELECT count(*) FROM pg_proc WHERE proname = 'search_candidates'"
        assert await conn.fetchval(count) == 1
        assert proc["provolatile"] == "s"
        assert "search_path=pg_catalog, public" in proc["proconfig"]
        assert proc["args"] == "pattern text, cap integer, agent_names text[]"
        assert proc["public_exec"] is False
        assert proc["app_exec"] is True
    finally:
        await conn.close()


class _Rollback(Exception):
    pass


async def test_other_roles_cannot_call_it(database_url: str, rows: Any) -> None:
    role = f"sc_nobody_{uuid.uuid4().hex[:8]}"
    conn = await connect(database_url)
    try:
        await conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
        with contextlib.suppress(_Rollback):
            async with conn.transaction():
                await conn.execute(f'SET LOCAL ROLE "{role}"')
                await conn.execute("SELECT set_config('fleetwatch.org', $1, true)", A)
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetchval("SELECT search_candidates('%zebra%', 10, NULL)")
                raise _Rollback
    finally:
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        await conn.close()
