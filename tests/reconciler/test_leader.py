"""Two reconciler processes at once: one leads (advisory lock) and acts; the other takes over."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import httpx

from tests.procs import free_port, running, start_service, wait_ready

LOOPS = re.compile(r'^reconciler_loops_total\{outcome="ok"\} (\S+)$', re.MULTILINE)


async def _state(client: httpx.AsyncClient, url: str) -> tuple[bool, float]:
    ready = (await client.get(f"{url}/readyz")).json()
    scrape = await client.get(f"{url}/metrics")  # as Prometheus asks: no redirect to follow
    assert scrape.status_code == 200, scrape.status_code
    found = LOOPS.search(scrape.text)
    return bool(ready["leader"]), float(found.group(1)) if found else 0.0


async def test_only_one_replica_acts_and_another_takes_over(service_env: dict[str, str]) -> None:
    fast = {"RECONCILER_INTERVAL_SECONDS": "0.2"}
    async with (
        running("reconciler", service_env, extra_env=fast) as first,
        running("reconciler", service_env, extra_env=fast) as second,
        httpx.AsyncClient(timeout=5) as client,
    ):
        # Until one replica leads and has acted a few times (some 0.6 s of loops, in which a
        # follower that acted would have too).
        deadline = time.monotonic() + 20
        while True:
            states = [await _state(client, s.url) for s in (first, second)]
            if any(leader and loops >= 3 for leader, loops in states):
                break
            assert time.monotonic() < deadline, f"no replica led and acted: {states}"
            await asyncio.sleep(0.2)
        states = [await _state(client, s.url) for s in (first, second)]
        assert sorted(leader for leader, _ in states) == [False, True]
        leader, follower = (first, second) if states[0][0] else (second, first)
        assert (await _state(client, leader.url))[1] > 0
        assert (await _state(client, follower.url))[1] == 0

        leader.kill(signal.SIGKILL)
        deadline = time.monotonic() + 20
        while (await _state(client, follower.url))[1] == 0:
            assert time.monotonic() < deadline, "the follower never took over"
            await asyncio.sleep(0.2)
        assert (await _state(client, follower.url))[0]


async def test_unreachable_engine_is_reported_in_readyz_not_fatal(
    service_env: dict[str, str],
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    service = start_service(
        "reconciler", service_env, extra_env={"RECONCILER_TEMPORAL_ADDRESS": dead}
    )
    try:
        await wait_ready(service.url, path="/healthz")
        async with httpx.AsyncClient(timeout=5) as client:
            deadline = time.monotonic() + 20
            while True:
                answer = await client.get(f"{service.url}/readyz")
                if answer.json().get("error"):
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert answer.status_code == 503
        assert dead in answer.json()["error"]
        assert service.process.poll() is None
    finally:
        service.kill(signal.SIGTERM)
        await asyncio.to_thread(service.wait, 30)
