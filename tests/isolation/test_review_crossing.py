"""Crossing attempts against the running query service: a token of org A (admin, user, client)
trying to reach org B, or a user reaching agents of their own org not shared with them, through
cursors, odd ids, caches that outlive a share, path tricks, and answers whose size or wording
would confirm that another org's execution exists.

Every attempt here must fail; each test says what would count as success for the attacker.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import nats
import orjson
import pytest
import pytest_asyncio

from shared.db import connect
from tests.isolation.world import Caller, World, query_env, seed_world
from tests.procs import Service, running

pytestmark = pytest.mark.e2e


PREFIX = f"isx{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(scope="module")
async def stack(nats_url: str, database_url: str) -> AsyncIterator[tuple[Service, World, str]]:
    conn = await connect(database_url)
    try:
        world = await seed_world(conn)
    finally:
        await conn.close()
    async with running("query", query_env(nats_url, database_url, prefix=PREFIX)) as query:
        yield query, world, database_url


@pytest_asyncio.fixture
async def client(stack: tuple[Service, World, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack[0].url, timeout=20) as c:
        yield c


def _clean(world: World, caller: Caller, text: str, sent: str = "") -> None:
    """Nothing only a hidden row holds (its id, the other org's name) in `text`, unless the
    caller sent it themselves."""
    leaked = [c for c in world.canaries(caller) if c in text and c not in sent]
    assert not leaked, (caller.label, leaked[:5], text[:300])


def _cursor(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


async def _ids(client: httpx.AsyncClient, caller: Caller, **params: Any) -> dict[str, Any]:
    r = await client.get("/api/executions", params=params, headers=caller.headers)
    assert r.status_code == 200, (caller.label, params, r.status_code, r.text[:300])
    return dict(r.json())


async def test_cursors_of_another_org_or_filter_never_widen(
    stack: tuple[Service, World, str], client: httpx.AsyncClient
) -> None:
    """A cursor B's admin was given, one of another filter, and forged ones (no filter
    fingerprint, far-future position, an id of B) page only through the caller's own rows."""
    _, world, _ = stack
    a_admin, a_owner, b_admin = (world.callers[k] for k in ("a-admin", "a-owner", "b-admin"))
    b_page = await _ids(client, b_admin, limit=5)
    b_cursor = b_page["next_cursor"]
    assert b_cursor
    hidden_b = world.one_hidden(a_admin)
    assert hidden_b is not None
    forged = [
        b_cursor,
        _cursor({"v": 1, "t": "9999-01-01T00:00:00+00:00", "i": "~~~~"}),
        _cursor({"v": 1, "t": "2999-01-01T00:00:00+00:00", "i": hidden_b["id"]}),
    ]
    for caller in (a_admin, a_owner):
        visible = {r["id"] for r in world.visible(caller)}
        for cursor in forged:
            r = await client.get(
                "/api/executions", params={"cursor": cursor, "limit": 200}, headers=caller.headers
            )
            if r.status_code == 422:  # B's cursor carries B's (empty) filters: same as ours
                continue
            assert r.status_code == 200, (caller.label, r.status_code, r.text[:200])
            got = {e["id"] for e in r.json()["executions"]}
            assert got <= visible, (caller.label, got - visible)
            _clean(world, caller, r.text, cursor)
        # A cursor of the admin's `status=failed` list cannot continue the owner's unfiltered one.
        page = await _ids(client, a_admin, status="failed", limit=1)
        if page["next_cursor"]:
            r = await client.get(
                "/api/executions", params={"cursor": page["next_cursor"]}, headers=caller.headers
            )
            assert r.status_code == 422, r.text
    # A's owner continuing A's admin's unfiltered cursor: refused, as the owner sees other rows
    # (accepted, it only ever gave the owner's rows, but skipped the newer ones silently).
    admin_page = await _ids(client, a_admin, limit=3)
    r = await client.get(
        "/api/executions",
        params={"cursor": admin_page["next_cursor"], "limit": 200},
        headers=a_owner.headers,
    )
    assert r.status_code == 422, r.text
    assert "another caller" in r.text


def _odd_variants(xid: str) -> list[str]:
    """Path segments (already percent-encoded as sent) that name, or try to name, `xid`."""
    q = quote(xid, safe="")
    return [
        q,
        quote(q, safe=""),  # double-encoded
        f"..%2F{q}",
        f"{q}%2F..",
        f"%2E%2E%2F{q}",
        f"{q}%00",
        f"{q}%20",
        quote(xid.upper(), safe=""),
        quote(xid + "\u0301", safe=""),  # a combining accent: a different string
        quote("x" * 5000, safe=""),
        "%F0%9F%92%A3",
        "%FF",  # not UTF-8
    ]


