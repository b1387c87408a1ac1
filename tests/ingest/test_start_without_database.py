"""Ingest started while Postgres is down serves health and metrics, says it is not ready,
and stores the events once Postgres answers; a database it can reach but not use (a wrong
password, say) still stops it at once."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess

import httpx
from nats.js import JetStreamContext

from shared.db import connect
from shared.subjects import Subjects
from tests.chaos.infra import port_of, proxy_to, via_port
from tests.ingest.events_factory import execution_events
from tests.ingest.test_ingest_service import publish, wait_for_count
from tests.procs import free_port, start_service, wait_ready


async def test_ingest_starts_and_waits_for_a_database_that_is_down(
    js: JetStreamContext,
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    database_url: str,
) -> None:
    event = execution_events(org, "ruby", "late-db", random.Random(8))[0]
    async with proxy_to(free_port()) as proxy:  # nothing listens there: connections refused
        env = {**service_env, "DATABASE_URL": via_port(database_url, proxy.port)}
        ingest = start_service("ingest", env)
        try:
            await wait_ready(ingest.url, timeout=20, path="/healthz")
            async with httpx.AsyncClient(base_url=ingest.url, timeout=5) as http:
                ready = await http.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["database"] is False
                assert (await http.get("/metrics")).status_code == 200
            await publish(js, subjects, [event])
            await asyncio.sleep(1)
            proxy.target = ("127.0.0.1", port_of(database_url))  # Postgres is back
            conn = await connect(database_url)
            try:
                sql = "SELECT count(*) FROM executions WHERE org = $1 AND id = 'late-db'"
                assert await wait_for_count(conn, sql, (org,), 1, timeout=30) == 1
            finally:
                await conn.close()
            await wait_ready(ingest.url, timeout=10)
        finally:
            ingest.kill(signal.SIGTERM)
            try:
                await asyncio.to_thread(ingest.wait, 30)
            except subprocess.TimeoutExpired:
                ingest.kill()


async def test_ingest_stops_on_a_database_it_cannot_log_in_to(
    service_env: dict[str, str], database_url: str
) -> None:
    env = {**service_env, "DATABASE_URL": database_url.replace("postgres@", "nobody-here@")}
    ingest = start_service("ingest", env)
    try:
        code = await asyncio.to_thread(ingest.wait, 30)
    finally:
        ingest.kill()
    assert code != 0
    assert "nobody-here" in ingest.log()


async def test_sigterm_with_the_database_blackholed_stops_within_the_grace_period(
    js: JetStreamContext,
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    database_url: str,
) -> None:
    """A batch waiting for a connection to a database that swallows packets waited asyncpg's
    60 s connect timeout, past Kubernetes' 30 s grace period (then SIGKILL). Nothing is lost
    either way (unacked messages come again); the process should stop on its own."""
    event = execution_events(org, "ruby", "blackholed", random.Random(9))[0]
    async with proxy_to(port_of(database_url)) as proxy:
        proxy.cut()  # connections accepted, never answered
        env = {**service_env, "DATABASE_URL": via_port(database_url, proxy.port)}
        ingest = start_service("ingest", env)
        try:
            await wait_ready(ingest.url, timeout=30, path="/healthz")
            before = proxy.connections
            await publish(js, subjects, [event])
            # The batch now waits for a connection (the proxy took it and will never answer).
            async with asyncio.timeout(15):
                while proxy.connections == before:
                    await asyncio.sleep(0.05)
            started = asyncio.get_running_loop().time()
            ingest.kill(signal.SIGTERM)
            await asyncio.to_thread(ingest.wait, 45)
            took = asyncio.get_running_loop().time() - started
            assert took < 25, f"stopped after {took:.0f} s"
        finally:
            ingest.kill()
