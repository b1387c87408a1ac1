"""Tenant isolation at every door: tokens of each role in two orgs against every query endpoint
and the notifier's WebSocket. Nothing any caller gets back — a row, a count, a statistic, an
export line, a name, a live event — may come from another org or from an agent outside the
caller's scope, and what a caller may see is there in full (so the probes cannot pass by
answering nothing).

Every answer is compared with a brute-force computation over the seeded rows
(`tests/isolation/world.py`: agents named alike in both orgs, owned, shared and unshared), and
every body is searched for canaries: ids of rows the caller may not see and the other org's name.
Every probe runs twice: with both locks, and with row-level security off, where the SQL's own
org and agent conditions must hold alone. The live feed is probed live and on replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import nats
import orjson
import pytest
import pytest_asyncio
import websockets

from shared.access import ENTER_ORG
from shared.db import connect
from shared.subjects import Subjects
from tests.conftest import DATABASE_URL, _create_db, _drop_db, with_database
from tests.isolation.world import Caller, World, delete_streams, query_env, seed_world
from tests.procs import Service, running

pytestmark = pytest.mark.e2e

CALLERS = (
    "a-admin",
    "a-owner",
    "a-sharer",
    "a-nobody",
    "a-client",
    "b-admin",
    "b-owner",
    "b-client",
)


RING_SIZE = 4


@dataclass
class Stack:
    query: Service
    notifier: Service
    world: World
    subjects: Subjects


async def _without_row_security(url: str, org: str) -> None:
    """Turn row-level security off in the database at `url`, and check that it is off: the app
    role, its org set, then reads every org's rows."""
    conn = await connect(url)
    try:
        tables = await conn.fetch(
            "SELECT c.oid::regclass::text AS name FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relrowsecurity"
        )
        assert tables
        for table in tables:
            await conn.execute(f"ALTER TABLE {table['name']} DISABLE ROW LEVEL SECURITY")
        async with conn.transaction():
            await conn.execute(ENTER_ORG, org)
            assert await conn.fetchval("SELECT count(DISTINCT org) FROM executions") > 1
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module", params=["both-locks", "sql-alone"])
async def stack(
    request: pytest.FixtureRequest, nats_url: str, database_url: str, template_db: str
) -> AsyncIterator[Stack]:
    """One seeded world served by a `fleetwatch query` and a `fleetwatch notifier` process.

    `sql-alone`: in a database of its own with row-level security off, so every door has to
    hold by the org and agent conditions of its own SQL (the first lock). Otherwise a statement
    that forgot its org would pass every probe here, the second lock hiding it.
    """
    async with contextlib.AsyncExitStack() as cleanup:
        url = database_url
        if request.param == "sql-alone":
            name = await _create_db(template_db)
            cleanup.push_async_callback(_drop_db, name)
            url = with_database(DATABASE_URL, name)
        conn = await connect(url)
        try:
            world = await seed_world(conn)
        finally:
            await conn.close()
        if request.param == "sql-alone":
            await _without_row_security(url, world.org_a)
        subjects = Subjects(f"iso{uuid.uuid4().hex[:8]}")
        cleanup.push_async_callback(delete_streams, nats_url, subjects)
        env = query_env(nats_url, url, prefix=subjects.prefix)
        # A small ring: a resume from further back than RING_SIZE events replays from the
        # stream, a recent one from memory, so the replay probe below passes through both doors.
        env["NOTIFIER_RING_SIZE"] = str(RING_SIZE)
        async with running("query", env) as query, running("notifier", env) as notifier:
            yield Stack(query, notifier, world, subjects)


def _no_canaries(world: World, caller: Caller, text: str, where: str) -> None:
    # A name the caller sent may be echoed back (a 404 naming it): that reveals nothing.
    leaked = [c for c in world.canaries(caller) if c in text and c not in where]
    assert not leaked, f"{caller.label} {where}: leaked {leaked[:5]}"


