"""The live feed against the list it updates: real ingest, query and notifier processes.

The dashboard lists `GET /api/executions` with filters and applies the notifier's live events
subscribed with the same filters. For every filter both understand (agent, status, trigger with
unknown triggers as "other", and the caller's access: roles, shares, orgs), the executions the
feed delivers are compared with the executions the list holds once ingest has written the same
events, for callers of every role in two orgs whose agents share names.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import nats
import orjson
import pytest
import pytest_asyncio
import websockets
from websockets.asyncio.client import ClientConnection

from services.notifier.filters import FrameError
from services.notifier.handshake import initial_frame
from shared.db import connect
from shared.events import EVENT_STATUS, STATUS_RANK, EventType, Status
from shared.subjects import Subjects
from tests.isolation.world import Caller, delete_streams, query_env
from tests.notifier.helpers import collect, events_of, publish, until_ready
from tests.procs import Service, running
from tests.query.helpers import add_agent, add_org

pytestmark = pytest.mark.e2e


@dataclass
class Stack:
    query: Service
    notifier: Service
    subjects: Subjects
    org_a: str
    org_b: str
    callers: list[Caller]


PEOPLE: tuple[tuple[str, str], ...] = (
    ("boss", "admin"),
    ("owner", "user"),
    ("cust", "client"),
    ("sharer", "user"),
    ("nobody", "user"),
)


@pytest_asyncio.fixture(scope="module")
async def stack(nats_url: str, database_url: str) -> AsyncIterator[Stack]:
    tag = uuid.uuid4().hex[:8]
    org_a, org_b = f"rva-{tag}", f"rvb-{tag}"
    conn = await connect(database_url)
    try:
        for org in (org_a, org_b):
            await add_org(conn, org)
            await conn.executemany(
                "INSERT INTO users (org, user_id, role) VALUES ($1, $2, $3)",
                [(org, u, r) for u, r in PEOPLE],
            )
            await add_agent(conn, org, "alpha", owner="owner")
            await add_agent(conn, org, "beta", owner="boss", shared_with=("sharer", "cust"))
            await add_agent(conn, org, "gamma")
    finally:
        await conn.close()
    subjects = Subjects(f"rv{tag}")
    env = query_env(nats_url, database_url, prefix=subjects.prefix)
    # A replay from before the corpus goes through the stream, not the ring.
    env["NOTIFIER_RING_SIZE"] = "4"
    callers = [
        Caller("a-admin", org_a, "boss", "admin", None),
        Caller("a-owner", org_a, "owner", "user", frozenset({"alpha"})),
        Caller("a-sharer", org_a, "sharer", "user", frozenset({"beta"})),
        Caller("a-client", org_a, "cust", "client", frozenset({"beta"})),
        Caller("a-nobody", org_a, "nobody", "user", frozenset()),
        Caller("b-admin", org_b, "boss", "admin", None),
    ]
    try:
        async with (
            running("ingest", env),
            running("query", env) as query,
            running("notifier", env) as notifier,
        ):
            yield Stack(query, notifier, subjects, org_a, org_b, callers)
    finally:
        await delete_streams(nats_url, subjects)


# Filters as the query API takes them (lists) and the notifier's `subscribe` takes them.
FILTERS: list[dict[str, list[str]]] = [
    {},
    {"agent_name": ["alpha"]},
    {"agent_name": ["alpha", "beta"]},
    {"agent_name": ["gamma"]},
    {"triggered_by": ["schedule"]},
    {"triggered_by": ["Schedule"]},
    {"triggered_by": ["cron-x"]},
    {"triggered_by": ["other"]},
    {"triggered_by": ["other", "manual"]},
    {"triggered_by": ["api"], "agent_name": ["beta"]},
    {"status": ["running"]},
    {"status": ["failed"]},
    {"status": ["success", "failed"]},
    {"status": ["running"], "triggered_by": ["schedule"]},
]


def _ex(org: str, agent: str, ex_id: str, type_: str, minute: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "event_id": uuid.uuid4().hex,
        "occurred_at": f"2026-02-05T10:{minute:02d}:00Z",
        "org": org,
        "source": f"agent:{agent}",
        "execution": {"id": ex_id, "agent_name": agent, **fields},
    }


def _corpus(org: str, other_org: str, tag: str) -> list[dict[str, Any]]:
    """Executions through their events, in stream order; ids say what each one tests."""
    started = {"started_at": "2026-02-05T10:00:00Z"}
    out: list[dict[str, Any]] = []

    def run(agent: str, name: str, trigger: str | None, *types: str, o: str = org) -> None:
        ex_id = f"{tag}-{name}"
        for minute, type_ in enumerate(types):
            fields: dict[str, Any] = dict(started)
            # Only the first event says the trigger, as completions often omit it.
            if minute == 0 and trigger is not None:
                fields["triggered_by"] = trigger
            out.append(_ex(o, agent, ex_id, type_, minute, **fields))

    run("alpha", "sched-done", "schedule", "execution_queued", "execution_started",
        "execution_completed")  # fmt: skip
    run("alpha", "cron-failed", "cron-x", "execution_started", "execution_failed")
    run("beta", "caps-running", "Schedule", "execution_started")
    run("gamma", "manual-done", "manual", "execution_started", "execution_completed")
    run("alpha", "literal-other", "other", "execution_started")
    run("beta", "api-failed", "api", "execution_started", "execution_failed")
    run("alpha", "sched-running", "schedule", "execution_started", "execution_progress")
    run("alpha", "b-running", "schedule", "execution_started", o=other_org)
    # No event says its trigger: the row's is NULL, which the list counts as "other".
    run("beta", "no-trigger", None, "execution_started", "execution_completed")
    return out


def _ws_url(stack: Stack) -> str:
    return f"ws://127.0.0.1:{stack.notifier.port}/ws"


async def _subscribe(
    stack: Stack, who: Caller, flt: dict[str, list[str]], resume_from: int | None = None
) -> ClientConnection:
    """A socket with `flt`, live; with `resume_from`, returned at once (the caller reads its
    replay up to `ready`). A resume goes in the URL, as the docs advise: in a first frame
    that reaches the server after its hello window (a loaded CI run), `ready` comes first, the
    replay after it, and the replay was read as empty."""
    if resume_from is not None:
        query = urlencode({"resume_from": resume_from, **{k: ",".join(v) for k, v in flt.items()}})
        return await websockets.connect(
            f"{_ws_url(stack)}?{query}",
            subprotocols=["bearer", who.token],  # type: ignore[list-item]
        )
    ws = await websockets.connect(_ws_url(stack), subprotocols=["bearer", who.token])  # type: ignore[list-item]
    await ws.send(orjson.dumps({"subscribe": flt}).decode())
    ready = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    assert ready["type"] == "ready", ready
    return ws


async def _listed(
    client: httpx.AsyncClient, who: Caller, flt: dict[str, list[str]]
) -> set[str] | None:
    """What the list shows this caller under `flt` (clients: their agents' lists); None when
    it refuses the filter (an agent the caller may not see: 403)."""
    headers = {"Authorization": f"Bearer {who.token}"}
    params = [(k, v) for k, values in flt.items() for v in values]
    if who.role != "client":
        r = await client.get("/api/executions", params=[*params, ("limit", "200")], headers=headers)
        if r.status_code == 403:
            return None
        assert r.status_code == 200, r.text
        return {row["id"] for row in r.json()["executions"]}
    assert who.agents is not None
    ids: set[str] = set()
    if not set(flt.get("agent_name", ())) <= who.agents:
        return None
    wanted = set(flt.get("agent_name", who.agents))
    rest = [(k, v) for k, v in params if k != "agent_name"]
    for agent in sorted(wanted):
        r = await client.get(
            f"/api/agents/{agent}/executions", params=[*rest, ("limit", "200")], headers=headers
        )
        assert r.status_code == 200, r.text
        ids |= {row["id"] for row in r.json()["executions"]}
    return ids


async def _written(client: httpx.AsyncClient, stack: Stack, ids: set[str]) -> None:
    admins = [w for w in stack.callers if w.role == "admin"]
    for _ in range(200):
        seen: set[str] = set()
        for who in admins:
            seen |= await _listed(client, who, {}) or set()
        if ids <= seen:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"ingest did not write {sorted(ids - seen)}")


def _shown(delivered: list[dict[str, Any]], flt: dict[str, list[str]]) -> set[str]:
    """What a client applying the frames forward-only (a status never moves back) shows under
    `flt`: each execution delivered, with the highest status it was told, kept if that matches."""
    best: dict[str, Status] = {}
    for frame in delivered:
        ex = frame["execution"]
        if "status" not in ex:
            continue
        status = Status(ex["status"])
        if ex["id"] not in best or STATUS_RANK[status] > STATUS_RANK[best[ex["id"]]]:
            best[ex["id"]] = status
    wanted = flt.get("status")
    return {i for i, s in best.items() if wanted is None or s.value in wanted}


async def _drain(ws: ClientConnection) -> list[dict[str, Any]]:
    """The event frames a socket has been sent (until it stays idle), then closed."""
    try:
        return events_of(await collect(ws, idle_s=0.5, limit_s=10))
    finally:
        await ws.close()


async def _drain_live(
    sockets: dict[tuple[str, int], ClientConnection], last: dict[tuple[str, int], int | None]
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The event frames each live socket was sent, then closed: read up to the last seq its
    replay had (`last`, deterministic: a replay ends at `ready`), however long the notifier
    takes; then, once every socket is there (the notifier is past the corpus), a short idle read
    for what a socket was sent beyond its replay, and for a socket whose replay was empty.
    Reading every socket "until idle for 0.5 s" cut a live list short when the notifier (its own
    process) stalled longer than that on a loaded machine."""
    got: dict[tuple[str, int], list[dict[str, Any]]] = {key: [] for key in sockets}

    async def upto(key: tuple[str, int]) -> None:
        until = last[key]
        if until is not None:
            got[key] += await collect(sockets[key], until_seq=until, limit_s=60)

    async def extras(key: tuple[str, int]) -> None:
        got[key] += await collect(sockets[key], idle_s=0.5, limit_s=10)

    try:
        await asyncio.gather(*(upto(key) for key in sockets))
        await asyncio.gather(*(extras(key) for key in sockets))
        return {key: events_of(frames) for key, frames in got.items()}
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets.values()))


