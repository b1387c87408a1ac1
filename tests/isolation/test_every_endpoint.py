"""Tenant isolation at every door: tokens of each role in two orgs against every query endpoint
and the notifier's WebSocket. Nothing any caller gets back — a row, a count, a statistic, an
export line, a name, a live event — may come from another org or from an agent outside the
caller's scope, and what a caller may see is there in full (so the probes cannot pass by
answering nothing).

Every answer is compared with a brute-force computation over the seeded rows
(`tests/isolation/world.py`: agents named alike in both orgs, owned, shared and unshared), and
every body is searched for canaries: ids of rows the caller may not see and the other org's name.
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
from nats.js.errors import NotFoundError

from shared.db import connect
from shared.subjects import Subjects
from tests.isolation.world import Caller, World, query_env, seed_world
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


@dataclass
class Stack:
    query: Service
    notifier: Service
    world: World
    subjects: Subjects


@pytest_asyncio.fixture(scope="module")
async def stack(nats_url: str, database_url: str) -> AsyncIterator[Stack]:
    """One seeded world served by a `fleetwatch query` and a `fleetwatch notifier` process."""
    conn = await connect(database_url)
    try:
        world = await seed_world(conn)
    finally:
        await conn.close()
    subjects = Subjects(f"iso{uuid.uuid4().hex[:8]}")
    env = query_env(nats_url, database_url, prefix=subjects.prefix)
    try:
        async with running("query", env) as query, running("notifier", env) as notifier:
            yield Stack(query, notifier, world, subjects)
    finally:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for stream in (subjects.events_stream, subjects.dlq_stream):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)
        await nc.close()


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
            r = await client.get("/api/agents/alpha/executions", headers=c["a-client"].headers)
            assert r.status_code == 200
            assert all(e["id"].startswith(world.org_a) for e in r.json()["executions"])
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
    published: list[tuple[str, str, str, int]] = []
    try:
        js = nc.jetstream()
        for org, agents in (
            (world.org_a, ("alpha", "beta", "gamma")),
            (world.org_b, ("alpha", "beta", "delta")),
        ):
            for agent in agents:
                for i in range(3):
                    event_id = uuid.uuid4().hex
                    event = {
                        "type": "execution_started",
                        "event_id": event_id,
                        "occurred_at": "2026-02-05T10:00:00Z",
                        "org": org,
                        "execution": {"id": f"live-{org}-{agent}-{i}", "agent_name": agent},
                    }
                    ack = await js.publish(
                        stack.subjects.event(org, agent, "execution_started"),
                        orjson.dumps(event),
                        headers={"Nats-Msg-Id": event_id},
                    )
                    published.append((org, agent, event_id, ack.seq))
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