async def _get(
    client: httpx.AsyncClient, world: World, caller: Caller, path: str, **params: Any
) -> httpx.Response:
    r = await client.get(path, params=params, headers=caller.headers)
    assert r.status_code < 500, (caller.label, path, r.status_code, r.text[:300])
    _no_canaries(world, caller, r.text, f"GET {path} {params}")
    return r


@pytest.mark.parametrize("label", CALLERS)
async def test_fleet_wide_reads_show_exactly_the_callers_rows(stack: Stack, label: str) -> None:
    query, world = stack.query, stack.world
    caller = world.callers[label]
    visible = world.visible(caller)
    ids = {r["id"] for r in visible}
    async with httpx.AsyncClient(base_url=query.url, timeout=20) as client:
        endpoints: list[tuple[str, dict[str, Any]]] = [
            ("/api/executions", {"limit": 200}),
            ("/api/executions/stats", {"hours": 168}),
            ("/api/executions/timeline", {"hours": 720, "bucket": "day"}),
            ("/api/executions/export", {"format": "csv"}),
            ("/api/executions/export", {"format": "ndjson"}),
            ("/api/workflows", {}),
            ("/api/projects", {}),
        ]
        answers = {}
        for path, params in endpoints:
            r = await _get(client, world, caller, path, **params)
            if caller.role == "client":
                assert r.status_code == 403, (label, path, r.status_code)
                continue
            assert r.status_code == 200, (label, path, r.status_code, r.text[:300])
            answers[(path, params.get("format"))] = r
        if caller.role == "client":
            return

        listing = answers[("/api/executions", None)].json()
        assert {e["id"] for e in listing["executions"]} == ids
        assert listing["total_count"] == len(ids)

        stats = answers[("/api/executions/stats", None)].json()
        assert stats["total"] == len(visible), (label, stats["total"], len(visible))
        per_agent = Counter(r["agent_name"] for r in visible)
        assert {a["agent_name"]: a["count"] for a in stats["by_agent"]} == dict(per_agent)
        assert stats["running"] == sum(1 for r in visible if r["status"] == "running")
        assert sum(stats["by_trigger"].values()) == len(visible)

        timeline = answers[("/api/executions/timeline", None)].json()
        assert sum(b["total"] for b in timeline["buckets"]) == len(visible)

        rows = list(csv.DictReader(io.StringIO(answers[("/api/executions/export", "csv")].text)))
        assert {row["id"] for row in rows} == ids
        assert len(rows) == len(ids)
        lines = answers[("/api/executions/export", "ndjson")].text.splitlines()
        assert sorted(orjson.loads(line)["id"] for line in lines if line) == sorted(ids)

        for key, path in (("workflow", "/api/workflows"), ("project", "/api/projects")):
            body = answers[(path, None)].json()
            groups = body.get("workflows") or body.get("projects") or body.get("groups") or []
            assert isinstance(groups, list), body
            got = {g["name"]: g["runs"] for g in groups}
            want = Counter(r[key] for r in visible if r[key] is not None)
            assert got == dict(want), (label, key, got, dict(want))
            for name in {r[key] for r in world.rows if r[key] is not None}:
                r = await _get(client, world, caller, f"{path}/{name}/stats")
                if want.get(name):
                    assert r.status_code == 200, (label, path, name, r.status_code)
                    assert r.json()["runs"] == want[name], (label, path, name)
                else:
                    assert r.status_code == 404, (label, path, name, r.status_code)