async def _drain_replay(ws: ClientConnection) -> list[dict[str, Any]]:
    """The event frames of a replay: everything before its `ready` (which ends it), then
    closed. Not "until idle": replays from the stream take turns
    (NOTIFIER_REPLAY_CONCURRENCY), so a socket waiting for its turn is quiet for a while
    and was read as an empty replay."""
    try:
        return events_of(await until_ready(ws, 30))
    finally:
        await ws.close()


def _statuses_told(corpus: list[dict[str, Any]]) -> dict[str, list[Status]]:
    told: dict[str, list[Status]] = {}
    for event in corpus:
        status = EVENT_STATUS[EventType(event["type"])]
        told.setdefault(event["execution"]["id"], []).append(status)
    return told


async def _compare(
    stack: Stack,
    client: httpx.AsyncClient,
    corpus: list[dict[str, Any]],
    frames_of: dict[tuple[str, int], list[dict[str, Any]]],
) -> tuple[list[str], set[str]]:
    """Mismatches, and which of the known gaps the comparison met (so none is vacuous).

    Where the feed and the list part by design (docs/notifier.md):
    - An execution that leaves a status filter (running -> failed under `status=running`)
      is told by the event that takes it out (ranked above the filter's status), and the
      client drops it as the list does: `left_status` records that the corpus has such rows.
    - An event whose trigger stays unknown never meets a trigger filter, `other` included,
      while the list counts a NULL trigger as "other" (the feed cannot tell "not said" from
      NULL).
    """
    ids = {e["execution"]["id"] for e in corpus}
    told = _statuses_told(corpus)
    final = {i: max(s, key=STATUS_RANK.__getitem__) for i, s in told.items()}
    null_trigger = {
        e["execution"]["id"]
        for e in corpus
        if not any(
            "triggered_by" in x["execution"]
            for x in corpus
            if x["execution"]["id"] == e["execution"]["id"]
        )
    }
    mismatches: list[str] = []
    gaps: set[str] = set()
    for (label, i), frames in frames_of.items():
        who = next(w for w in stack.callers if w.label == label)
        flt = FILTERS[i]
        listed = await _listed(client, who, flt)
        shown = _shown(frames, flt)
        if listed is None:
            # The list refuses an agent the caller may not see; the feed has no such answer
            # and delivers the visible agents' events: never one of another agent.
            assert who.agents is not None
            assert {f["execution"]["agent_name"] for f in frames} <= who.agents
            continue
        expected = listed & ids
        wanted = flt.get("status")
        if wanted is not None:
            rest = {k: v for k, v in flt.items() if k != "status"}
            unfiltered = await _listed(client, who, rest)
            assert unfiltered is not None
            left = {
                x
                for x in unfiltered & ids
                if final[x].value not in wanted and any(s.value in wanted for s in told[x])
            }
            gaps |= {"left_status"} if left else set()
            assert not left & expected
        if "other" in flt.get("triggered_by", ()) and expected & null_trigger:
            gaps.add("null_other")
            expected -= null_trigger
        if expected != shown:
            mismatches.append(
                f"{label} {flt}: list only {sorted(expected - shown)}, "
                f"live only {sorted(shown - expected)}"
            )
    return mismatches, gaps


