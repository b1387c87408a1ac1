"""The HTTP gateway against real NATS and Postgres: refusals that used to be a 500 or a silent
loss (null `agent_name`, JSON too deep to publish or ingest, one `event_id` with two contents)
are 422 naming index and field, and nothing of the batch is published."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest_asyncio
from fastapi import FastAPI
from nats.js import JetStreamContext

from services.ingest.apikeys import create_key
from services.ingest.gateway import create_gateway_router
from shared.db import connect, create_pool
from shared.events import EventType
from shared.publisher.envelope import component_event, execution_event
from shared.settings import CommonSettings
from shared.subjects import Subjects
from tests.publisher.conftest import stream_messages


@pytest_asyncio.fixture
async def client(
    database_url: str, org: str, streams: Subjects, js: JetStreamContext
) -> AsyncIterator[httpx.AsyncClient]:
    conn = await connect(database_url)
    try:
        key = (await create_key(conn, org, "tests")).key
    finally:
        await conn.close()
    pool = await create_pool(database_url, max_size=2)
    app = FastAPI()
    settings = CommonSettings(subject_prefix=streams.prefix)
    app.include_router(create_gateway_router(settings, lambda: pool, lambda: js))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gw",
            headers={"X-API-Key": key},
        ) as http:
            yield http
    finally:
        await pool.close()


def started(run_id: str, **fields: Any) -> dict[str, Any]:
    """An execution_started event without `org` (the key decides it)."""
    event = execution_event(
        EventType.EXECUTION_STARTED,
        org="placeholder",
        event_id=f"e-{run_id}",
        execution={"id": run_id, "agent_name": "a", **fields},
    )
    del event["org"]
    return event


def refused(response: httpx.Response) -> set[tuple[int, str]]:
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "batch refused; nothing was published"
    return {(e["index"], e["field"]) for e in response.json()["errors"]}


async def stored(js: JetStreamContext, streams: Subjects) -> int:
    return (await js.stream_info(streams.events_stream)).state.messages


async def test_component_event_with_null_agent_name_is_422_naming_it(
    client: httpx.AsyncClient, js: JetStreamContext, streams: Subjects
) -> None:
    step = component_event(
        EventType.COMPONENT_STARTED,
        org="placeholder",
        agent="a",
        component={"execution_id": "r1", "node_id": "n"},
    )
    del step["org"]
    step["agent_name"] = None
    response = await client.post("/api/events", json=[started("r1"), step])
    assert refused(response) == {(1, "agent_name")}
    assert await stored(js, streams) == 0


def nested(depth: int) -> bytes:
    """A JSON list `depth` levels deep."""
    return b"[" * depth + b"]" * depth


async def test_json_too_deep_is_422_naming_the_field(
    client: httpx.AsyncClient, js: JetStreamContext, streams: Subjects
) -> None:
    good = orjson.dumps(started("r0"))
    # Deeper than orjson writes (254 levels; it reads 1024), as one array.
    too_deep_to_write = orjson.dumps(started("r1", tool_calls="HERE")).replace(
        b'"HERE"', nested(300)
    )
    body = b"[" + good + b"," + too_deep_to_write + b"]"
    response = await client.post(
        "/api/events", content=body, headers={"Content-Type": "application/json"}
    )
    assert refused(response) == {(1, "execution.tool_calls")}
    # Writable, but deeper than ingest's parser reads (~200 levels): named the same way.
    too_deep_to_read = too_deep_to_write.replace(nested(300), nested(230))
    # And a component's free JSON near orjson's read limit, as NDJSON.
    step = component_event(
        EventType.COMPONENT_COMPLETED,
        org="placeholder",
        agent="a",
        component={"execution_id": "r0", "node_id": "n", "output": "HERE"},
    )
    del step["org"]
    output = b'{"a":' * 1000 + b"1" + b"}" * 1000
    deep_step = orjson.dumps(step).replace(b'"HERE"', output)
    ndjson = b"\n".join([good, too_deep_to_read, deep_step]) + b"\n"
    response = await client.post(
        "/api/events", content=ndjson, headers={"Content-Type": "application/x-ndjson"}
    )
    assert refused(response) == {(1, "execution.tool_calls"), (2, "component.output")}
    assert await stored(js, streams) == 0


async def test_one_event_id_with_two_contents_in_a_batch_is_422(
    client: httpx.AsyncClient, js: JetStreamContext, streams: Subjects
) -> None:
    first = started("r1")
    other = {**started("r1", message="changed"), "event_id": first["event_id"]}
    response = await client.post("/api/events", json=[first, started("r2"), other])
    assert refused(response) == {(2, "event_id")}
    [error] = response.json()["errors"]
    assert error["message"].startswith("event 0 has this event_id with other content")
    # JetStream would have kept only the first and answered the second as a duplicate.
    assert await stored(js, streams) == 0


async def test_a_byte_identical_repeat_in_a_batch_is_a_duplicate(
    client: httpx.AsyncClient, js: JetStreamContext, streams: Subjects
) -> None:
    event = started("r1")
    response = await client.post("/api/events", json=[event, started("r2"), event])
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 3, "duplicates": 1}
    messages = await stream_messages(js, streams.events_stream)
    assert sorted(m[2]["event_id"] for m in messages) == ["e-r1", "e-r2"]


async def test_event_ids_a_header_would_merge_are_each_stored(
    client: httpx.AsyncClient, js: JetStreamContext, streams: Subjects
) -> None:
    """`e1` and `e1 `, `a\\nb` and `a b` are four ids to ingest; as raw `Nats-Msg-Id` header
    values nats-py made them two (it strips values and turns CR/LF into spaces), and JetStream
    dropped the second of each pair as a repeat."""
    ids = ["e1", "e1 ", "a\nb", "a b"]
    events = [{**started(f"r{i}"), "event_id": event_id} for i, event_id in enumerate(ids)]
    response = await client.post("/api/events", json=events)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 4, "duplicates": 0}
    messages = await stream_messages(js, streams.events_stream)
    assert sorted(m[2]["event_id"] for m in messages) == sorted(ids)
    # The same batch again: every one of them is now a repeat JetStream drops.
    again = await client.post("/api/events", json=events)
    assert again.json() == {"accepted": 4, "duplicates": 4}
