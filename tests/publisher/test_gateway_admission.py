"""The gateway reads a body before its batch gets a turn, so it bounds how many requests are
inside at once, per org and in all: one tenant sending large batches in parallel held every
body in memory while they waited (~1 GiB at 128 bodies of 8 MiB), enough to have ingest,
the only writer, killed for every tenant. Real NATS and Postgres, the gateway in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from services.ingest.apikeys import create_key
from services.ingest.turns import Admission
from shared.db import connect
from shared.subjects import Subjects
from tests.publisher.conftest import completed, gateway_app


async def _key(database_url: str, org: str) -> str:
    conn = await connect(database_url)
    try:
        return (await create_key(conn, org, "tests")).key
    finally:
        await conn.close()


class _HeldBody:
    """A request body that sends its first half, then waits to be let go (a large upload
    still arriving)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.started = asyncio.Event()
        self.go = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        half = len(self.body) // 2
        yield self.body[:half]
        self.started.set()
        await self.go.wait()
        yield self.body[half:]


def _body(org: str, run_id: str) -> bytes:
    return orjson.dumps([completed(org, run_id)])


def _post(http: httpx.AsyncClient, key: str, content: Any) -> Any:
    return http.post(
        "/api/events",
        content=content,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )


async def _stored(js: Any, streams: Subjects) -> int:
    info = await js.stream_info(streams.events_stream)
    return int(info.state.messages)


async def test_requests_past_the_orgs_and_the_processs_admission_are_busy_at_once(
    nats_url: str, database_url: str, streams: Subjects, api_key: str, org: str
) -> None:
    other = f"{org}-b"
    other_key = await _key(database_url, other)
    options = {"admit_per_org": 2, "admit_total": 3, "concurrency": 1, "wait_s": 5}
    async with gateway_app(nats_url, database_url, streams, **options) as (http, js):
        held = [_HeldBody(_body(org, f"held{n}")) for n in range(2)]
        uploads = [asyncio.create_task(_post(http, api_key, h)) for h in held]
        await asyncio.wait_for(asyncio.gather(*(h.started.wait() for h in held)), 10)

        # The org has two requests inside: a third is 503 at once, its body unread.
        third = await asyncio.wait_for(_post(http, api_key, _body(org, "third")), 5)
        assert third.status_code == 503, third.text
        assert third.headers["Retry-After"] == "2"
        assert "busy" in third.json()["detail"]

        # Another org still gets in (the process holds 2 of 3) and is not kept waiting.
        b_held = _HeldBody(_body(other, "b-held"))
        b_upload = asyncio.create_task(_post(http, other_key, b_held))
        await asyncio.wait_for(b_held.started.wait(), 10)
        # Now the process is full (3): the other org's next request is busy too.
        b_more = await asyncio.wait_for(_post(http, other_key, _body(other, "b-more")), 5)
        assert b_more.status_code == 503, b_more.text
        assert await _stored(js, streams) == 0

        for h in (*held, b_held):
            h.go.set()
        answers = await asyncio.wait_for(asyncio.gather(*uploads, b_upload), 30)
        assert [a.status_code for a in answers] == [202, 202, 202], [a.text for a in answers]
        assert await _stored(js, streams) == 3

        # Every slot came back: the refused batches go through when resent.
        again = await _post(http, api_key, _body(org, "third"))
        assert again.status_code == 202, again.text
        again_b = await _post(http, other_key, _body(other, "b-more"))
        assert again_b.status_code == 202, again_b.text
        assert await _stored(js, streams) == 5


async def test_a_body_that_does_not_arrive_in_time_is_408_and_frees_its_slot(
    nats_url: str, database_url: str, streams: Subjects, api_key: str, org: str
) -> None:
    options = {"admit_per_org": 1, "admit_total": 1, "body_timeout": 0.3}
    async with gateway_app(nats_url, database_url, streams, **options) as (http, js):
        stalled = _HeldBody(_body(org, "slow"))
        answer = await asyncio.wait_for(_post(http, api_key, stalled), 10)
        assert answer.status_code == 408, answer.text
        assert "did not arrive" in answer.json()["detail"]
        stalled.go.set()
        after = await _post(http, api_key, _body(org, "next"))
        assert after.status_code == 202, after.text
        assert await _stored(js, streams) == 1


def test_admission_counts_per_org_and_in_all() -> None:
    gate = Admission(total=3, per_org=2)
    assert gate.enter("a")
    assert gate.enter("a")
    assert not gate.enter("a")
    assert gate.enter("b")
    assert not gate.enter("c")  # the process is full
    gate.leave("a")
    assert gate.enter("c")
    assert not gate.enter("a")
    gate.leave("b")
    assert gate.enter("a")
    with pytest.raises(ValueError, match="at least 1"):
        Admission(total=0, per_org=1)


class _CountingPool:
    """The real pool, counting the key lookups running on it at once."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.running = 0
        self.most = 0

    async def fetchrow(self, *args: Any) -> Any:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.05)  # a busy database: lookups overlap
            return await self._pool.fetchrow(*args)
        finally:
            self.running -= 1


async def test_made_up_keys_take_at_most_two_connections_of_the_consumers_pool(
    database_url: str, streams: Subjects, api_key: str, org: str
) -> None:
    from fastapi import FastAPI

    from services.ingest.gateway import create_gateway_router
    from shared.db import create_pool
    from shared.settings import CommonSettings

    pool = await create_pool(database_url, max_size=4)
    counting = _CountingPool(pool)
    app = FastAPI()
    settings = CommonSettings(subject_prefix=streams.prefix)
    app.include_router(create_gateway_router(settings, lambda: counting, lambda: None))  # type: ignore[arg-type,return-value]
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=30
        ) as http:
            fakes = [f"fwk_{n:016x}_made-up" for n in range(12)]
            answers = await asyncio.gather(*(_post(http, key, b"[]") for key in fakes))
            assert {a.status_code for a in answers} == {401}
            assert counting.most == 2
            # A real key still gets through (its body is refused: nothing to publish).
            real = await _post(http, api_key, b"[]")
            assert real.status_code == 422, real.text
    finally:
        await pool.close()
