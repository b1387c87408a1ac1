"""A key revoked while its request is on the way (a slow upload, a wait for a turn) publishes
nothing: the gateway checks the key again before it publishes, against the real Postgres and
NATS. Before, it was checked once, before the body was read, and the batch went out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from services.ingest.apikeys import key_id_of, revoke_key
from shared.db import connect
from shared.subjects import Subjects
from tests.publisher.conftest import gateway_app, stream_messages

EVENT = orjson.dumps(
    {
        "type": "execution_started",
        "event_id": "revoked-1",
        "occurred_at": "2026-02-05T10:00:00Z",
        "execution": {"id": "r1", "agent_name": "a"},
    }
)


async def test_a_key_revoked_during_the_upload_publishes_nothing(
    nats_url: str, database_url: str, subjects: Subjects, org: str, api_key: str
) -> None:
    revoked, reading = asyncio.Event(), asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield EVENT[:10]
        # Asked for more: the gateway reads the body, so the key was checked.
        reading.set()
        await revoked.wait()
        yield EVENT[10:]

    async with gateway_app(nats_url, database_url, subjects) as (http, js):
        post = asyncio.create_task(
            http.post(
                "/api/events",
                content=slow_body(),
                headers={"X-API-Key": api_key, "Content-Type": "application/json"},
            )
        )
        await asyncio.wait_for(reading.wait(), 10)
        conn = await connect(database_url)
        try:
            key_id = key_id_of(api_key)
            assert key_id is not None
            assert await revoke_key(conn, org, key_id)
        finally:
            await conn.close()
        revoked.set()
        reply = await post
        assert reply.status_code == 401, reply.text
        assert reply.json()["detail"] == "the X-API-Key was revoked; nothing was published"
        assert await stream_messages(js, subjects.events_stream) == []
        # And the key stays refused at the door.
        again = await http.post("/api/events", content=EVENT, headers={"X-API-Key": api_key})
        assert again.status_code == 401
