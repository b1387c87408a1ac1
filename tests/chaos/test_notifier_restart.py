"""Fault 10: the notifier restarted while 100 WebSocket clients are connected, some stalled.

A steady publish load runs before, during and after each restart (SIGTERM, then SIGKILL,
alternating). Every client that keeps reading reconnects with `resume_from` = the last seq it
saw (docs/notifier.md) and must end with every event it may see, none twice and none of
anyone else's; stalled clients (they never read) must not hold anyone up. Admins see the whole
org, users only the agent they own. Most readers resume through the URL, as the dashboard
does; a quarter send `resume_from` in their first frame (honoured even after the notifier's
hello window while it has sent them no event). Those run on an event loop of their own
(`ws_clients.OwnLoop`), as a client in its own process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.auth import mint_token
from shared.db import connect
from shared.subjects import Subjects
from tests.chaos.harness import RECOVERY_LIMIT_S, ChaosResult, Scale
from tests.chaos.load import Load, make_events
from tests.chaos.ws_clients import Client, OwnLoop, run_readers, stall
from tests.procs import Service, free_port, start_service, wait_ready

TRACE = bool(os.environ.get("FLEETWATCH_TEST_TRACE"))
CLIENTS = 100
STALLED = 10
USERS = 20  # of the reading clients: users who own agent-0 only; the rest are admins
FRAME_EVERY = 4  # every fourth client resumes in its first frame, the others in the URL


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


async def _connections_reach(url: str, count: int, within_s: float) -> None:
    """Wait until the notifier's `notifier_connections` gauge is at least `count`."""
    deadline = time.monotonic() + within_s
    seen = 0.0
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                text = (await client.get(url + "/metrics")).text
                for family in text_string_to_metric_families(text):
                    if family.name == "notifier_connections":
                        seen = max((sample.value for sample in family.samples), default=0.0)
            if seen >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{seen:.0f} of {count} clients connected after {within_s}s")
            await asyncio.sleep(0.05)


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
    # A reserve past `events_n`: the load runs on until the last restart is over, however long
    # the restarts take on a loaded machine, and stops at `events_n` or after that restart.
    events = make_events(org, events_n * 3, seed=101)
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
    stop, own_stop = asyncio.Event(), asyncio.Event()
    own = OwnLoop()
    load = Load(service_env["NATS_URL"], subjects, events, rate=rate)
    tail = Load(service_env["NATS_URL"], subjects, tail_events, rate=rate)
    readers: list[asyncio.Task[None]] = []
    reading = [c for c in clients if not c.stalled]
    recoveries: list[float] = []
    still_publishing: list[bool] = []
    after_last = 0
    try:
        await wait_ready(notifier.url, timeout=30)
        for c in clients:
            if c.stalled:
                await stall(port, c)
        by_url = [c for c in reading if not c.by_frame]
        by_frame = [c for c in reading if c.by_frame]
        readers.append(asyncio.create_task(run_readers(port, by_url, stop)))
        readers.append(asyncio.create_task(own.run(run_readers(port, by_frame, own_stop))))
        # Every client (stalled ones too) is in the notifier's hub: events from now on reach
        # each, held until its hello window ends.
        await _connections_reach(notifier.url, CLIENTS, within_s=30)
        _trace("clients connected")
        await load.start()
        watches: list[asyncio.Task[float | None]] = []
        after_last = 0
        for n in range(restarts):
            await load.wait_sent(events_n * (n + 1) // (restarts + 2))
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
        await load.wait_sent(events_n)
        load.stop()
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
        own.call(own_stop.set)
        await asyncio.gather(*readers, return_exceptions=True)
        own.close()
        for c in clients:  # stalled ones would never finish a closing handshake
            if c.stalled and c.ws is not None:
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
    frame_resumes = sum(c.reconnects for c in reading if c.by_frame)
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
        f"({reconnects - frame_resumes} in the URL, {frame_resumes} in the first frame, of "
        f"which {late} "
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