async def test_the_live_feed_delivers_what_the_list_holds(stack: Stack, nats_url: str) -> None:
    """Live, and on a replay from before the corpus (through the stream: the ring is small)."""
    tag = uuid.uuid4().hex[:6]
    sockets: dict[tuple[str, int], ClientConnection] = {}
    for who in stack.callers:
        for i, flt in enumerate(FILTERS):
            sockets[(who.label, i)] = await _subscribe(stack, who, flt)
    corpus = _corpus(stack.org_a, stack.org_b, tag)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        seqs = [await publish(js, stack.subjects, event) for event in corpus]
    finally:
        await nc.close()

    async def replay(who: Caller, flt: dict[str, list[str]]) -> list[dict[str, Any]]:
        return await _drain_replay(await _subscribe(stack, who, flt, resume_from=seqs[0] - 1))

    # The replays first: each ends at its `ready`, and says up to which seq its live twin reads.
    keys = [(who, i) for who in stack.callers for i in range(len(FILTERS))]
    got = await asyncio.gather(*(replay(who, FILTERS[i]) for who, i in keys))
    replayed = {(who.label, i): frames for (who, i), frames in zip(keys, got, strict=True)}
    last = {key: frames[-1]["seq"] if frames else None for key, frames in replayed.items()}
    live = await _drain_live(sockets, last)
    for key in live:
        assert [f["seq"] for f in replayed[key]] == [f["seq"] for f in live[key]], key
    ids = {e["execution"]["id"] for e in corpus}
    async with httpx.AsyncClient(base_url=stack.query.url, timeout=10) as client:
        await _written(client, stack, ids)
        mismatches, gaps = await _compare(stack, client, corpus, live)
    assert not mismatches, "\n".join(mismatches)
    assert gaps == {"left_status", "null_other"}