@pytest.mark.parametrize("label", CALLERS)
async def test_single_execution_doors_open_only_on_visible_rows(stack: Stack, label: str) -> None:
    query, world = stack.query, stack.world
    caller = world.callers[label]
    # One row (and one with a log, one running) per (org, agent), visible or not.
    probes: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in world.rows:
        for kind, ok in (
            ("any", True),
            ("log", row["execution_log"] is not None),
            ("running", row["status"] == "running"),
        ):
            if ok:
                probes.setdefault((row["org"], row["agent_name"], kind), row)
    async with httpx.AsyncClient(base_url=query.url, timeout=20) as client:
        for (_, _, kind), row in probes.items():
            sees = caller.sees(row)
            xid = row["id"]
            if kind == "any":
                r = await _get(client, world, caller, f"/api/executions/{xid}")
                assert r.status_code == (200 if sees else 404), (label, xid, r.status_code)
                if sees:
                    detail = r.json()
                    assert detail["id"] == xid
                    assert {c["node_id"] for c in detail["components"]} <= {"n0", "n1"}
            elif kind == "log":
                r = await _get(client, world, caller, f"/api/executions/{xid}/log")
                assert r.status_code == (200 if sees else 404), (label, xid, r.status_code)
                if sees:
                    assert r.text == row["execution_log"]
            else:
                r = await client.post(f"/api/executions/{xid}/terminate", headers=caller.headers)
                _no_canaries(world, caller, r.text, f"terminate {xid}")
                if not sees:
                    assert r.status_code == 404, (label, xid, r.status_code)
                elif caller.role == "client":
                    assert r.status_code == 403, (label, xid, r.status_code)
                else:  # past every check, at the broker: nobody answers for the agent
                    assert r.status_code == 503, (label, xid, r.status_code, r.text)


@pytest.mark.parametrize("label", CALLERS)
async def test_agent_doors(stack: Stack, label: str) -> None:
    query, world = stack.query, stack.world
    caller = world.callers[label]
    own_agents = {r["agent_name"] for r in world.rows if r["org"] == caller.org}
    visible_agents = own_agents if caller.agents is None else set(caller.agents)
    async with httpx.AsyncClient(base_url=query.url, timeout=20) as client:
        r = await _get(client, world, caller, "/api/agents")
        assert r.status_code == 200
        agents = r.json()["agents"]
        assert {a["name"] for a in agents} == visible_agents
        for agent in agents:
            if caller.role != "admin" and agent["owner"] != caller.user:
                assert "shared_with" not in agent, (label, agent)
        every_name = {r["agent_name"] for r in world.rows} | {"no-such-agent"}
        for name in sorted(every_name):
            r = await _get(client, world, caller, f"/api/agents/{name}/executions", limit=200)
            if name in visible_agents:
                assert r.status_code == 200, (label, name, r.status_code)
                want = {x["id"] for x in world.visible(caller) if x["agent_name"] == name}
                body = r.json()
                assert {e["id"] for e in body["executions"]} == want
                assert body["total_count"] == len(want)
            elif caller.agents is None:
                # An admin's scope is the whole org: another org's agent is just an agent of
                # theirs with no runs, exactly like one that does not exist.
                assert r.status_code == 200, (label, name, r.status_code)
                assert r.json()["executions"] == []
                assert r.json()["total_count"] == 0
                for path in ("/api/executions", "/api/executions/export"):
                    r = await _get(client, world, caller, path, agent_name=name)
                    assert r.status_code == 200, (label, path, name, r.status_code)
                r = await _get(client, world, caller, "/api/executions", agent_name=name)
                assert r.json()["total_count"] == 0, (label, name)
                r = await _get(client, world, caller, "/api/executions/stats", agent_name=name)
                assert r.json()["total"] == 0, (label, name)
            else:
                # Another org's agent, one out of scope, one missing: the same answer for all.
                assert r.status_code == 403, (label, name, r.status_code)
                assert "not visible" in r.json()["detail"]
                if caller.role != "client":
                    for path in (
                        "/api/executions",
                        "/api/executions/stats",
                        "/api/executions/export",
                        "/api/executions/timeline",
                    ):
                        r = await _get(client, world, caller, path, agent_name=name)
                        assert r.status_code == 403, (label, path, name, r.status_code)