@pytest.mark.parametrize("label", ["a-admin", "a-owner", "a-client"])
async def test_odd_ids_never_reach_a_hidden_row(
    stack: tuple[Service, World, str], client: httpx.AsyncClient, label: str
) -> None:
    _, world, _ = stack
    caller = world.callers[label]
    targets = [world.one_hidden(caller, org=world.org_b)]
    if caller.agents is not None:
        targets.append(world.one_hidden(caller, org=world.org_a))
    for row in targets:
        assert row is not None
        for segment in _odd_variants(row["id"]):
            for suffix in ("", "/log"):
                r = await client.get(f"/api/executions/{segment}{suffix}", headers=caller.headers)
                assert r.status_code in (404, 422), (label, segment, suffix, r.status_code)
                _clean(world, caller, r.text, segment)
                assert row["message"] not in r.text
            r = await client.post(f"/api/executions/{segment}/terminate", headers=caller.headers)
            assert r.status_code in (404, 405, 422), (label, segment, r.status_code)


@pytest.mark.parametrize("label", ["a-admin", "a-owner", "a-client"])
async def test_a_hidden_id_answers_exactly_as_a_missing_one(
    stack: tuple[Service, World, str], client: httpx.AsyncClient, label: str
) -> None:
    """Same status, same body (but for the id itself), same headers: neither the wording nor
    the size confirms that B's id (or an unshared agent's) exists."""
    _, world, _ = stack
    caller = world.callers[label]
    hidden = [r for r in world.hidden(caller) if r["execution_log"] is not None]
    assert hidden
    for row in hidden[:6]:
        xid = row["id"]
        missing = "z" * len(xid)
        for method, suffix in (("GET", ""), ("GET", "/log"), ("POST", "/terminate")):
            got = []
            for ident in (xid, missing):
                r = await client.request(
                    method,
                    f"/api/executions/{quote(ident, safe='')}{suffix}",
                    headers=caller.headers,
                )
                headers = {k: v for k, v in r.headers.items() if k not in ("date",)}
                got.append((r.status_code, r.text.replace(ident, "<id>"), headers))
            assert got[0] == got[1], (label, method, suffix, got)


async def _set_share(url: str, org: str, agent: str, user: str, *, on: bool) -> None:
    """Change a share behind the service's back (another replica, a migration, the CLI)."""
    conn = await connect(url)
    try:
        if on:
            await conn.execute(
                "INSERT INTO agent_shares (org, agent_name, user_id) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                org,
                agent,
                user,
            )
        else:
            await conn.execute(
                "DELETE FROM agent_shares WHERE org = $1 AND agent_name = $2 AND user_id = $3",
                org,
                agent,
                user,
            )
    finally:
        await conn.close()


async def test_a_revoked_share_is_gone_from_every_cache_at_once(
    stack: tuple[Service, World, str], client: httpx.AsyncClient
) -> None:
    """The sharer warms every cache (scope, stats, list count) on beta; the admin revokes the
    share through the API; the very next answers (well within every TTL) show nothing of beta."""
    _, world, url = stack
    admin, sharer = world.callers["a-admin"], world.callers["a-sharer"]
    beta = [r for r in world.rows if (r["org"], r["agent_name"]) == (world.org_a, "beta")]
    one = beta[0]["id"]
    for _ in range(2):  # the second of each is a cache hit
        s = (await client.get("/api/executions/stats?hours=168", headers=sharer.headers)).json()
        assert s["total"] == len(beta)
        page = await _ids(client, sharer, limit=2)
        assert page["total_count"] == len(beta)
    assert (await client.get(f"/api/executions/{one}", headers=sharer.headers)).status_code == 200
    r = await client.delete("/api/agents/beta/shares/sharer", headers=admin.headers)
    assert r.status_code == 204
    try:
        s = (await client.get("/api/executions/stats?hours=168", headers=sharer.headers)).json()
        assert s["total"] == 0, s
        assert s["by_agent"] == [], s
        page = await _ids(client, sharer, limit=2)
        assert page["executions"] == [], page
        assert page["total_count"] == 0, page
        for path in (f"/api/executions/{one}", f"/api/executions/{one}/log"):
            assert (await client.get(path, headers=sharer.headers)).status_code == 404
        r = await client.get("/api/agents/beta/executions", headers=sharer.headers)
        assert r.status_code == 403
        agents = (await client.get("/api/agents", headers=sharer.headers)).json()["agents"]
        assert agents == []
    finally:
        await _set_share(url, world.org_a, "beta", "sharer", on=True)


