"""The gateway under heavy batches, in-process on real NATS and Postgres: a big body is checked
in slices, so the event loop ingest's consumer shares gets turns between them, and batches
beyond the gateway's concurrency wait their turn for a bounded time, then get 503 (busy),
never queue without end."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from services.ingest.gateway import MAX_EVENTS
from services.ingest.gateway_batch import check_batch
from services.ingest.gateway_body import split_body
from shared.events import EventType
from shared.gc_tuning import THRESHOLDS
from shared.publisher.envelope import execution_event
from shared.subjects import Subjects
from tests.publisher.conftest import gateway_app


@pytest.fixture(autouse=True)
def service_gc() -> Iterator[None]:
    """The collector's thresholds as the ingest service sets them (shared/gc_tuning.py): with
    the defaults, parsing a big body alone runs young collections over the growing result."""
    before = gc.get_threshold()
    gc.set_threshold(*THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _heavy_batch(org: str, tag: str) -> bytes:
    """1,000 completed executions with 1,000 numbers each in their tool calls: ~3 MB; checking
    it (every JSON value is looked at) takes about twice as long as parsing it."""
    calls = [{"tool": "lookup", "values": list(range(100))} for _ in range(10)]
    return orjson.dumps(
        [
            execution_event(
                EventType.EXECUTION_COMPLETED,
                org=org,
                execution={"id": f"{tag}-{i}", "agent_name": "a", "tool_calls": calls},
            )
            for i in range(1000)
        ]
    )


# Both in the CPU time of this thread (the event loop's): on a loaded machine the OS may take
# the core away in the middle of a stall, and a wall clock counted that against the gateway.


def _timed(work: Callable[..., object], *args: object) -> float:
    began = time.thread_time()
    work(*args)
    return time.thread_time() - began


async def _longest_stall(work: asyncio.Future[Any]) -> float:
    """The most CPU time the event loop spent without running a 1 ms ticker while `work` ran."""
    longest = 0.0
    last = time.thread_time()
    while not work.done():
        await asyncio.sleep(0.001)
        now = time.thread_time()
        longest = max(longest, now - last)
        last = now
    return longest


async def test_checking_a_heavy_batch_does_not_stall_the_event_loop(
    nats_url: str, database_url: str, streams: Subjects, api_key: str, org: str
) -> None:
    body = _heavy_batch(org, "stall")
    # Parsing the body is one call no event loop can interrupt; checking its events is the
    # rest of the work, about twice as long. Each measured on its own first (the fastest of 3).
    parse_s = min(_timed(split_body, body, "application/json", MAX_EVENTS) for _ in range(3))
    items, _ = split_body(body, "application/json", MAX_EVENTS)
    check_s = min(_timed(check_batch, items, org, streams) for _ in range(3))
    async with gateway_app(nats_url, database_url, streams) as (http, _):
        post = asyncio.ensure_future(
            http.post(
                "/api/events",
                content=body,
                headers={"X-API-Key": api_key, "Content-Type": "application/json"},
            )
        )
        stall = await _longest_stall(post)
        assert (await post).status_code == 202
        # The loop ran between slices of events: the rest of the process (the consumer,
        # health checks) waited for the parse, not for the whole check as well.
        assert stall < parse_s + check_s / 2, (stall, parse_s, check_s)


async def test_batches_beyond_the_gateways_concurrency_wait_then_get_503(
    nats_url: str, database_url: str, streams: Subjects, api_key: str, org: str
) -> None:
    async with gateway_app(nats_url, database_url, streams, concurrency=1, wait_s=0.05) as (
        http,
        _,
    ):
        posts = [
            http.post(
                "/api/events",
                content=_heavy_batch(org, f"busy{n}"),
                headers={"X-API-Key": api_key, "Content-Type": "application/json"},
            )
            for n in range(3)
        ]
        answers = await asyncio.gather(*posts)
        codes = sorted(a.status_code for a in answers)
        assert codes == [202, 503, 503], [a.text[:200] for a in answers]
        busy = [a for a in answers if a.status_code == 503]
        assert all(a.headers["Retry-After"] == "2" for a in busy)
        assert all("busy" in a.json()["detail"] for a in busy)
        # A turn frees up once a batch is done: the next one goes through.
        again = await http.post(
            "/api/events",
            content=_heavy_batch(org, "after"),
            headers={"X-API-Key": api_key, "Content-Type": "application/json"},
        )
        assert again.status_code == 202, again.text[:200]
