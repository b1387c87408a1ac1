"""Faults 3 to 5: Postgres crash-restarted, Postgres cut / slow / reset, nats-server killed."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from shared.db import connect
from shared.subjects import Subjects
from tests.chaos.harness import ChaosResult, Scale, ingest_counter, settle
from tests.chaos.infra import own_nats, own_postgres, proxy_to, via_port
from tests.chaos.load import Load, make_events
from tests.procs import running


async def test_postgres_restarted_in_immediate_mode_under_load(
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    scale: Scale,
    chaos_results: list[ChaosResult],
) -> None:
    events = make_events(org, scale.events, seed=31)
    async with own_postgres() as pg:
        env = {
            **service_env,
            **scale.ingest_env(),
            "DATABASE_URL": pg.url,
            "INGEST_BATCH_SIZE": "100",
        }
        load = Load(service_env["NATS_URL"], subjects, events, rate=scale.rate)
        async with running("ingest", env) as ingest:
            await load.start()
            await load.wait_sent(len(events) // 3)
            restarts = 3 if scale.long else 1
            for _ in range(restarts):
                await asyncio.to_thread(pg.restart_immediate)
                lifted = time.monotonic()
                await asyncio.sleep(scale.duration_s / (restarts + 2))
            conn = await connect(pg.url)
            try:
                result = await settle(
                    conn,
                    org,
                    load,
                    fault="3. Postgres restarted in immediate mode",
                    lifted_at=lifted,
                    results=chaos_results,
                    notes=f"{restarts} crash restart(s) of a throwaway PG 15 cluster",
                )
                result.absorbed = await ingest_counter(ingest.url, "duplicate")
            finally:
                await conn.close()
                await load.close()


async def test_postgres_unreachable_then_slow_then_reset(
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    fresh_database_url: str,
    scale: Scale,
    chaos_results: list[ChaosResult],
) -> None:
    """Through a proxy: cut (blackhole) for the outage, then 50 ms per chunk, then resets."""
    events = make_events(org, scale.events, seed=41)
    pg_port = urlsplit(fresh_database_url).port or 5432
    async with proxy_to(pg_port) as proxy:
        env = {
            **service_env,
            **scale.ingest_env(),
            "DATABASE_URL": via_port(fresh_database_url, proxy.port),
            "INGEST_BATCH_SIZE": "100",
        }
        load = Load(service_env["NATS_URL"], subjects, events, rate=scale.rate / 2)
        conn = await connect(fresh_database_url)
        try:
            async with running("ingest", env) as ingest:
                await load.start()
                await load.wait_sent(len(events) // 5)
                proxy.cut()
                await asyncio.sleep(scale.outage_s)
                proxy.heal()
                lifted = time.monotonic()
                proxy.latency = 0.05
                await asyncio.sleep(3 if not scale.long else 15)
                proxy.latency = 0.0
                resets = 0
                for _ in range(4 if not scale.long else 20):
                    resets += proxy.reset_all()
                    await asyncio.sleep(0.5)
                result = await settle(
                    conn,
                    org,
                    load,
                    fault="4. Postgres unreachable, then slow, then connections reset",
                    lifted_at=lifted,
                    results=chaos_results,
                    notes=f"{scale.outage_s:.0f}s blackhole, 50 ms latency, {resets} resets",
                )
                result.absorbed = await ingest_counter(ingest.url, "duplicate")
                assert ingest.process.poll() is None
        finally:
            await conn.close()
            await load.close()


async def test_nats_server_killed_and_restarted(
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    fresh_database_url: str,
    scale: Scale,
    chaos_results: list[ChaosResult],
) -> None:
    """kill -9 of a throwaway nats-server (file store) while publishers and ingest run."""
    events = make_events(org, scale.events, seed=51)
    async with own_nats() as server:
        env = {
            **service_env,
            **scale.ingest_env(),
            "NATS_URL": server.url,
            "DATABASE_URL": fresh_database_url,
            "INGEST_BATCH_SIZE": "100",
        }
        load = Load(server.url, subjects, events, rate=scale.rate)
        conn = await connect(fresh_database_url)
        try:
            async with running("ingest", env) as ingest:
                await load.start()
                await load.wait_sent(len(events) // 3)
                kills = 3 if scale.long else 1
                for _ in range(kills):
                    await server.kill()
                    await asyncio.sleep(2 if not scale.long else 5)
                    await server.start()
                    lifted = time.monotonic()
                    await asyncio.sleep(2)
                result = await settle(
                    conn,
                    org,
                    load,
                    fault="5. nats-server killed and restarted",
                    lifted_at=lifted,
                    results=chaos_results,
                    notes=f"{kills} kill -9 of nats-server; "
                    f"{len(load.given_up)} publishes given up (not acked)",
                )
                result.absorbed = await ingest_counter(ingest.url, "duplicate")
        finally:
            await conn.close()
            await load.close()