async def test_share_doors(stack: Stack) -> None:
    """Who may share what: admins within their org, owners their own agents, nobody across."""
    query, world = stack.query, stack.world
    c = world.callers
    async with httpx.AsyncClient(base_url=query.url, timeout=20) as client:

        async def put(caller: Caller, agent: str, user: str) -> int:
            r = await client.put(f"/api/agents/{agent}/shares/{user}", headers=caller.headers)
            _no_canaries(world, caller, r.text, f"share {agent} {user}")
            return r.status_code

        assert await put(c["a-admin"], "delta", "boss") == 404  # B's agent: unknown in A
        assert await put(c["a-owner"], "beta", "owner") == 403  # not visible: as the per-agent list
        assert await put(c["a-sharer"], "beta", "nobody") == 403  # visible, not theirs
        assert await put(c["a-client"], "beta", "nobody") == 403
        r = await client.put("/api/agents/delta", json={"owner": "x"}, headers=c["a-owner"].headers)
        assert r.status_code == 403
        # A's admin shares A's alpha with "cust": B's "cust" and B's alpha are untouched.
        assert await put(c["a-admin"], "alpha", "cust") == 204
        try:
            r = await client.get(
                "/api/agents/alpha/executions", params={"limit": 200}, headers=c["a-client"].headers
            )
            assert r.status_code == 200
            # Exactly A's alpha rows: an empty answer would pass a check on each row alone.
            want = {
                x["id"] for x in world.rows if (x["org"], x["agent_name"]) == (world.org_a, "alpha")
            }
            assert want
            assert {e["id"] for e in r.json()["executions"]} == want
            r = await client.get("/api/agents/alpha/executions", headers=c["b-client"].headers)
            assert r.status_code == 403
        finally:
            r = await client.delete("/api/agents/alpha/shares/cust", headers=c["a-admin"].headers)
            assert r.status_code == 204


async def _collect(ws: Any, seconds: float, until_seq: int | None = None) -> list[dict[str, Any]]:
    """Frames for `seconds`, or (given `until_seq`) until the event at that seq, within them."""
    frames: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return frames
        try:
            frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            return frames
        last = frames[-1]
        is_event = last.get("type", "").startswith("execution_")
        if until_seq is not None and is_event and last["seq"] >= until_seq:
            return frames


def _sees(caller: Caller, org: str, agent: str) -> bool:
    return org == caller.org and (caller.agents is None or agent in caller.agents)


async def _publish_everyones_events(
    stack: Stack, nc: Any, tag: str
) -> list[tuple[str, str, str, int]]:
    """Three `execution_started` per agent of both orgs: (org, agent, event id, stream seq)."""
    js = nc.jetstream()
    published: list[tuple[str, str, str, int]] = []
    for org, agents in (
        (stack.world.org_a, ("alpha", "beta", "gamma")),
        (stack.world.org_b, ("alpha", "beta", "delta")),
    ):
        for agent in agents:
            for i in range(3):
                event_id = uuid.uuid4().hex
                event = {
                    "type": "execution_started",
                    "event_id": event_id,
                    "occurred_at": "2026-02-05T10:00:00Z",
                    "org": org,
                    "execution": {"id": f"{tag}-{org}-{agent}-{i}", "agent_name": agent},
                }
                ack = await js.publish(
                    stack.subjects.event(org, agent, "execution_started"),
                    orjson.dumps(event),
                    headers={"Nats-Msg-Id": event_id},
                )
                published.append((org, agent, event_id, ack.seq))
    return published


