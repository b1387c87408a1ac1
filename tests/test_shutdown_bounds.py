"""A service told to stop (SIGTERM, as Kubernetes sends it) exits within the pod's grace
period even when a dependency hangs, says what it cut off, and loses nothing: a batch it
could not finish stays unacknowledged, and JetStream delivers it again.

Real processes, Postgres and NATS (a proxy of tests/chaos/infra.py stands in for a database
that stops answering). Kubernetes sends SIGKILL 30 s after SIGTERM (ingest: 40 s), and query,
notifier and ingest spend 5 of them in preStop (deploy/k8s/base/); the old stops hung until
SIGKILL, silently.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
import websockets
from nats.js import JetStreamContext

from shared.auth import mint_token
from shared.db import connect
from shared.subjects import Subjects
from tests.chaos.infra import port_of, proxy_to, via_port
from tests.ingest.events_factory import execution_events
from tests.ingest.test_ingest_service import publish, wait_for_count
from tests.procs import Service, start_service, wait_ready
from tests.publisher.conftest import OwnNats

#: Seconds from SIGTERM to exit that a stop may take here: inside the 25 s the tightest pod
#: (30 s grace, 5 s preStop) leaves.
STOP_WITHIN_S = 20


async def _stop(service: Service) -> float:
    """SIGTERM `service`; the seconds it took to exit (SIGKILL soon after `STOP_WITHIN_S`)."""
    started = time.monotonic()
    service.kill(signal.SIGTERM)
    try:
        await asyncio.to_thread(service.wait, STOP_WITHIN_S + 2)
    except Exception:
        service.kill()
        await asyncio.to_thread(service.wait, 10)
    return time.monotonic() - started


def _stopped_in_time(service: Service, took: float, *said: str) -> None:
    """`service` stopped within `STOP_WITHIN_S`, and its log says each of `said`."""
    log = service.log()
    assert took < STOP_WITHIN_S, f"stopped after {took:.0f} s:\n{log[-2000:]}"
    for words in said:
        assert words in log, log[-3000:]


async def _until_waiting_on_a_lock(conn: asyncpg.Connection, limit_s: float = 15.0) -> None:
    """Until another backend of this database waits for a lock (the service's batch or pass
    blocked behind ours): a fixed sleep was a guess on a loaded machine."""
    sql = """
        SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
        WHERE NOT l.granted AND a.datname = current_database()
    """
    async with asyncio.timeout(limit_s):
        while not await conn.fetchval(sql):
            await asyncio.sleep(0.05)


async def _until_not_ready(url: str, limit_s: float = 15.0) -> None:
    """Until the service's /readyz says 503: it has seen NATS go."""
    async with httpx.AsyncClient() as http, asyncio.timeout(limit_s):
        while (await http.get(f"{url}/readyz")).status_code == 200:
            await asyncio.sleep(0.05)


async def _until_counted(url: str, sample: str, limit_s: float = 20.0) -> None:
    """Until the service's /metrics shows the counter `sample` above 0."""
    async with httpx.AsyncClient() as http, asyncio.timeout(limit_s):
        while True:
            for line in (await http.get(f"{url}/metrics")).text.splitlines():
                name, _, value = line.partition(" ")
                if name == sample and float(value) > 0:
                    return
            await asyncio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_ingest_stops_while_a_batch_waits_on_a_table_lock(
    js: JetStreamContext,
    subjects: Subjects,
    service_env: dict[str, str],
    database_url: str,
    org: str,
) -> None:
    """A batch blocked on a lock (here LOCK TABLE by another session; in life a migration or
    a long transaction) never returns: the drain waited for it, and `pool.close()` for its
    connection, until SIGKILL."""
    rng = random.Random(11)
    first = execution_events(org, "ruby", "before-lock", rng)[0]
    second = execution_events(org, "ruby", "under-lock", rng)[0]
    ingest = start_service("ingest", service_env)
    conn = await connect(database_url)
    locked = False
    try:
        await wait_ready(ingest.url, timeout=20)
        await publish(js, subjects, [first])
        sql = "SELECT count(*) FROM executions WHERE org = $1"
        assert await wait_for_count(conn, sql, (org,), 1, timeout=10) == 1
        await conn.execute("BEGIN; LOCK TABLE executions IN ACCESS EXCLUSIVE MODE")
        locked = True
        await publish(js, subjects, [second])
        await _until_waiting_on_a_lock(conn)  # the batch now waits for the lock
        took = await _stop(ingest)
        await conn.execute("ROLLBACK")
        locked = False
        _stopped_in_time(ingest, took, "cut off")
        # Not acknowledged, so not lost: the durable consumer still owes it.
        info = await js.consumer_info(subjects.events_stream, "ingest")
        assert info.num_ack_pending + info.num_pending == 1
        assert await conn.fetchval(sql, org) == 1
    finally:
        ingest.kill()
        if locked:
            await conn.execute("ROLLBACK")
        await conn.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["ingest", "reconciler"])
