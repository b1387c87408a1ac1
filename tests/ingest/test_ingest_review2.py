"""Review 2 of ingest: a dead letter that cannot be stored must not hold back the rest."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import nats

from services.ingest.consumer import BatchConsumer
from services.ingest.merge import Finished
from services.ingest.metrics import IngestMetrics
from shared.db import create_pool
from shared.events import Event
from shared.settings import CommonSettings
from shared.streams import ensure_streams
from shared.subjects import Subjects
from tests.ingest.conftest import Wired
from tests.ingest.events_factory import execution_events, to_wire


async def _ack_pending(js: nats.js.JetStreamContext, subjects: Subjects, durable: str) -> int:
    info = await js.consumer_info(subjects.events_stream, durable)
    return int(info.num_ack_pending)


async def _settle(js: nats.js.JetStreamContext, subjects: Subjects, durable: str, want: int) -> int:
    pending = await _ack_pending(js, subjects, durable)
    for _ in range(100):
        if pending == want:
            break
        await asyncio.sleep(0.05)
        pending = await _ack_pending(js, subjects, durable)
    return pending


async def test_a_missing_dlq_does_not_block_valid_events_nor_lose_the_invalid_one(
    wired: Wired, database_url: str, subjects: Subjects, org: str
) -> None:
    js = wired.js
    metrics = IngestMetrics.create()
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        consumer = BatchConsumer(
            pool=pool, js=js, subjects=subjects, metrics=metrics, retry_min=0.05, retry_max=0.2
        )
        (good,) = execution_events(org, "ruby", "dlqgone1", random.Random(5))[:1]
        await js.publish(subjects.event(org, "ruby", "execution_started"), b"{broken")
        await js.publish(subjects.event(org, "ruby", good.type), to_wire(good))
        sub = await js.pull_subscribe(
            subjects.all_events,
            durable="dlq-gone",
            stream=subjects.events_stream,
            config=nats.js.api.ConsumerConfig(ack_wait=30),
        )
        messages = await sub.fetch(2, timeout=5)
        assert len(messages) == 2
        await js.delete_stream(subjects.dlq_stream)  # an operator removed it; NATS says so
        async with asyncio.timeout(20):
            await consumer.handle(messages)
        async with pool.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT count(*) FROM executions WHERE org = $1 AND id = 'dlqgone1'", org
            )
        assert stored == 1, "the valid event waited on the invalid one's dead letter"
        # The good one is acked; the invalid one is not (its dead letter is not stored).
        assert await _settle(js, subjects, "dlq-gone", 1) == 1
        assert metrics.dead_letters.labels("not_json")._value.get() == 0
        # Once the DLQ is back, the invalid message comes again and is dead-lettered.
        await ensure_streams(js, wired.settings)
        async with asyncio.timeout(20):
            again: list[Any] = []
            while not again:
                again = await sub.fetch(1, timeout=5)
        assert again[0].data == b"{broken"
        await consumer.handle(again)
        dlq = await js.pull_subscribe(subjects.all_dlq, stream=subjects.dlq_stream)
        (dead,) = await dlq.fetch(1, timeout=5)
        assert dead.headers is not None
        assert dead.headers["Fleet-Dlq-Reason"] == "not_json"
        assert await _settle(js, subjects, "dlq-gone", 0) == 0
    finally:
        await pool.close()


class _Seen:
    def __init__(self) -> None:
        self.finished: list[Finished] = []

    def observe(self, events: Any, finished: Any) -> None:
        self.finished.extend(finished)


async def test_a_failed_dead_letter_after_commit_still_counts_what_was_applied(
    wired: Wired, database_url: str, subjects: Subjects, org: str
) -> None:
    """A batch commits, one of its events is refused by the stored rows (another agent's
    execution), and its dead letter fails: the executions finished by the commit are still
    counted, since their redelivery only finds duplicates."""
    js = wired.js
    fleet = _Seen()
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        consumer = BatchConsumer(
            pool=pool, js=js, subjects=subjects, metrics=IngestMetrics.create(), fleet=fleet
        )
        done = execution_events(org, "ruby", "fin1", random.Random(9))
        # Another agent's execution, first stored by ruby: an agent_mismatch after the fold.
        first = execution_events(org, "ruby", "owned1", random.Random(10))[:1]
        theirs = execution_events(org, "emerald", "owned1", random.Random(11))[:1]
        for ev in first:
            await js.publish(subjects.event(org, ev.agent, ev.type), to_wire(ev))
        sub = await js.pull_subscribe(
            subjects.all_events, durable="after-commit", stream=subjects.events_stream
        )
        await consumer.handle(await sub.fetch(1, timeout=5))
        events: list[Event] = [*done, *theirs]
        for ev in events:
            await js.publish(subjects.event(org, ev.agent, ev.type), to_wire(ev))
        messages = await sub.fetch(len(events), timeout=5)
        assert len(messages) == len(events)
        await js.delete_stream(subjects.dlq_stream)
        await consumer.handle(messages)
        async with pool.acquire() as conn:
            status = await conn.fetchval(
                "SELECT status FROM executions WHERE org = $1 AND id = 'fin1'", org
            )
        assert status in {"success", "failed", "cancelled"}
        assert [f.agent_name for f in fleet.finished] == ["ruby"]
        # Everything is acked but the refused event, whose dead letter is not stored yet.
        assert await _settle(js, subjects, "after-commit", 1) == 1
    finally:
        await pool.close()


async def test_a_redelivered_dead_letter_is_counted_once(
    wired: Wired, database_url: str, subjects: Subjects, org: str
) -> None:
    """JetStream stores a redelivered poison message's dead letter once (its Msg-Id names
    the stream sequence); the DLQ counter must say one too, not one per delivery."""
    js = wired.js
    metrics = IngestMetrics.create()
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        consumer = BatchConsumer(pool=pool, js=js, subjects=subjects, metrics=metrics)
        await js.publish(subjects.event(org, "ruby", "execution_started"), b"{broken")
        # Two deliveries of the same stream message (a redelivery after a lost ack, or a
        # rebuilt durable replaying the stream within the duplicate window).
        for durable in ("dup-dl-a", "dup-dl-b"):
            sub = await js.pull_subscribe(
                subjects.all_events, durable=durable, stream=subjects.events_stream
            )
            await consumer.handle(await sub.fetch(1, timeout=5))
        info = await js.stream_info(subjects.dlq_stream)
        assert info.state.messages == 1
        assert metrics.dead_letters.labels("not_json")._value.get() == 1
        assert metrics.events.labels("invalid", "dead_lettered")._value.get() == 1
        assert metrics.events.labels("invalid", "duplicate")._value.get() == 1
    finally:
        await pool.close()


async def test_an_ingest_start_keeps_the_limits_an_operator_added(
    nats_url: str, subjects: Subjects
) -> None:
    """Ingest updates the limits it owns (retention, replicas, duplicate window) on start;
    a disk cap an operator set on the stream (`nats stream edit --max-bytes`) must survive
    the restart, not be reset to unlimited."""
    settings = CommonSettings(subject_prefix=subjects.prefix, stream_max_age_days=7)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings, update=True)
        for name in (subjects.events_stream, subjects.dlq_stream):
            config = (await js.stream_info(name)).config
            config.max_bytes = 64 * 1024 * 1024
            config.max_msg_size = 512 * 1024
            await js.update_stream(config=config)
        longer = CommonSettings(subject_prefix=subjects.prefix, stream_max_age_days=9)
        await ensure_streams(js, longer, update=True)
        for name in (subjects.events_stream, subjects.dlq_stream):
            config = (await js.stream_info(name)).config
            assert config.max_bytes == 64 * 1024 * 1024, name
            assert config.max_msg_size == 512 * 1024, name
        events = (await js.stream_info(subjects.events_stream)).config
        assert events.max_age == 9 * 86_400.0
    finally:
        await nc.close()


async def test_a_dead_letter_over_the_dlq_streams_own_size_limit_is_cut_to_it(
    wired: Wired, database_url: str, subjects: Subjects, org: str
) -> None:
    """An operator's `max_msg_size` on FLEET_DLQ (kept by ingest's start) refused a big poison
    message's dead letter, and the message came back every few seconds for good."""
    js = wired.js
    info = await js.stream_info(subjects.dlq_stream)
    info.config.max_msg_size = 4096
    await js.update_stream(config=info.config)
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        metrics = IngestMetrics.create()
        consumer = BatchConsumer(pool=pool, js=js, subjects=subjects, metrics=metrics)
        poison = b'{"type": "execution_started", "bogus": "' + b"x" * 20_000 + b'"}'
        await js.publish(subjects.event(org, "ruby", "execution_started"), poison)
        sub = await js.pull_subscribe(
            subjects.all_events, durable="dlq-small", stream=subjects.events_stream
        )
        messages = await sub.fetch(1, timeout=5)
        async with asyncio.timeout(20):
            await consumer.handle(messages)
        assert await _settle(js, subjects, "dlq-small", 0) == 0  # settled, not held
        dlq = await js.pull_subscribe(subjects.all_dlq, stream=subjects.dlq_stream)
        (dead,) = await dlq.fetch(1, timeout=5)
        assert dead.headers is not None
        assert dead.headers["Fleet-Dlq-Reason"] == "schema"
        assert dead.headers["Fleet-Dlq-Truncated"] == str(len(poison))
        assert poison.startswith(dead.data)
        assert 0 < len(dead.data) < 4096
        assert metrics.dlq_errors._value.get() == 0
    finally:
        await pool.close()
