"""Fault 10: the notifier restarted while 100 WebSocket clients are connected, some stalled.

A steady publish load runs before, during and after each restart (SIGTERM, then SIGKILL,
alternating). Every client that keeps reading reconnects with `resume_from` = the last seq it
saw (docs/notifier.md) and must end with every event it may see, none twice and none of
anyone else's; stalled clients (they never read) must not hold anyone up. Admins see the whole
org, users only the agent they own. Most readers resume through the URL, as the dashboard
does; a quarter send `resume_from` in their first frame, which under the reconnect storm can
reach the notifier after its hello window (the late-resume path).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from shared.auth import mint_token
from shared.db import connect
from shared.subjects import Subjects
from tests.chaos.harness import RECOVERY_LIMIT_S, ChaosResult, Scale
from tests.chaos.load import Load, make_events
from tests.procs import Service, free_port, start_service, wait_ready

TRACE = bool(os.environ.get("FLEETWATCH_TEST_TRACE"))
CLIENTS = 100
STALLED = 10
USERS = 20  # of the reading clients: users who own agent-0 only; the rest are admins
FRAME_EVERY = 4  # every fourth client resumes in its first frame, the others in the URL


@dataclass
class Client:
    name: str
    token: str
    #: None: the whole org; else only these agents.
    agents: frozenset[str] | None
    stalled: bool = False
    #: Resume in the first frame instead of the URL.
    by_frame: bool = False
    last_seq: int = 0
    got: Counter[str] = field(default_factory=Counter)
    foreign: list[dict[str, Any]] = field(default_factory=list)
    resyncs: int = 0
    reconnects: int = 0
    #: Connections that got a second `ready`: a late first-frame `resume_from` was honoured.
    late_resumes: int = 0
    errors: list[str] = field(default_factory=list)
    ws: ClientConnection | None = None
    connected: bool = False


async def _open(port: int, client: Client) -> ClientConnection:
    """Connect (retrying while the notifier is down) and resume from the last seq seen.

    The token goes in the subprotocol; `resume_from` (after the first connection) in the URL,
    or for `by_frame` clients in the first frame.
    """
    resume = client.last_seq if client.reconnects else None
    query = "" if resume is None or client.by_frame else f"?resume_from={resume}"
    delay = 0.05
    while True:
        try:
            ws = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws{query}",
                subprotocols=["bearer", client.token],  # type: ignore[list-item]
                open_timeout=5,
                max_queue=1 if client.stalled else 64,
                ping_interval=None,
            )
        except (OSError, InvalidHandshake, InvalidStatus, TimeoutError):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            continue
        if resume is not None and client.by_frame:
            await ws.send(orjson.dumps({"resume_from": resume}).decode())
        return ws


async def _read(port: int, client: Client, stop: asyncio.Event) -> None:
    while not stop.is_set():
        ws = await _open(port, client)
        client.ws = ws
        client.connected = True
        readies = 0
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                kind = frame.get("type", "")
                if kind.startswith(("execution_", "component_")):
                    if frame["seq"] <= client.last_seq:
                        client.errors.append(f"seq went back: {frame['seq']} <= {client.last_seq}")
                    client.last_seq = max(client.last_seq, frame["seq"])
                    execution = frame.get("execution") or {}
                    agent = execution.get("agent_name")
                    if frame.get("event_id") is None:
                        client.errors.append(f"event without id: {frame}")
                        continue
                    if client.agents is not None and agent not in client.agents:
                        client.foreign.append(frame)
                    client.got[frame["event_id"]] += 1
                elif kind == "ready":
                    readies += 1
                    if readies == 2:
                        client.late_resumes += 1
                elif kind == "resync_required":
                    client.resyncs += 1
                elif kind == "error":
                    client.errors.append(str(frame))
        except ConnectionClosed:
            pass
        client.connected = False
        client.reconnects += 1


async def _stall(port: int, client: Client) -> None:
    client.ws = await _open(port, client)  # and never read again


async def _restart(service: Service, env: dict[str, str], sig: int) -> tuple[Service, float]:
    t0 = time.monotonic()
    service.kill(sig)
    await asyncio.to_thread(service.wait, 30)
    t1 = time.monotonic()
    fresh = start_service("notifier", env, port=service.port)
    await wait_ready(fresh.url, timeout=30)
    if TRACE:
        print(f"restart {sig}: exit {t1 - t0:.2f}s, ready {time.monotonic() - t1:.2f}s")
    return fresh, time.monotonic()


_T0 = time.monotonic()


def _trace(what: str) -> None:
    if TRACE:
        print(f"{time.monotonic() - _T0:7.2f}s {what}", flush=True)


def _expected(client: Client, acked: set[str], agent_of: dict[str, str]) -> set[str]:
    return {e for e in acked if client.agents is None or agent_of[e] in client.agents}


@pytest.mark.timeout(1200)  # the long version restarts six times under a 30 s load each
async def test_notifier_restart_with_100_clients_some_stalled(
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    fresh_database_url: str,
    scale: Scale,
    chaos_results: list[ChaosResult],
) -> None:
    # Long: 24,000 events at 200/s (2 min) and 6 restarts; short: 500 at 40/s and 2. Every
    # event fans out to 90 readers in this one process: 200/s is 18,000 frames/s to read.
    events_n, rate = (24_000, 200.0) if scale.long else (500, 40.0)
    restarts = scale.kills
    events = make_events(org, events_n, seed=101)
    tail_events = make_events(org, max(40, events_n // 10), seed=102)
    agent_of = {e.event_id: e.agent for e in events + tail_events}
    secret = service_env["FLEETWATCH_JWT_SECRET"]
    env = {**service_env, "DATABASE_URL": fresh_database_url}
    if not scale.long:
        # A graceful stop waits this long for the stalled clients' closing handshakes (default
        # 5 s); the short run shortens it so the load is still running after both restarts.
        env["NOTIFIER_CLOSE_TIMEOUT_S"] = "1"
    conn = await connect(fresh_database_url)
    try:
        await conn.execute("INSERT INTO organizations (org) VALUES ($1)", org)
        await conn.executemany(
            "INSERT INTO users (org, user_id, role) VALUES ($1, $2, $3)",
            [(org, f"u{i}", "user") for i in range(USERS)] + [(org, "boss", "admin")],
        )
        await conn.execute(
            "INSERT INTO agents (org, name, owner) VALUES ($1, 'agent-0', 'u0')", org
        )
        await conn.executemany(
            "INSERT INTO agent_shares (org, agent_name, user_id) VALUES ($1, 'agent-0', $2)",
            [(org, f"u{i}") for i in range(1, USERS)],
        )
    finally:
        await conn.close()

    clients: list[Client] = []
    for i in range(CLIENTS):
        user = i < USERS
        clients.append(
            Client(
                name=f"c{i}",
                token=mint_token(
                    secret=secret,
                    org=org,
                    user=f"u{i}" if user else "boss",
                    role="user" if user else "admin",
                ),
                agents=frozenset({"agent-0"}) if user else None,
                stalled=i >= CLIENTS - STALLED,
                by_frame=i % FRAME_EVERY == FRAME_EVERY - 1,
            )
        )
    port = free_port()
    notifier = start_service("notifier", env, port=port)
    stop = asyncio.Event()
    load = Load(service_env["NATS_URL"], subjects, events, rate=rate)
    tail = Load(service_env["NATS_URL"], subjects, tail_events, rate=rate)
    readers: list[asyncio.Task[None]] = []
    recoveries: list[float] = []
    still_publishing: list[bool] = []
    after_last = 0
    try:
        await wait_ready(notifier.url, timeout=30)
        for c in clients:
            if c.stalled:
                await _stall(port, c)
            else:
                readers.append(asyncio.create_task(_read(port, c, stop)))
        await asyncio.sleep(1.0)  # every reader past its hello window: live
        _trace("clients connected")
        reading = [c for c in clients if not c.stalled]
        await load.start()
        watches: list[asyncio.Task[float | None]] = []
        after_last = 0
        for n in range(restarts):
            await load.wait_sent(len(events) * (n + 1) // (restarts + 2))
            still_publishing.append(load.sent < len(events))  # the fault hits a live load
            sig = signal.SIGTERM if n % 2 == 0 else signal.SIGKILL
            notifier, back_at = await _restart(notifier, env, sig)
            after_last = load.sent
            # Recovery: from "ready again" until every reader holds every event acked by then
            # (watched in the background: the load and the next restart go on meanwhile).
            snapshot = set(load.acked)
            watches.append(
                asyncio.create_task(_recovery(reading, snapshot, agent_of, back_at, n + 1))
            )
            # Every reader lost this instance and is connected to the new one before the next.
            deadline = time.monotonic() + RECOVERY_LIMIT_S
            while time.monotonic() < deadline and not all(
                c.reconnects > n and c.connected for c in reading
            ):
                await asyncio.sleep(0.05)
        # And a load after the last restart, whatever the machine's pace was until then.
        await tail.start()
        await load.finish()
        await tail.finish()
        after_last = load.sent - after_last + tail.sent
        recoveries = [r if r is not None else float("inf") for r in await asyncio.gather(*watches)]
        await load.finish()
        _trace("load finished")
        acked = load.acked | tail.acked
        done = await _caught_up(reading, acked, agent_of, 60)
        _trace("all caught up")
        await asyncio.sleep(0.5)  # a late duplicate would show up now
    finally:
        stop.set()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for c in clients:  # stalled ones would never finish a closing handshake: abort all
            if c.ws is not None:
                c.ws.transport.abort()
        await load.close()
        await tail.close()
        notifier.kill(signal.SIGTERM)
        try:
            await asyncio.to_thread(notifier.wait, 15)
        except Exception:
            notifier.kill()

    lost = 0
    duplicated = 0
    problems: list[str] = []
    clean = 0
    admins_all: set[str] | None = None
    for c in reading:
        want = _expected(c, acked, agent_of)
        have = set(c.got)
        missing = want - have
        lost += len(missing)
        twice = sum(n - 1 for n in c.got.values() if n > 1)
        duplicated += twice
        strangers = have - set(agent_of)
        found = len(problems)
        if missing:
            problems.append(f"{c.name}: {len(missing)} missing of {len(want)}")
        if twice:
            problems.append(f"{c.name}: {twice} duplicated")
        if strangers or c.foreign:
            problems.append(f"{c.name}: {len(strangers)} unknown, {len(c.foreign)} out of scope")
        if c.resyncs or c.errors:
            problems.append(f"{c.name}: {c.resyncs} resyncs, errors {c.errors[:3]}")
        clean += len(problems) == found
        if c.agents is None:
            admins_all = have & acked if admins_all is None else admins_all & have
    recovery = max(recoveries) if recoveries else None
    reconnects = sum(c.reconnects for c in reading)
    by_frame = sum(c.reconnects for c in reading if c.by_frame)
    late = sum(c.late_resumes for c in reading)
    result = ChaosResult(
        fault=f"10. Notifier restarted with {CLIENTS} clients ({STALLED} stalled)",
        published=load.sent + tail.sent,
        acked=len(acked),
        stored=len(admins_all or set()),
        lost=lost,
        duplicated=duplicated,
        recovery_s=None if recovery is None else round(recovery, 2),
        ok=not problems and done is not None and (recovery or 0) <= RECOVERY_LIMIT_S,
        notes=f"{restarts} restarts (SIGTERM/SIGKILL alternating); {len(reading)} reading clients "
        f"({USERS} users seeing agent-0 only) reconnected {reconnects} times with resume_from "
        f"({reconnects - by_frame} in the URL, {by_frame} in the first frame, of which {late} "
        f"arrived after the hello window and were honoured); {clean}/{len(reading)} clients "
        "passed every per-client check (all events they may see, none twice, none out of "
        f"scope, no resync or error); {after_last} events published after the last restart; "
        "stored = events every admin client received; lost/duplicated count deliveries",
    )
    chaos_results.append(result)
    assert not problems, "\n".join(problems[:20])
    assert done is not None, "clients did not catch up"
    assert recovery is not None
    assert recovery <= RECOVERY_LIMIT_S, f"caught up {recovery:.1f}s after the restart"
    assert reconnects >= restarts * len(reading), "some clients never lost their connection"
    assert all(still_publishing), "the load had ended before a restart"


async def _recovery(
    clients: list[Client], ids: set[str], agent_of: dict[str, str], since: float, n: int
) -> float | None:
    done = await _caught_up(clients, ids, agent_of, RECOVERY_LIMIT_S + 30)
    took = None if done is None else done - since
    _trace(f"restart {n}: caught up {took}s after ready")
    return took


async def _caught_up(
    clients: list[Client], ids: set[str], agent_of: dict[str, str], timeout: float
) -> float | None:
    """When every client holds every event of `ids` it may see, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    wants = [(c, _expected(c, ids, agent_of)) for c in clients]
    while time.monotonic() < deadline:
        if all(want <= c.got.keys() for c, want in wants):
            return time.monotonic()
        await asyncio.sleep(0.1)
    return None
