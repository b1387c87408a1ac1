"""The HTTP gateway in-process against real NATS and Postgres: keys, validation, publishing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import orjson
import pytest
import pytest_asyncio
from fastapi import FastAPI
from nats.js import JetStreamContext

from services.ingest import apikeys
from services.ingest.apikeys import org_for_key, revoke_key
from services.ingest.gateway import create_gateway_router
from shared.db import connect, create_pool
from shared.events import EventType
from shared.publisher.envelope import component_event, execution_event
from shared.settings import CommonSettings
from shared.subjects import Subjects
from tests.publisher.conftest import gateway_app, stream_messages


@pytest_asyncio.fixture
async def client(
    nats_url: str, database_url: str, streams: Subjects
) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_app(nats_url, database_url, streams) as (http, _):
        yield http


def started(org: str, agent: str, run_id: str, **fields: Any) -> dict[str, Any]:
    return execution_event(
        EventType.EXECUTION_STARTED,
        org=org,
        execution={"id": run_id, "agent_name": agent, **fields},
    )


async def test_key_is_required_and_checked(
    client: httpx.AsyncClient, api_key: str, database_url: str, org: str
) -> None:
    event = started(org, "a", "r1")
    assert (await client.post("/api/events", json=event)).status_code == 401
    wrong = api_key[:-4] + "AAAA"
    assert (
        await client.post("/api/events", json=event, headers={"X-API-Key": wrong})
    ).status_code == 401
    response = await client.post("/api/events", json=event, headers={"X-API-Key": api_key})
    assert response.status_code == 202
    conn = await connect(database_url)
    try:
        row = await conn.fetchrow("SELECT key_hash FROM api_keys WHERE org = $1", org)
        assert row is not None
        assert api_key.split("_", 2)[2] not in row["key_hash"]
        assert await revoke_key(conn, org, api_key.split("_")[1])
    finally:
        await conn.close()
    response = await client.post("/api/events", json=event, headers={"X-API-Key": api_key})
    assert response.status_code == 401


async def test_bad_batch_is_refused_whole_with_index_and_field(
    client: httpx.AsyncClient, api_key: str, org: str, js: JetStreamContext, streams: Subjects
) -> None:
    good = started(org, "a", "r1")
    bad = started(org, "a", "r2", cost=-1)
    no_agent = component_event(
        EventType.COMPONENT_STARTED,
        org=org,
        agent="a",
        component={"execution_id": "r1", "node_id": "n"},
    )
    del no_agent["agent_name"]
    response = await client.post(
        "/api/events", json=[good, bad, no_agent, "nope"], headers={"X-API-Key": api_key}
    )
    assert response.status_code == 422
    errors = {(e["index"], e["field"]) for e in response.json()["errors"]}
    assert errors == {(1, "execution.cost"), (2, "agent_name"), (3, "event")}
    assert (await js.stream_info(streams.events_stream)).state.messages == 0

    foreign = started("other-org", "a", "r3")
    response = await client.post(
        "/api/events", json=[good, foreign], headers={"X-API-Key": api_key}
    )
    assert response.status_code == 403
    assert response.json()["errors"] == [
        {"index": 1, "field": "org", "message": f"this key publishes for org {org!r} only"}
    ]
    assert (await js.stream_info(streams.events_stream)).state.messages == 0


async def test_good_batch_as_array_ndjson_and_single(
    client: httpx.AsyncClient, api_key: str, org: str, js: JetStreamContext, streams: Subjects
) -> None:
    headers = {"X-API-Key": api_key}
    batch = [started(org, "a", f"r{i}") for i in range(3)]
    del batch[0]["org"]  # the key decides the org
    step = component_event(
        EventType.COMPONENT_STARTED,
        org=org,
        agent="a",
        component={"execution_id": "r1", "node_id": "n"},
    )
    response = await client.post("/api/events", json=[*batch, step], headers=headers)
    assert response.status_code == 202
    assert response.json() == {"accepted": 4, "duplicates": 0}
    ndjson = b"\n".join(orjson.dumps(e) for e in [started(org, "b", "r9"), batch[1]]) + b"\n"
    response = await client.post(
        "/api/events", content=ndjson, headers={**headers, "Content-Type": "application/x-ndjson"}
    )
    assert response.json() == {"accepted": 2, "duplicates": 1}
    response = await client.post("/api/events", json=started(org, "c", "r10"), headers=headers)
    assert response.status_code == 202
    messages = await stream_messages(js, streams.events_stream)
    assert [m[0] for m in messages] == [
        streams.event(org, "a", "execution_started"),
        streams.event(org, "a", "execution_started"),
        streams.event(org, "a", "execution_started"),
        streams.event(org, "a", "component_started"),
        streams.event(org, "b", "execution_started"),
        streams.event(org, "c", "execution_started"),
    ]
    assert all(m[1]["Nats-Msg-Id"] == f"{m[2]['org']}:{m[2]['event_id']}" for m in messages)
    assert messages[0][2]["org"] == org


async def test_unacknowledged_batch_answers_503_with_the_ids(
    nats_url: str, database_url: str, api_key: str, org: str, subjects: Subjects
) -> None:
    # No stream for this prefix: JetStream acknowledges nothing.
    pool = await create_pool(database_url, max_size=1)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    app = FastAPI()
    settings = CommonSettings(subject_prefix=subjects.prefix)
    app.include_router(create_gateway_router(settings, lambda: pool, lambda: js))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw"
        ) as http:
            batch = [started(org, "a", "r1"), started(org, "a", "r2")]
            response = await http.post("/api/events", json=batch, headers={"X-API-Key": api_key})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json()["not_acknowledged"] == [e["event_id"] for e in batch]
    finally:
        await nc.close()
        await pool.close()


async def test_apikey_command(
    database_url: str, org: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def cli(*args: str) -> tuple[int, str]:
        # main() runs its own event loop, as it does under `fleetwatch apikey`.
        code = await asyncio.to_thread(apikeys.main, ["--database-url", database_url, *args])
        return code, capsys.readouterr().out

    code, key = await cli("create", "--org", org, "--label", "cron")
    assert code == 0
    key = key.strip()
    assert key.startswith("fwk_")
    conn = await connect(database_url)
    try:
        assert await org_for_key(conn, key) == org
        key_id = key.split("_")[1]
        code, listing = await cli("list", "--org", org)
        assert listing.split("\t")[:2] == [key_id, "cron"]
        assert key.split("_", 2)[2] not in listing
        assert (await cli("revoke", "--org", "someone-else", key_id))[0] == 1
        assert (await cli("revoke", "--org", org, key_id))[0] == 0
        assert await org_for_key(conn, key) is None
        assert "revoked" in (await cli("list", "--org", org))[1]
    finally:
        await conn.close()
