"""Scale-out proof: two ingest and two notifier processes on one NATS and one Postgres.

Ingest replicas share one durable consumer, so every event is applied exactly once whichever
replica fetched it (redelivered copies are recognised as duplicates); notifier replicas each
hold their own consumer, so every client of either replica gets every event it may see.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import nats
import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection

from shared.auth import mint_token
from shared.db import connect
from shared.subjects import Subjects
from tests.checks import wait_for_count
from tests.procs import Service, running

SECRET = "scale-out-test-secret-0123456789abcdef"
EXECUTIONS = 60


def events_for(org: str) -> list[dict[str, object]]:
    now = datetime.now(UTC).isoformat()
    events: list[dict[str, object]] = []
    for i in range(EXECUTIONS):
        execution = {"id": f"x{i}", "agent_name": f"agent-{i % 3}", "triggered_by": "api"}
        for type_ in ("execution_started", "execution_completed"):
            events.append(
                {
                    "type": type_,
                    "event_id": f"{type_}-{i}",
                    "occurred_at": now,
                    "org": org,
                    "execution": {**execution, "duration_ms": 1000, "cost": 0.01}
                    if type_ == "execution_completed"
                    else execution,
                }
            )
    return events


async def publish(nats_url: str, subjects: Subjects, events: list[dict[str, object]]) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for i, event in enumerate(events):
            execution = event["execution"]
            assert isinstance(execution, dict)
            subject = subjects.event(str(event["org"]), execution["agent_name"], str(event["type"]))
            body = orjson.dumps(event)
            await js.publish(subject, body, headers={"Nats-Msg-Id": str(event["event_id"])})
            if i % 10 == 0:
                # A publisher retry past the duplicate window: the stream holds it twice.
                await js.publish(subject, body, headers={"Nats-Msg-Id": f"{event['event_id']}-r"})
    finally:
        await nc.close()


async def connect_client(notifier: Service, token: str) -> ClientConnection:
    ws = await websockets.connect(
        f"ws://127.0.0.1:{notifier.port}/ws",
        subprotocols=["bearer", token],  # type: ignore[list-item]
    )
    ready = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    assert ready["type"] == "ready", ready
    return ws


async def completed_ids(ws: ClientConnection, limit_s: float) -> set[str]:
    """Execution ids of the `execution_completed` frames received until all arrived."""
    seen: set[str] = set()
    deadline = time.monotonic() + limit_s
    while len(seen) < EXECUTIONS and time.monotonic() < deadline:
        try:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        except TimeoutError:
            break
        if frame.get("type") == "execution_completed":
            seen.add(frame["execution"]["id"])
    return seen


async def applied_events(client: httpx.AsyncClient, ingest: Service) -> dict[str, float]:
    text = (await client.get(f"{ingest.url}/metrics")).text
    outcomes: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "fleetwatch_ingest_events":
            for sample in family.samples:
                if sample.name == "fleetwatch_ingest_events_total":
                    outcome = sample.labels["outcome"]
                    outcomes[outcome] = outcomes.get(outcome, 0) + sample.value
    return outcomes


@contextlib.asynccontextmanager
async def fleet(env: dict[str, str]) -> AsyncIterator[tuple[list[Service], list[Service]]]:
    async with contextlib.AsyncExitStack() as stack:
        ingests = [await stack.enter_async_context(running("ingest", env)) for _ in range(2)]
        notifiers = [await stack.enter_async_context(running("notifier", env)) for _ in range(2)]
        yield ingests, notifiers


@pytest.mark.e2e
async def test_two_ingest_and_two_notifier_replicas(
    service_env: dict[str, str], subjects: Subjects, nats_url: str, database_url: str
) -> None:
    env = {**service_env, "FLEETWATCH_JWT_SECRET": SECRET, "INGEST_BATCH_SIZE": "10"}
    org = f"scale-{uuid.uuid4().hex[:8]}"
    token = mint_token(secret=SECRET, org=org, user="ops", role="admin", ttl_s=600)
    events = events_for(org)
    async with fleet(env) as (ingests, notifiers):
        clients = [await connect_client(n, token) for n in notifiers for _ in range(2)]
        try:
            receivers = [asyncio.create_task(completed_ids(ws, 45)) for ws in clients]
            await publish(nats_url, subjects, events)
            seen = await asyncio.gather(*receivers)
        finally:
            for ws in clients:
                await ws.close()
        expected = {f"x{i}" for i in range(EXECUTIONS)}
        for i, ids in enumerate(seen):
            assert ids == expected, f"client {i} missed {sorted(expected - ids)[:10]}"

        conn = await connect(database_url)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                done = await conn.fetchval(
                    "SELECT count(*) FROM executions WHERE org = $1 AND status = 'success'", org
                )
                if done == EXECUTIONS:
                    break
                await asyncio.sleep(0.2)
            assert done == EXECUTIONS
            assert await conn.fetchval("SELECT count(*) FROM executions WHERE org = $1", org) == (
                EXECUTIONS
            )
            # An execution's last event may be committed before others of the same batch run.
            await wait_for_count(
                conn, "SELECT count(*) FROM events WHERE org = $1", (org,), len(events), timeout=30
            )
            stored = await conn.fetch(
                "SELECT event_id, count(*) AS n FROM events WHERE org = $1 GROUP BY event_id", org
            )
            assert len(stored) == len(events)
            assert all(r["n"] == 1 for r in stored)
        finally:
            await conn.close()

        # A replica counts a batch once it committed it: the last ones may lag the rows.
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                per_replica = [await applied_events(client, i) for i in ingests]
                applied = sum(o.get("applied", 0) for o in per_replica)
                if applied >= len(events) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        # Each distinct event applied exactly once across both replicas.
        assert applied == len(events), per_replica
        # And each message of the stream handled by one replica only: replicas that each had a
        # consumer of their own would both take every message (the second as a duplicate), so
        # the rows and the count above would hold while nothing was shared out.
        in_stream = len(events) + len(events[::10])  # every tenth published twice
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                per_replica = [await applied_events(client, i) for i in ingests]
                handled = sum(sum(o.values()) for o in per_replica)
                if handled >= in_stream or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1)  # a message taken twice would be counted by now
            per_replica = [await applied_events(client, i) for i in ingests]
        assert sum(sum(o.values()) for o in per_replica) == in_stream, per_replica