async def test_an_owner_change_takes_the_agent_away_at_once(
    stack: tuple[Service, World, str], client: httpx.AsyncClient
) -> None:
    _, world, _ = stack
    admin, owner = world.callers["a-admin"], world.callers["a-owner"]
    alpha = [r for r in world.rows if (r["org"], r["agent_name"]) == (world.org_a, "alpha")]
    s = (await client.get("/api/executions/stats?hours=168", headers=owner.headers)).json()
    assert s["total"] == len(alpha)
    r = await client.put("/api/agents/alpha", json={"owner": "boss"}, headers=admin.headers)
    assert r.status_code == 200
    try:
        s = (await client.get("/api/executions/stats?hours=168", headers=owner.headers)).json()
        assert s["total"] == 0, s
        r = await client.get(f"/api/executions/{alpha[0]['id']}", headers=owner.headers)
        assert r.status_code == 404
        # Nor can the former owner share it (back) with themselves or anyone.
        r = await client.put("/api/agents/alpha/shares/owner", headers=owner.headers)
        assert r.status_code == 403
    finally:
        r = await client.put("/api/agents/alpha", json={"owner": "owner"}, headers=admin.headers)
        assert r.status_code == 200


async def test_stats_cache_is_never_served_across_scopes(
    stack: tuple[Service, World, str], client: httpx.AsyncClient
) -> None:
    """Admins of A and B, and A's users, asking the same question at once: each gets their
    own figures, never another scope's cached body."""
    _, world, _ = stack
    labels = ("a-admin", "b-admin", "a-owner", "a-sharer", "a-nobody", "b-owner")
    for _ in range(3):
        for label in labels:
            caller = world.callers[label]
            r = await client.get("/api/executions/stats?hours=168", headers=caller.headers)
            assert r.status_code == 200
            assert r.json()["total"] == len(world.visible(caller)), label
            _clean(world, caller, r.text)
            for name in ("alpha", "beta"):
                r = await client.get(
                    "/api/executions/stats",
                    params={"hours": 168, "agent_name": name},
                    headers=caller.headers,
                )
                want = [x for x in world.visible(caller) if x["agent_name"] == name]
                if caller.agents is None or name in caller.agents:
                    assert r.status_code == 200, label
                    assert r.json()["total"] == len(want), label
                else:
                    assert r.status_code == 403, (label, name)


async def test_search_and_filters_find_nothing_of_b(
    stack: tuple[Service, World, str], client: httpx.AsyncClient
) -> None:
    _, world, _ = stack
    b_marker = f"[{world.org_b}]"
    b_workflow = f"wf-{world.org_b}"
    for label in ("a-admin", "a-owner"):
        caller = world.callers[label]
        for params in (
            {"search": b_marker},
            {"search": world.org_b},
            {"search": "%"},
            {"search": "_"},
            {"search": "\\"},
            {"workflow": b_workflow},
            {"search": b_marker, "workflow": b_workflow},
        ):
            body = await _ids(client, caller, limit=200, **params)
            visible = {r["id"] for r in world.visible(caller)}
            assert {e["id"] for e in body["executions"]} <= visible, (label, params)
            if "workflow" in params or world.org_b in params.get("search", ""):
                assert body["executions"] == [], (label, params)
                assert body["total_count"] == 0, (label, params)
            for path in ("/api/executions/export", "/api/executions/timeline"):
                r = await client.get(path, params=params, headers=caller.headers)
                assert r.status_code == 200, (label, path, params, r.text[:200])
                _clean(world, caller, r.text, str(params))
        r = await client.get(
            f"/api/workflows/{quote(b_workflow, safe='')}/stats", headers=caller.headers
        )
        assert r.status_code == 404


async def test_a_users_search_is_judged_on_their_rows_only(
    stack: tuple[Service, World, str], client: httpx.AsyncClient
) -> None:
    """A term only the org's unshared rows hold finds nothing for the owner, by any path: the
    fleet list, the per-agent list, a search naming a hidden agent, export, timeline."""
    _, world, _ = stack
    owner = world.callers["a-owner"]
    gamma = next(r for r in world.rows if (r["org"], r["agent_name"]) == (world.org_a, "gamma"))
    term = gamma["id"]  # not in any message, but the canary check below covers every path
    for params in ({"search": gamma["message"][:40]}, {"search": term}):
        body = await _ids(client, owner, limit=200, **params)
        assert {e["agent_name"] for e in body["executions"]} <= {"alpha"}
        _clean(world, owner, orjson.dumps(body).decode(), str(params))
        r = await client.get(
            "/api/agents/alpha/executions", params={**params, "limit": 200}, headers=owner.headers
        )
        assert {e["agent_name"] for e in r.json()["executions"]} <= {"alpha"}
        for name in ("gamma", "beta", "gamma,alpha"):
            r = await client.get(
                "/api/executions", params={**params, "agent_name": name}, headers=owner.headers
            )
            assert r.status_code == 403, (name, r.status_code)


