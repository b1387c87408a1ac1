"""A message refused after the fold is acked as soon as its dead letter is stored.

A batch is written in parts when some of its executions are held by another batch in flight
(or on a full lock table, or when Postgres refuses its content). An `agent_mismatch` found in
the part written first was dead-lettered at once but acked only when the whole batch was
done: had the rest waited out a database outage past the DLQ's duplicate window, and the
process been stopped meanwhile, its redelivery would have stored a second dead letter.
"""

from __future__ import annotations

import asyncio
import random

from services.ingest.consumer import BatchConsumer
from services.ingest.metrics import IngestMetrics
from shared.db import create_pool
from shared.subjects import Subjects
from tests.ingest.conftest import Wired
from tests.ingest.events_factory import execution_events, to_wire


async def test_a_refused_event_is_acked_while_the_rest_of_its_batch_waits(
    wired: Wired, database_url: str, subjects: Subjects, org: str
) -> None:
    js = wired.js
    pool = await create_pool(database_url, min_size=1, max_size=1)
    consumer = BatchConsumer(pool=pool, js=js, subjects=subjects, metrics=IngestMetrics.create())
    sub = await js.pull_subscribe(
        subjects.all_events, durable="dl-at-once", stream=subjects.events_stream
    )
    handling: asyncio.Task[None] | None = None
    try:
        # ruby's execution, stored; emerald's event into it is refused after the fold.
        (owned,) = execution_events(org, "ruby", "owned", random.Random(1))[:1]
        await js.publish(subjects.event(org, owned.agent, owned.type), to_wire(owned))
        await consumer.handle(await sub.fetch(1, timeout=5))
        (theirs,) = execution_events(org, "emerald", "owned", random.Random(2))[:1]
        (held,) = execution_events(org, "ruby", "held", random.Random(3))[:1]
        for ev in (theirs, held):
            await js.publish(subjects.event(org, ev.agent, ev.type), to_wire(ev))
        messages = await sub.fetch(2, timeout=5)
        assert len(messages) == 2
        # Another batch in flight holds `held`: the batch writes `owned` now, `held` after.
        consumer._keys.take_free({(org, "held")})
        handling = asyncio.create_task(consumer.handle(messages))
        stored = 0
        for _ in range(200):
            stored = (await js.stream_info(subjects.dlq_stream)).state.messages
            if stored:
                break
            await asyncio.sleep(0.025)
        assert stored == 1
        # Only `held` is unacked: the refused event ended with its dead letter.
        pending = -1
        for _ in range(40):
            pending = (await js.consumer_info(subjects.events_stream, "dl-at-once")).num_ack_pending
            if pending == 1:
                break
            await asyncio.sleep(0.05)
        assert pending == 1
        assert not handling.done()  # still waiting for `held`
        consumer._keys.release({(org, "held")})
        await asyncio.wait_for(handling, timeout=10)
        # An ack is a publish the server takes in its own time: polled, as above.
        for _ in range(40):
            pending = (await js.consumer_info(subjects.events_stream, "dl-at-once")).num_ack_pending
            if pending == 0:
                break
            await asyncio.sleep(0.05)
        assert pending == 0
        assert (await js.stream_info(subjects.dlq_stream)).state.messages == 1
    finally:
        if handling is not None and not handling.done():
            handling.cancel()
        await pool.close()