@pytest.mark.parametrize(
    "query",
    ["agent_name=", "status=", "triggered_by=", "status=failed,", "agent_name=x&agent_name="],
)
def test_a_blank_url_filter_is_refused_not_read_as_any(query: str) -> None:
    """`?agent_name=` (a value that went missing) was read as "any agent": the query API
    answers it with 422, and a filter never widens silently."""
    found = initial_frame(f"/ws?token=t&{query}")
    assert isinstance(found, FrameError), found
    assert found.error == "invalid_query"
    assert found.detail.startswith(query.split("=")[0] + ":"), found.detail


async def test_a_blank_url_filter_gets_no_events(stack: Stack, nats_url: str) -> None:
    """On the real notifier: an `error` frame, `ready`, then nothing of any agent."""
    admin = stack.callers[0]
    ws = await websockets.connect(
        f"{_ws_url(stack)}?agent_name=",
        subprotocols=["bearer", admin.token],  # type: ignore[list-item]
    )
    first = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    assert first["type"] == "error", first
    assert first["detail"].startswith("agent_name:"), first
    nc = await nats.connect(nats_url)
    try:
        event = _ex(stack.org_a, "alpha", uuid.uuid4().hex[:8], "execution_started", 0)
        await publish(nc.jetstream(), stack.subjects, event)
    finally:
        await nc.close()
    frames = await _drain(ws)
    assert frames == []
