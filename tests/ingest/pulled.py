"""Test helpers: a stream holding one event per execution, and a pull from a busy loop."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.ingest.settings import IngestSettings
from shared.streams import ensure_streams
from shared.subjects import Subjects
from tests.ingest.events_factory import execution_events
from tests.ingest.test_ingest_service import publish

Fetch = Callable[..., Awaitable[list[Msg]]]


@dataclass
class Published:
    settings: IngestSettings
    nc: Client
    js: JetStreamContext


@contextlib.asynccontextmanager
async def one_event_per_execution(
    nats_url: str, database_url: str, subjects: Subjects, org: str, count: int, tag: str
) -> AsyncIterator[Published]:
    """The ingest streams of `subjects`, holding the last event of `count` executions."""
    rng = random.Random(count)
    events = [execution_events(org, "ruby", f"{tag}{i:02d}", rng)[-1] for i in range(count)]
    settings = IngestSettings(
        NATS_URL=nats_url, DATABASE_URL=database_url, FLEETWATCH_SUBJECT_PREFIX=subjects.prefix
    )
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        await publish(js, subjects, events)
        yield Published(settings, nc, js)
    finally:
        await nc.close()


def unpatched_fetch() -> Fetch:
    """nats-py's own fetch, even when shared/faststream_compat has wrapped it."""
    fetch = JetStreamContext.PullSubscription.fetch
    return getattr(fetch, "__wrapped__", fetch)


async def fetch_from_busy_loop(
    sub: JetStreamContext.PullSubscription, batch: int, fetch: Fetch | None = None
) -> list[Msg]:
    """Fetch while the event loop is busy past the fetch window as the server answers."""
    fetch = fetch or JetStreamContext.PullSubscription.fetch
    task = asyncio.create_task(fetch(sub, batch, timeout=0.05))
    await asyncio.sleep(0)  # the fetch sends its request and waits
    time.sleep(0.2)  # noqa: ASYNC251 - the loop is busy past the window as the answer arrives
    return await task


async def acks_pending_settle(sub: JetStreamContext.PullSubscription, within: float = 5.0) -> int:
    """The consumer's unacknowledged count once it stops falling (the server applies acks
    asynchronously), or after `within` seconds."""
    deadline = time.monotonic() + within
    pending = (await sub.consumer_info()).num_ack_pending
    while pending and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        pending = (await sub.consumer_info()).num_ack_pending
    return pending