async def test_a_stop_after_nats_went_away_closes_without_draining(
    tmp_path: Path, service_env: dict[str, str], name: str
) -> None:
    """NATS gone (a restart, a network cut) when SIGTERM comes: nats-py refuses to drain a
    reconnecting connection, and the stop failed there (before the reconciler closed its
    engines and pool); it may not wait for NATS either."""
    server = OwnNats(tmp_path / "nats-store")
    server.start()
    service = start_service(name, {**service_env, "NATS_URL": server.url})
    try:
        await wait_ready(service.url, timeout=20)
        server.stop()
        await _until_not_ready(service.url)
        took = await _stop(service)
        # uvicorn ends with the signal it caught; a failed shutdown only says so in the log.
        log = service.log()
        assert took < STOP_WITHIN_S, f"stopped after {took:.0f} s:\n{log[-2000:]}"
        assert "shutdown failed" not in log, log[-3000:]
        assert "without draining" in log, log[-3000:]
    finally:
        service.kill()
        server.stop()


@pytest.mark.timeout(60)
async def test_reconciler_stops_while_its_pass_waits_on_a_table_lock(
    service_env: dict[str, str], database_url: str
) -> None:
    """The stop waited for the pass in progress, and a pass blocked in Postgres ends only at
    `db_timeout_seconds` (30 s by default): SIGKILL came first."""
    env = {**service_env, "RECONCILER_INTERVAL_SECONDS": "0.5"}
    reconciler = start_service("reconciler", env)
    conn = await connect(database_url)
    try:
        await wait_ready(reconciler.url, timeout=20)
        await conn.execute("BEGIN; LOCK TABLE executions IN ACCESS EXCLUSIVE MODE")
        await _until_waiting_on_a_lock(conn)  # the next pass now waits for the lock
        took = await _stop(reconciler)
        _stopped_in_time(reconciler, took, "cut off the pass")
    finally:
        reconciler.kill()
        await conn.close()


@pytest.mark.timeout(60)
async def test_notifier_stops_while_postgres_hangs_mid_query(
    service_env: dict[str, str], database_url: str, org: str
) -> None:
    """A scope load given up on a hung database is cancelled, but its connection's clean-up
    hangs with the database: `pool.close()` waited for that connection until SIGKILL."""
    async with proxy_to(port_of(database_url)) as proxy:
        env = {**service_env, "DATABASE_URL": via_port(database_url, proxy.port)}
        notifier = start_service("notifier", env)
        try:
            await wait_ready(notifier.url, timeout=20)
            proxy.latency = 3600.0  # connections stay open; nothing crosses them any more
            tok = mint_token(
                secret=service_env["FLEETWATCH_JWT_SECRET"], org=org, user="u", role="admin"
            )
            url = f"ws://127.0.0.1:{notifier.port}/ws?token={tok}"

            async def open_socket() -> None:
                async with websockets.connect(url, open_timeout=30):
                    await asyncio.sleep(60)

            client = asyncio.create_task(open_socket())
            # Past the scope load's 5 s: given up, still holding a connection (a fixed 7 s
            # ran out first when the handshake itself was slow on a loaded machine).
            await _until_counted(notifier.url, "notifier_scope_load_failures_total")
            took = await _stop(notifier)
            client.cancel()
            _stopped_in_time(notifier, took, "pool not closed within")
        finally:
            notifier.kill()


@pytest.mark.timeout(60)
async def test_query_stops_while_postgres_hangs_mid_request(
    service_env: dict[str, str], database_url: str, org: str
) -> None:
    """A request whose query the database never answers (statement_timeout is the server's,
    and it cannot help when nothing crosses the link) held uvicorn's stop, which had no
    bound for open requests, and then `pool.close()`."""
    async with proxy_to(port_of(database_url)) as proxy:
        env = {**service_env, "DATABASE_URL": via_port(database_url, proxy.port)}
        query = start_service("query", env)
        try:
            await wait_ready(query.url, timeout=20)
            tok = mint_token(
                secret=service_env["FLEETWATCH_JWT_SECRET"], org=org, user="u", role="admin"
            )
            proxy.latency = 3600.0  # connections stay open; nothing crosses them any more
            before = proxy.sent_up
            async with httpx.AsyncClient(base_url=query.url, timeout=60) as http:
                request = asyncio.create_task(
                    http.get("/api/executions", headers={"Authorization": f"Bearer {tok}"})
                )
                # Until the request has sent the database something: it now waits for its
                # answer (a fixed 1.5 s stopped the service before the request was read).
                async with asyncio.timeout(20):
                    while proxy.sent_up == before and not request.done():
                        await asyncio.sleep(0.05)
                assert not request.done(), "the request was answered without the database"
                took = await _stop(query)
                request.cancel()
            _stopped_in_time(query, took, "pool not closed within")
        finally:
            query.kill()
