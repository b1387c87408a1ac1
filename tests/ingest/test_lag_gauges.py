"""Ingest's consumer gauges say "unknown" while NATS is away, on a real nats-server.

A lag frozen at its last value (0, when ingest was keeping up) would look healthy while ingest
takes nothing: the gauges turn NaN, the read timestamp stays put (FleetwatchIngestBlind
watches it), and both recover once NATS is back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.infra import own_nats
from tests.procs import running

LAG = "fleetwatch_ingest_consumer_lag"
ACK_PENDING = "fleetwatch_ingest_consumer_ack_pending"
READ_AT = "fleetwatch_ingest_consumer_read_timestamp_seconds"


async def _gauges(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{url}/metrics")).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in (LAG, ACK_PENDING, READ_AT)
    }


async def _until(
    url: str, check: Callable[[dict[str, float]], bool], within_s: float = 15.0
) -> dict[str, float]:
    deadline = time.monotonic() + within_s
    while True:
        found = await _gauges(url)
        if check(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gauges still {found}")
        await asyncio.sleep(0.1)


def _unknown(g: dict[str, float]) -> bool:
    return math.isnan(g[LAG]) and math.isnan(g[ACK_PENDING])


async def test_lag_is_unknown_while_nats_is_away_and_read_again_after(
    service_env: dict[str, str], database_url: str
) -> None:
    async with own_nats() as server:
        env = {
            **service_env,
            "NATS_URL": server.url,
            "DATABASE_URL": database_url,
            "INGEST_LAG_POLL_INTERVAL": "0.2",
        }
        async with running("ingest", env) as ingest:
            before = await _until(ingest.url, lambda g: g[LAG] == g[ACK_PENDING] == 0 < g[READ_AT])
            assert abs(before[READ_AT] - time.time()) < 5

            await server.kill()
            away = await _until(ingest.url, _unknown)
            killed_at = time.time()
            await asyncio.sleep(1.0)  # five polls: none of them reads anything
            still = await _gauges(ingest.url)
            assert _unknown(still)
            assert still[READ_AT] == away[READ_AT] < killed_at

            await server.start()
            after = await _until(ingest.url, lambda g: g[LAG] == 0 and g[READ_AT] > killed_at, 30)
            assert after[ACK_PENDING] == 0
