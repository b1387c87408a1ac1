"""A message as large as the server allows is still dead-lettered (its letter adds headers)."""

from __future__ import annotations

import random

from services.ingest.consumer import BatchConsumer, fit_payload
from services.ingest.metrics import IngestMetrics
from shared.db import create_pool
from shared.subjects import Subjects
from tests.ingest.conftest import Wired
from tests.ingest.events_factory import execution_events, to_wire
from tests.ingest.pulled import acks_pending_settle


def test_fit_payload_cuts_only_what_does_not_fit_and_says_so() -> None:
    headers = {"Fleet-Dlq-Reason": "too_large"}
    assert fit_payload(b"x" * 100, headers, 1000) == b"x" * 100
    assert "Fleet-Dlq-Truncated" not in headers
    cut = fit_payload(b"x" * 1000, headers, 1000)
    assert headers["Fleet-Dlq-Truncated"] == "1000"
    size = len(cut) + 12 + sum(len(k) + len(v) + 4 for k, v in headers.items())
    assert 800 < size <= 1000


async def test_a_body_at_the_servers_limit_is_dead_lettered_and_the_next_event_stored(
    wired: Wired, database_url: str, subjects: Subjects, org: str
) -> None:
    nc, js = wired.nc, wired.js
    pool = await create_pool(database_url)
    consumer = BatchConsumer(pool=pool, js=js, subjects=subjects, metrics=IngestMetrics.create())
    good = execution_events(org, "ruby", "after-big", random.Random(3))[-1]
    huge = b'{"pad":"' + b"p" * (nc.max_payload - 200) + b'"}'
    try:
        await js.publish(subjects.event(org, "ruby", "execution_started"), huge)
        await js.publish(subjects.event(org, "ruby", good.type), to_wire(good))
        sub = await js.pull_subscribe(
            subjects.all_events, durable="big", stream=subjects.events_stream
        )
        msgs = await sub.fetch(2, timeout=5)
        assert len(msgs) == 2
        await consumer.handle(msgs)
        assert nc.is_connected
        assert await acks_pending_settle(sub) == 0
        dlq = await js.pull_subscribe(subjects.all_dlq, durable="dlq", stream=subjects.dlq_stream)
        letters = await dlq.fetch(1, timeout=5)
        assert letters[0].headers is not None
        assert letters[0].headers["Fleet-Dlq-Reason"] == "too_large"
        assert letters[0].headers["Fleet-Dlq-Truncated"] == str(len(huge))
        assert huge.startswith(letters[0].data)
        async with pool.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT count(*) FROM executions WHERE org = $1 AND id = 'after-big'", org
            )
        assert stored == 1
    finally:
        await pool.close()