async def test_agent_management_never_crosses_orgs(
    stack: tuple[Service, World, str], client: httpx.AsyncClient
) -> None:
    """A's admin naming B's agent (`delta`) makes an agent of A; B's row is untouched. Names
    with path tricks are refused, never resolved to another agent."""
    _, world, url = stack
    a_admin, a_owner = world.callers["a-admin"], world.callers["a-owner"]
    conn: asyncpg.Connection = await connect(url)
    try:
        before = await conn.fetchrow(
            "SELECT owner, display_name FROM agents WHERE org = $1 AND name = 'delta'", world.org_b
        )
        r = await client.put(
            "/api/agents/delta",
            json={"owner": "boss", "display_name": "mine"},
            headers=a_admin.headers,
        )
        assert r.status_code == 200
        after = await conn.fetchrow(
            "SELECT owner, display_name FROM agents WHERE org = $1 AND name = 'delta'", world.org_b
        )
        assert before == after
        await conn.execute("DELETE FROM agents WHERE org = $1 AND name = 'delta'", world.org_a)
        for name in ("..%2Fbeta", "alpha%2F..%2Fbeta", "beta%00", "%2E%2E", "alpha%2Fshares"):
            for method in ("PUT", "DELETE"):
                r = await client.request(
                    method, f"/api/agents/{name}/shares/nobody", headers=a_owner.headers
                )
                assert r.status_code in (403, 404, 405, 422), (name, method, r.status_code)
        shares = await conn.fetchval("SELECT count(*) FROM agent_shares WHERE user_id = 'nobody'")
        assert shares == 0
        # B's user ids in a share of A's agent stay A's: B's `cust` gains nothing.
        r = await client.put(
            f"/api/agents/alpha/shares/{quote('cust/../boss', safe='')}", headers=a_owner.headers
        )
        assert r.status_code == 204
        r = await client.get(
            "/api/agents/alpha/executions", headers=world.callers["b-client"].headers
        )
        assert r.status_code == 403
        await conn.execute(
            "DELETE FROM agent_shares WHERE org = $1 AND user_id = 'cust/../boss'", world.org_a
        )
    finally:
        await conn.close()


async def test_unauthenticated_pages_hold_no_data(
    stack: tuple[Service, World, str], client: httpx.AsyncClient
) -> None:
    _, world, _ = stack
    for path in ("/", "/api/config", "/metrics", "/openapi.json", "/healthz", "/readyz"):
        r = await client.get(path)
        assert r.status_code in (200, 503), (path, r.status_code)
        for org in (world.org_a, world.org_b):
            assert org not in r.text, path
        assert not any(row["id"] in r.text for row in world.rows[:50]), path
    for path in ("/api/executions", "/api/executions/stats", "/api/agents", "/api/workflows"):
        r = await client.get(path, headers={"Authorization": "Bearer x"})
        assert r.status_code == 401


async def test_detail_of_a_hidden_engine_run_asks_the_reconciler_nothing(
    stack: tuple[Service, World, str], client: httpx.AsyncClient, nats_url: str
) -> None:
    """Opening B's engine run (or an unshared agent's) must not make the query service ask the
    reconciler to fetch it: that would reach the engine for a row the caller may not see."""
    _, world, url = stack
    xid = f"engine-run-{uuid.uuid4().hex[:8]}"
    conn = await connect(url)
    try:
        # A copy of one of B's rows (and one of A's unshared gamma) as engine runs.
        for org, agent in ((world.org_b, "alpha"), (world.org_a, "gamma")):
            await conn.execute(
                "INSERT INTO executions (org, id, agent_name, status, first_seen_at, updated_at,"
                " engine, external_id) VALUES ($1, $2, $3, 'running', now(), now(),"
                " 'temporal', 'ext-' || $2)",
                org,
                f"{xid}-{org}",
                agent,
            )
    finally:
        await conn.close()
    nc = await nats.connect(nats_url)
    asked: list[bytes] = []

    async def note(msg: Any) -> None:
        asked.append(msg.data)

    try:
        sub = await nc.subscribe(f"{PREFIX}.rpc.reconciler.sync_components", cb=note)
        await nc.flush()
        for label in ("a-admin", "a-owner", "a-client"):
            caller = world.callers[label]
            for org in (world.org_a, world.org_b):
                target = f"{xid}-{org}"
                r = await client.get(f"/api/executions/{target}", headers=caller.headers)
                if org == world.org_a and caller.agents is None:
                    assert r.status_code == 200  # the admin's own: asked, as it should be
                else:
                    assert r.status_code == 404, (label, org, r.status_code)
        await nc.flush()
        await sub.unsubscribe()
    finally:
        await nc.close()
    conn = await connect(url)
    try:
        await conn.execute("DELETE FROM executions WHERE id LIKE $1", f"{xid}-%")
    finally:
        await conn.close()
    assert not [m for m in asked if f"{xid}-{world.org_b}".encode() in m]
    assert len([m for m in asked if f"{xid}-{world.org_a}".encode() in m]) == 1


