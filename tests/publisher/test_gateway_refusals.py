"""The gateway refuses what ingest would dead-letter, and says 503 when keys cannot be checked.

Against real NATS and Postgres; the database outage is played by a proxy between the
gateway's pool and the real server (the shared server is never stopped).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import nats
import orjson
import pytest_asyncio
from nats.js import JetStreamContext

from shared.db import create_pool
from shared.events import MAX_EVENT_BYTES, Event, EventType
from shared.publisher.envelope import execution_event
from shared.subjects import Subjects
from shared.validation import validate
from tests.chaos.infra import proxy_to
from tests.publisher.conftest import gateway_for, stream_messages


@pytest_asyncio.fixture
async def client(
    nats_url: str, database_url: str, streams: Subjects, api_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    pool = await create_pool(database_url, max_size=2)
    nc = await nats.connect(nats_url)
    try:
        async with gateway_for(pool, nc.jetstream(), streams) as http:
            http.headers["X-API-Key"] = api_key
            yield http
    finally:
        await nc.close()
        await pool.close()


def started(run_id: str, **fields: Any) -> dict[str, Any]:
    """An execution_started event without `org` (the key decides it)."""
    event = execution_event(
        EventType.EXECUTION_STARTED,
        org="placeholder",
        execution={"id": run_id, "agent_name": "a", **fields},
    )
    del event["org"]
    return event


def padded(run_id: str, org: str, published_size: int) -> dict[str, Any]:
    """An event whose bytes as the gateway publishes them (org added last) are that long."""
    event = started(run_id, execution_log="", tool_calls=[""])
    room = published_size - len(orjson.dumps({**event, "org": org}))
    log = min(room, 500_000)
    event["execution"]["execution_log"] = "l" * log
    event["execution"]["tool_calls"] = ["t" * (room - log)]
    assert len(orjson.dumps({**event, "org": org})) == published_size
    return event


async def test_nul_in_a_string_or_key_is_refused_naming_the_field(
    client: httpx.AsyncClient, js: JetStreamContext, streams: Subjects
) -> None:
    batch = [
        started("r1"),
        started("r2", message="before\x00after"),
        started("r3", tool_calls=[{"na\x00me": 1}]),
    ]
    response = await client.post("/api/events", json=batch)
    assert response.status_code == 422, response.text
    errors = {(e["index"], e["field"]) for e in response.json()["errors"]}
    assert errors == {(1, "execution.message"), (2, "execution.tool_calls.0.na\x00me")}
    assert all("NUL" in e["message"] for e in response.json()["errors"])
    assert (await js.stream_info(streams.events_stream)).state.messages == 0
    # A literal backslash followed by "u0000" is text, not NUL: accepted, and ingest agrees.
    response = await client.post("/api/events", json=[started("r4", message="C:\\u0000")])
    assert response.status_code == 202, response.text
    [(subject, _, body)] = await stream_messages(js, streams.events_stream)
    assert isinstance(validate(streams, subject, orjson.dumps(body)), Event)


async def test_size_is_measured_as_published_with_the_org(
    client: httpx.AsyncClient, org: str, js: JetStreamContext, streams: Subjects
) -> None:
    # Under the limit as sent, over it once the key's org is added: ingest would say too_large.
    over = padded("big-1", org, MAX_EVENT_BYTES + 1)
    assert len(orjson.dumps(over)) < MAX_EVENT_BYTES
    response = await client.post("/api/events", json=over)
    assert response.status_code == 422, response.text
    assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [(0, "event")]
    assert (await js.stream_info(streams.events_stream)).state.messages == 0
    # Exactly at the limit as published: accepted, and the stored bytes pass ingest's check.
    response = await client.post("/api/events", json=padded("big-2", org, MAX_EVENT_BYTES))
    assert response.status_code == 202, response.text
    msg = await js.get_msg(streams.events_stream, 1)
    assert len(msg.data or b"") == MAX_EVENT_BYTES
    assert isinstance(validate(streams, msg.subject or "", msg.data or b""), Event)


async def test_null_or_malformed_org_is_invalid_not_foreign(
    client: httpx.AsyncClient, js: JetStreamContext, streams: Subjects
) -> None:
    batch = [{**started("r1"), "org": None}, {**started("r2"), "org": "not an org!"}]
    response = await client.post("/api/events", json=batch)
    assert response.status_code == 422, response.text
    assert {(e["index"], e["field"]) for e in response.json()["errors"]} == {(0, "org"), (1, "org")}
    assert (await js.stream_info(streams.events_stream)).state.messages == 0


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    return urlunsplit(
        parts._replace(netloc=f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}")
    )


async def test_database_outage_during_key_lookup_is_503_with_retry_after(
    nats_url: str, database_url: str, streams: Subjects, api_key: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        async with proxy_to(urlsplit(database_url).port or 5432) as proxy:
            pool = await create_pool(_through(database_url, proxy.port), max_size=1)
            try:
                # Long enough for a fresh connection through the proxy after heal() on a loaded
                # machine; the cut lookup still hangs past it.
                async with gateway_for(
                    pool, nc.jetstream(), streams, key_lookup_timeout=2.0
                ) as http:
                    http.headers["X-API-Key"] = api_key

                    async def post(run_id: str) -> httpx.Response:
                        return await http.post("/api/events", json=started(run_id))

                    assert (await post("r1")).status_code == 202
                    proxy.cut()  # unreachable: connections reset, new ones hang
                    down = await post("r2")
                    assert down.status_code == 503, down.text
                    assert down.headers["Retry-After"] == "5"
                    proxy.heal()
                    assert (await post("r3")).status_code == 202
                    await proxy.close()  # refused: nothing listens any more
                    refused = await post("r4")
                    assert refused.status_code == 503, refused.text
                    assert refused.headers["Retry-After"] == "5"
            finally:
                pool.terminate()
    finally:
        await nc.close()
