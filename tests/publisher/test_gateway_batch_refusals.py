"""The HTTP gateway against real NATS and Postgres: refusals that used to be a 500 or a silent
loss (null `agent_name`, JSON too deep to publish or ingest, one `event_id` with two contents)
are 422 naming index and field, and nothing of the batch is published."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from fastapi import FastAPI
from nats.js import JetStreamContext

from services.ingest.apikeys import create_key
from services.ingest.gateway import MAX_EVENTS, MAX_LISTED_ERRORS, create_gateway_router
from services.ingest.gateway_body import TooManyEventsError, split_body
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


async def test_a_flood_of_events_is_413_without_parsing_the_flood(
    client: httpx.AsyncClient, js: JetStreamContext, streams: Subjects
) -> None:
    """The whole body was split and parsed, and an error built for each bad line, before the
    1000-event limit was checked: 8 MiB of `x` lines held ingest's event loop for 13 s and
    took ~1 GB. Splitting now stops past the limit, for NDJSON lines and array items alike."""
    floods = {
        "application/x-ndjson": b"x\n" * (1 << 20),
        "application/json": b"[" + b",".join([b'{"a":1}'] * 500_000) + b"]",
    }
    for content_type, body in floods.items():
        tracemalloc.start()
        try:
            response = await client.post(
                "/api/events", content=body, headers={"Content-Type": content_type}
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert response.status_code == 413, response.text[:300]
        assert response.json()["detail"] == f"more than {MAX_EVENTS} events in one request"
        # The body and its copies on the way in; parsing it all took 100 MB or more.
        assert peak < 5 * len(body), (content_type, peak)
    assert await stored(js, streams) == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_the_event_limit_counts_items_exactly(content_type: str) -> None:
    """At the limit a body is split whole; one event more is refused before it is parsed."""
    event = orjson.dumps(started("r1", tool_calls=[{"tool": "grep", "args": {"q": "[,]"}}]))

    def body(count: int) -> bytes:
        if content_type == "application/json":
            return b"[\n" + b",\n".join([event] * count) + b"\n]"
        return b"\n\n".join([event] * count) + b"\n"

    items, errors = split_body(body(MAX_EVENTS), content_type, MAX_EVENTS)
    assert (len(items), errors) == (MAX_EVENTS, [])
    with pytest.raises(TooManyEventsError):
        split_body(body(MAX_EVENTS + 1), content_type, MAX_EVENTS)
    # Items too deeply nested to count cheaply are parsed, and counted, as before.
    deep = b"[" + b",".join([b"[" * 12 + b"]" * 12] * (MAX_EVENTS + 1)) + b"]"
    with pytest.raises(TooManyEventsError):
        split_body(deep, "application/json", MAX_EVENTS)


async def test_a_refused_batch_lists_its_first_errors_and_counts_them_all(
    client: httpx.AsyncClient, js: JetStreamContext, streams: Subjects
) -> None:
    """Every error of every event was listed: a thousand bad events made an answer of
    megabytes. An NDJSON line that is not JSON was also reported twice."""
    batch = [started(f"r{i}", cost=-1) for i in range(300)]
    response = await client.post("/api/events", json=batch)
    assert refused(response) == {(i, "execution.cost") for i in range(MAX_LISTED_ERRORS)}
    assert [e["index"] for e in response.json()["errors"]] == list(range(MAX_LISTED_ERRORS))
    assert response.json()["error_count"] == 300
    ndjson = b"\n".join([orjson.dumps(started("r1")), b"x", orjson.dumps(started("r2"))])
    response = await client.post(
        "/api/events", content=ndjson, headers={"Content-Type": "application/x-ndjson"}
    )
    assert refused(response) == {(1, "event")}
    assert response.json()["error_count"] == 1
    assert await stored(js, streams) == 0


async def test_a_body_of_millions_of_tiny_values_is_413_before_it_is_parsed(
    client: httpx.AsyncClient, js: JetStreamContext, streams: Subjects
) -> None:
    """One event whose tool calls are 8 MiB of `[],` (2.7 million lists) or of `7,` with one
    integer past 64 bits (read twice, then walked): parsed and checked, such a body took ingest
    from 68 to 755 MB and held its event loop for 8 s. Now refused from a count of its
    brackets and commas, nothing parsed, nothing published."""
    head = orjson.dumps(started("r1"))[:-2] + b',"tool_calls":'
    bodies = {
        "arrays": head + b"[" + b"[]," * 2_700_000 + b"[]]}}",
        "numbers": head + b"[" + b"7," * 4_000_000 + b"123456789012345678901234]}}",
    }
    for name, body in bodies.items():
        tracemalloc.start()
        try:
            response = await client.post(
                "/api/events", content=body, headers={"Content-Type": "application/json"}
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert response.status_code == 413, (name, response.text[:300])
        assert "nothing was published, split it" in response.json()["detail"], name
        assert peak < 5 * len(body), (name, peak)
    assert await stored(js, streams) == 0


def test_the_value_limits_leave_a_thousand_events_with_tool_calls_alone() -> None:
    """The counts are bounds from above (a bracket or comma in text counts too): a full batch
    of ordinary events with tool calls and prose is far inside them."""
    prose = "Checked the invoice, the order, and the refund [twice], then replied. " * 20
    calls = [{"tool": "search", "args": {"q": "x", "n": 3}, "result": {"hits": [1, 2, 3]}}] * 10
    event = orjson.dumps(started("r1", message=prose, tool_calls=calls))
    body = b"[" + b",".join([event] * MAX_EVENTS) + b"]"
    items, errors = split_body(body, "application/json", MAX_EVENTS)
    assert (len(items), errors) == (MAX_EVENTS, [])
    # Events with an embedding each in a tool call's result, as many as 8 MiB holds.
    embedding = [round(0.001 * i - 0.7, 4) for i in range(1536)]
    event = orjson.dumps(started("r1", tool_calls=[{"tool": "embed", "result": embedding}]))
    count = (8 * 1024 * 1024 - 2) // (len(event) + 1)
    body = b"[" + b",".join([event] * count) + b"]"
    items, errors = split_body(body, "application/json", MAX_EVENTS)
    assert (len(items), errors) == (count, [])