_ODD = ("\x00", "a\x00b", "%", "_", "\\", "'", "x" * 201, "é" * 200, "🙂", ",", " ")
#: Percent-encoded as sent: the odd strings above, a lone surrogate and a byte not UTF-8.
ODD_VALUES = (*(quote(v, safe="") for v in _ODD), "%ED%A0%80", "%FF")


@pytest.mark.parametrize("label", ["a-admin", "a-owner"])
async def test_odd_filter_values_are_refused_or_harmless(
    stack: tuple[Service, World, str], client: httpx.AsyncClient, label: str
) -> None:
    """Every filter and path name with odd values: a 422 naming the field or an answer of the
    caller's rows only, never a 500 (whose log or body could carry another org's data)."""
    _, world, _ = stack
    caller = world.callers[label]
    names = ("agent_name", "status", "triggered_by", "project", "workflow", "search")
    paths = (
        "/api/executions",
        "/api/executions/export",
        "/api/executions/timeline",
        "/api/agents/alpha/executions",
    )
    for value in ODD_VALUES:
        for name in names:
            for path in paths:
                if name == "agent_name" and path.startswith("/api/agents/"):
                    continue
                r = await client.get(f"{path}?{name}={value}", headers=caller.headers)
                assert r.status_code in (200, 403, 422), (label, path, name, value, r.status_code)
                _clean(world, caller, r.text)
        for kind in ("workflows", "projects"):
            r = await client.get(f"/api/{kind}/{value}/stats", headers=caller.headers)
            assert r.status_code in (404, 422), (label, kind, value, r.status_code)


async def _fastest(client: httpx.AsyncClient, caller: Caller, path: str, tries: int = 5) -> float:
    """The quickest of a few answers (a busy machine only ever adds time), each a 404."""
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        r = await client.get(path, headers=caller.headers)
        best = min(best, time.perf_counter() - started)
        assert r.status_code == 404, (path, r.status_code)
    return best


async def test_a_hidden_rows_size_does_not_show_in_the_time_of_its_404(
    stack: tuple[Service, World, str], client: httpx.AsyncClient
) -> None:
    """An unshared agent's run with a 64 MB log: if the service read the row (and its log)
    before checking the caller's scope, its 404 would take the time of moving 64 MB, and a
    user could confirm that the run exists, and how large its log is, by the clock. Read
    under the caller's scope in SQL, it costs what a missing id costs."""
    _, world, url = stack
    owner = world.callers["a-owner"]
    xid = f"big-{uuid.uuid4().hex[:8]}"
    conn = await connect(url)
    try:
        await conn.execute(
            "INSERT INTO executions (org, id, agent_name, status, first_seen_at, execution_log)"
            " VALUES ($1, $2, 'gamma', 'success', now(), $3)",
            world.org_a,
            xid,
            os.urandom(32 * 1024 * 1024).hex(),  # incompressible: stored as 64 MB
        )
        missing = "z" * len(xid)
        for suffix in ("/log", ""):
            await _fastest(client, owner, f"/api/executions/{xid}{suffix}", tries=1)  # warm
            hidden = await _fastest(client, owner, f"/api/executions/{xid}{suffix}")
            absent = await _fastest(client, owner, f"/api/executions/{missing}{suffix}")
            # Moving 64 MB takes well over 100 ms here; a lookup that finds nothing, ~2 ms.
            assert hidden < absent + 0.1, (suffix, hidden, absent)
    finally:
        await conn.execute("DELETE FROM executions WHERE org = $1 AND id = $2", world.org_a, xid)
        await conn.close()
