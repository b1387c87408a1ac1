"""Faults 6 to 9: duplicates in and out of the window, redelivery storm, poison, shuffled replay."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from typing import Any

import orjson
from nats.js import JetStreamContext

from shared.db import connect
from shared.subjects import Subjects
from tests.chaos.harness import ChaosResult, Scale, ingest_counter, settle
from tests.chaos.infra import proxy_to
from tests.chaos.load import Load, make_events
from tests.ingest.events_factory import to_wire
from tests.procs import running


async def _absorbed(url: str, expected: int, timeout: float = 45) -> int:
    """Wait until ingest has absorbed `expected` duplicates (it counts each one it skips)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = await ingest_counter(url, "duplicate")
        if seen >= expected or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.2)


async def test_duplicates_inside_and_outside_the_window(
    js: JetStreamContext,
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    fresh_database_url: str,
    scale: Scale,
    chaos_results: list[ChaosResult],
) -> None:
    """Same Nats-Msg-Id: JetStream drops it. New id (as after the window): the events table."""
    events = make_events(org, scale.events, seed=61)
    rng = random.Random(61)
    env = {**service_env, **scale.ingest_env(), "DATABASE_URL": fresh_database_url}
    load = Load(service_env["NATS_URL"], subjects, events, rate=scale.rate)
    conn = await connect(fresh_database_url)
    try:
        async with running("ingest", env) as ingest:
            await load.start()
            await load.wait_sent(len(events))
            await asyncio.sleep(0.5)
            inside = rng.sample(events[: len(events) // 2], len(events) // 10)
            outside = rng.sample(events, len(events) // 10)
            acks = await asyncio.gather(
                *(
                    js.publish(
                        subjects.event(e.org, e.agent, e.type),
                        to_wire(e),
                        headers={"Nats-Msg-Id": e.event_id},
                    )
                    for e in inside
                )
            )
            dropped = sum(1 for a in acks if a.duplicate)
            for e in outside:
                await js.publish(
                    subjects.event(e.org, e.agent, e.type),
                    to_wire(e),
                    headers={"Nats-Msg-Id": "late-" + e.event_id},
                )
            absorbed = await _absorbed(ingest.url, len(outside))
            result = await settle(
                conn,
                org,
                load,
                fault="6. Duplicate publishes inside / outside the window",
                lifted_at=None,
                results=chaos_results,
                absorbed=absorbed,
                extra_published=len(inside) + len(outside),
                notes=f"{dropped}/{len(inside)} in-window repeats dropped by JetStream; "
                f"{len(outside)} re-published under new ids",
            )
            assert dropped == len(inside)
            assert result.absorbed == len(outside)
    finally:
        await load.close()
        await conn.close()


async def _freeze_now_and_then(
    pid: int, stop: asyncio.Event, frozen_s: float, every_s: float
) -> int:
    """SIGSTOP the process for `frozen_s` (longer than ack_wait) every `every_s`, at least once.

    A frozen ingest cannot send its in-progress signals, so JetStream redelivers whatever it
    holds (as a long GC pause, CPU starvation or a stalled host would): the storm happens
    whatever ingest does to avoid one. Returns how many times it froze the process.
    """
    pauses = 0
    wait = min(0.5, every_s)  # the first soon, so that the short run freezes too
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
        wait = every_s
        if pauses and stop.is_set():
            break
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(frozen_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        pauses += 1
    return pauses


async def test_redelivery_storm(
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    fresh_database_url: str,
    scale: Scale,
    chaos_results: list[ChaosResult],
) -> None:
    """ack_wait 0.5 s, a database 100 ms away per round trip, and ingest frozen now and then."""
    events = make_events(org, scale.events, seed=71)
    pg_port = int(fresh_database_url.rsplit(":", 1)[1].split("/")[0])
    async with proxy_to(pg_port) as proxy:
        proxy.latency = 0.05
        url = fresh_database_url.replace(f":{pg_port}/", f":{proxy.port}/")
        env = {
            **service_env,
            "DATABASE_URL": url,
            "INGEST_ACK_WAIT": "0.5",
            # 500 per batch at 100 ms per round trip: ~1 s, two ack waits (200 made the long
            # run of 24,000 events a test of round trips rather than of redelivery).
            "INGEST_BATCH_SIZE": "500",
        }
        load = Load(service_env["NATS_URL"], subjects, events, rate=scale.rate)
        conn = await connect(fresh_database_url)
        stop_freezing = asyncio.Event()
        try:
            async with running("ingest", env) as ingest:
                await load.start()
                freezer = asyncio.create_task(
                    _freeze_now_and_then(
                        ingest.process.pid, stop_freezing, frozen_s=1.2, every_s=3.0
                    )
                )
                await load.wait_sent(len(events), timeout=scale.duration_s + 60)
                stop_freezing.set()
                pauses = await freezer
                result = await settle(
                    conn,
                    org,
                    load,
                    fault="7. Redelivery storm (ack_wait 0.5 s, slow batches, ingest frozen)",
                    lifted_at=None,
                    results=chaos_results,
                    notes=f"50 ms each way to Postgres; ingest frozen 1.2 s x {pauses}",
                )
                await asyncio.sleep(1)
                result.absorbed = await ingest_counter(ingest.url, "duplicate")
                proxy.latency = 0
            assert pauses > 0
            assert result.absorbed > 0, "no redelivery happened: the storm was not a storm"
        finally:
            stop_freezing.set()
            await load.close()
            await conn.close()


def _poison(subjects: Subjects, org: str, i: int) -> tuple[str, bytes, str]:
    started = subjects.event(org, "agent-0", "execution_started")
    kinds: list[tuple[str, bytes, str]] = [
        (started, b"{oops" + str(i).encode(), "not_json"),
        (started, orjson.dumps({"type": "execution_started", "event_id": i}), "schema"),
        (f"{subjects.prefix}.events.{org}.agent-0.execution_exploded", b"{}", "unknown_type"),
        (
            subjects.event("other-org", "agent-0", "execution_started"),
            orjson.dumps(
                {
                    "type": "execution_started",
                    "event_id": f"p{i}",
                    "occurred_at": "2026-11-01T00:00:00Z",
                    "org": org,
                    "execution": {"id": f"p{i}", "agent_name": "agent-0"},
                }
            ),
            "tenant_mismatch",
        ),
    ]
    return kinds[i % len(kinds)]


async def test_poison_messages_mixed_into_the_load(
    js: JetStreamContext,
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    fresh_database_url: str,
    scale: Scale,
    chaos_results: list[ChaosResult],
) -> None:
    events = make_events(org, scale.events, seed=81)
    env = {**service_env, **scale.ingest_env(), "DATABASE_URL": fresh_database_url}
    poison = [_poison(subjects, org, i) for i in range(max(20, len(events) // 20))]
    load = Load(service_env["NATS_URL"], subjects, events, rate=scale.rate)
    conn = await connect(fresh_database_url)
    try:
        async with running("ingest", env) as ingest:
            await load.start()
            for i, (subject, data, _) in enumerate(poison):
                await js.publish(subject, data, headers={"Nats-Msg-Id": f"poison-{org}-{i}"})
                await asyncio.sleep(scale.duration_s / len(poison))
            result = await settle(
                conn,
                org,
                load,
                fault="8. Poison messages mixed into the load",
                lifted_at=None,
                results=chaos_results,
                extra_published=len(poison),
                notes=f"{len(poison)} poison messages",
            )
            sub = await js.pull_subscribe(subjects.all_dlq, stream=subjects.dlq_stream)
            got: list[Any] = []
            deadline = time.monotonic() + 20
            while len(got) < len(poison) and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    fetched = await sub.fetch(min(500, len(poison) - len(got)), timeout=1)
                    # Ack as we go: the consumer stops delivering at max_ack_pending (1,000).
                    for m in fetched:
                        await m.ack()
                    got += fetched
            reasons = sorted(m.headers["Fleet-Dlq-Reason"] for m in got if m.headers)
            result.notes += f"; {len(got)} in the DLQ"
            assert reasons == sorted(p[2] for p in poison)
            assert ingest.process.poll() is None
    finally:
        await load.close()
        await conn.close()


async def test_shuffled_replays_of_each_execution(
    js: JetStreamContext,
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    fresh_database_url: str,
    scale: Scale,
    chaos_results: list[ChaosResult],
) -> None:
    """All events once, then each execution's events shuffled and replayed under new ids."""
    events = make_events(org, scale.events // 2, seed=91)
    env = {**service_env, **scale.ingest_env(), "DATABASE_URL": fresh_database_url}
    rng = random.Random(91)
    load = Load(service_env["NATS_URL"], subjects, events, rate=scale.rate)
    conn = await connect(fresh_database_url)
    replays = 2
    try:
        async with running("ingest", env) as ingest:
            await load.start()
            await load.wait_sent(len(events))
            for round_ in range(replays):
                again = list(events)
                rng.shuffle(again)
                renamed = again
                for chunk in range(0, len(renamed), 300):
                    await asyncio.gather(
                        *(
                            js.publish(
                                subjects.event(e.org, e.agent, e.type),
                                to_wire(e),
                                headers={"Nats-Msg-Id": f"replay{round_}-{e.event_id}"},
                            )
                            for e in renamed[chunk : chunk + 300]
                        )
                    )
            absorbed = await _absorbed(ingest.url, replays * len(events))
            result = await settle(
                conn,
                org,
                load,
                fault="9. Events shuffled and replayed",
                lifted_at=None,
                results=chaos_results,
                absorbed=absorbed,
                extra_published=replays * len(events),
                notes=f"{replays} shuffled replays under new message ids",
            )
            assert result.absorbed == replays * len(events)
    finally:
        await load.close()
        await conn.close()