async def test_live_events_reach_exactly_their_audience(stack: Stack, nats_url: str) -> None:
    """Each caller's WebSocket gets every event of its visible agents and nothing else."""
    world, port = stack.world, stack.notifier.port
    sockets = {}
    for label in CALLERS:
        caller = world.callers[label]
        ws = await websockets.connect(
            f"ws://127.0.0.1:{port}/ws",
            subprotocols=["bearer", caller.token],  # type: ignore[list-item]
        )
        await ws.send(orjson.dumps({"subscribe": {}}).decode())
        sockets[label] = ws
    for label, ws in sockets.items():  # every socket live: it gets each event published after
        ready = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ready["type"] == "ready", (label, ready)
    nc = await nats.connect(nats_url)
    try:
        published = await _publish_everyones_events(stack, nc, "live")
        # Each socket up to the last event it may see. The last one published is b-admin's:
        # after it, the notifier has sent every event, so a stray one would be there already.
        assert _sees(world.callers["b-admin"], *published[-1][:2])
        received = {}
        for label, ws in sockets.items():
            caller = world.callers[label]
            seqs = [seq for org, agent, _, seq in published if _sees(caller, org, agent)]
            received[label] = await _collect(ws, 10.0, max(seqs)) if seqs else []
        for label, ws in sockets.items():
            received[label] += await _collect(ws, 0.3)
    finally:
        await nc.close()
        for ws in sockets.values():
            await ws.close()
    for label, frames in received.items():
        caller = world.callers[label]
        got = [f["event_id"] for f in frames if f.get("type", "").startswith("execution_")]
        want = [e for org, agent, e, _ in published if _sees(caller, org, agent)]
        assert sorted(got) == sorted(want), (label, len(got), len(want))
        for f in frames:
            if "execution" in f:
                assert f["execution"]["id"].startswith(f"live-{caller.org}-"), (label, f)


async def _replayed(port: int, caller: Caller, resume_from: int) -> list[dict[str, Any]]:
    """The events a fresh socket of `caller` is replayed from `resume_from`, up to its `ready`
    (which follows the replay: a stray event of the replay would come before it). The resume
    goes in the URL, as the docs advise: in a first frame that reaches the server after its
    hello window (a loaded CI run), `ready` comes first and the replay after it."""
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/ws?resume_from={resume_from}",
        subprotocols=["bearer", caller.token],  # type: ignore[list-item]
    ) as ws:
        frames: list[dict[str, Any]] = []
        while True:
            frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
            if frames[-1].get("type") == "ready":
                return [f for f in frames if f.get("type", "").startswith("execution_")]


async def test_replayed_events_reach_exactly_their_audience(stack: Stack, nats_url: str) -> None:
    """A reconnecting socket's replay, from the stream and from memory, is scoped as live is."""
    world, port = stack.world, stack.notifier.port
    # A live watcher that sees the last event: once it has it, fan-out has passed every event,
    # so each replay below covers them all (none arrives live after its `ready`).
    watcher = await websockets.connect(
        f"ws://127.0.0.1:{port}/ws",
        subprotocols=["bearer", world.callers["b-admin"].token],  # type: ignore[list-item]
    )
    nc = await nats.connect(nats_url)
    try:
        await watcher.send(orjson.dumps({"subscribe": {}}).decode())
        assert orjson.loads(await asyncio.wait_for(watcher.recv(), 10))["type"] == "ready"
        published = await _publish_everyones_events(stack, nc, "replay")
        assert _sees(world.callers["b-admin"], *published[-1][:2])
        seen = await _collect(watcher, 10.0, published[-1][3])
        assert seen
        assert seen[-1]["seq"] == published[-1][3], seen[-3:]
    finally:
        await nc.close()
        await watcher.close()
    first_seq, last_seq = published[0][3], published[-1][3]
    assert last_seq - first_seq + 1 > RING_SIZE  # the earliest are only in the stream now
    # From before this test's events (the stream), and from within the ring (memory).
    for resume_from in (first_seq - 1, last_seq - RING_SIZE):
        for label in CALLERS:
            caller = world.callers[label]
            frames = await _replayed(port, caller, resume_from)
            got = [f["event_id"] for f in frames]
            want = [
                e for org, agent, e, seq in published
                if seq > resume_from and _sees(caller, org, agent)
            ]  # fmt: skip
            assert got == want, (label, resume_from, len(got), len(want))
            for f in frames:
                assert f["execution"]["id"].startswith(f"replay-{caller.org}-"), (label, f)
