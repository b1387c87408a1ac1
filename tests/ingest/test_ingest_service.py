"""Ingest as a real process on the real NATS JetStream and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from typing import Any

import asyncpg
import orjson
from nats.js import JetStreamContext

from shared.db import connect
from shared.events import Event
from shared.subjects import Subjects
from tests.checks import stored_equals_fold
from tests.ingest.events_factory import execution_events, to_wire
from tests.procs import running, start_service, wait_ready


async def publish(js: JetStreamContext, subjects: Subjects, events: list[Event]) -> None:
    for chunk in range(0, len(events), 300):
        await asyncio.gather(
            *(
                js.publish(
                    subjects.event(e.org, e.agent, e.type),
                    to_wire(e),
                    headers={"Nats-Msg-Id": e.event_id},
                )
                for e in events[chunk : chunk + 300]
            )
        )


async def wait_for_count(
    conn: asyncpg.Connection, sql: str, args: tuple[Any, ...], expected: int, timeout: float = 60
) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count: int = await conn.fetchval(sql, *args)
        if count >= expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.2)


async def test_ten_thousand_shuffled_events_with_duplicates_fold_exactly(
    js: JetStreamContext,
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    fresh_database_url: str,
) -> None:
    rng = random.Random(7)
    events: list[Event] = []
    index = 0
    while len(events) < 10_000:
        agent = f"agent-{index % 25}"
        events += execution_events(org, agent, f"x{index:05d}", rng)
        index += 1
    events = events[:10_000]
    # 10% duplicates: half re-sent with the same Nats-Msg-Id (JetStream drops them), half
    # after a re-publish under a new message id (ingest's events table drops them).
    dupes = rng.sample(events, 1_000)
    wire = events + dupes
    rng.shuffle(wire)
    env = {**service_env, "DATABASE_URL": fresh_database_url}
    async with running("ingest", env):
        await publish(js, subjects, wire[:5_000])
        for e in dupes[:500]:
            await js.publish(
                subjects.event(e.org, e.agent, e.type),
                to_wire(e),
                headers={"Nats-Msg-Id": "again-" + e.event_id},
            )
        await publish(js, subjects, wire[5_000:])
        conn = await connect(fresh_database_url)
        try:
            stored = await wait_for_count(
                conn, "SELECT count(*) FROM events WHERE org = $1", (org,), len(events)
            )
            assert stored == len(events)
            await asyncio.sleep(0.5)  # nothing more may arrive
            assert await conn.fetchval("SELECT count(*) FROM events WHERE org=$1", org) == 10_000
            rows = await conn.fetch("SELECT * FROM executions WHERE org = $1", org)
            assert stored_equals_fold(rows, events) == []
        finally:
            await conn.close()


async def test_bad_messages_go_to_the_dlq_and_the_next_good_event_is_stored(
    js: JetStreamContext,
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    database_url: str,
) -> None:
    good = execution_events(org, "ruby", "after-poison", random.Random(1))[0]
    started = subjects.event(org, "ruby", "execution_started")
    poison = {
        "not_json": (started, b"{oops"),
        "schema": (started, orjson.dumps({"type": "execution_started", "event_id": 5})),
        "unknown_type": (f"{subjects.prefix}.events.{org}.ruby.execution_exploded", b"{}"),
        "bad_subject": (f"{subjects.prefix}.events.{org}.execution_started", to_wire(good)),
        "too_large": (
            started,
            orjson.dumps(
                {
                    **orjson.loads(to_wire(good)),
                    "event_id": "big",
                    "execution": {
                        "id": "big",
                        "agent_name": "ruby",
                        "execution_log": "x" * 600_000,
                    },
                }
            ),
        ),
        "tenant_mismatch": (
            subjects.event("someone-else", "ruby", "execution_started"),
            to_wire(good),
        ),
    }
    async with running("ingest", service_env) as ingest:
        for subject, data in poison.values():
            await js.publish(subject, data)
        await publish(js, subjects, [good])
        conn = await connect(database_url)
        try:
            found = await wait_for_count(
                conn,
                "SELECT count(*) FROM executions WHERE org=$1 AND id='after-poison'",
                (org,),
                1,
            )
            assert found == 1
        finally:
            await conn.close()
        sub = await js.pull_subscribe(subjects.all_dlq, stream=subjects.dlq_stream)
        msgs: list[Any] = []
        deadline = time.monotonic() + 10
        while len(msgs) < len(poison) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                msgs += await sub.fetch(len(poison) - len(msgs), timeout=1)
        reasons = {m.headers["Fleet-Dlq-Reason"] for m in msgs if m.headers}
        assert reasons == set(poison)
        for m in msgs:
            assert m.headers
            assert m.headers["Fleet-Original-Subject"].startswith(subjects.prefix)
            assert m.headers["Fleet-Dlq-Detail"]
        assert ingest.process.poll() is None, "ingest must keep running"


async def test_sigkill_mid_stream_loses_and_doubles_nothing(
    js: JetStreamContext,
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    fresh_database_url: str,
) -> None:
    rng = random.Random(3)
    events: list[Event] = []
    for i in range(600):
        events += execution_events(org, f"a{i % 5}", f"k{i}", rng)
    env = {**service_env, "DATABASE_URL": fresh_database_url, "INGEST_BATCH_SIZE": "50"}
    first = start_service("ingest", env)
    await wait_ready(first.url)
    publisher = asyncio.create_task(publish(js, subjects, events))
    conn = await connect(fresh_database_url)
    try:
        await wait_for_count(conn, "SELECT count(*) FROM events", (), len(events) // 4)
        first.kill(signal.SIGKILL)
        await asyncio.to_thread(first.wait)
        await publisher
        async with running("ingest", env, port=first.port):
            stored = await wait_for_count(conn, "SELECT count(*) FROM events", (), len(events))
            assert stored == len(events)
        rows = await conn.fetch("SELECT * FROM executions WHERE org = $1", org)
        assert stored_equals_fold(rows, events) == []
    finally:
        await conn.close()
