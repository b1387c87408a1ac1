"""The gateway reads a body before its batch gets a turn, so it budgets the bytes of the bodies
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

from services.ingest.turns import Admission
from shared.subjects import Subjects
from tests.publisher.conftest import completed, gateway_app, make_api_key


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


MIB = 1024 * 1024


async def test_bodies_past_the_orgs_share_or_the_budget_are_busy_at_once(
    nats_url: str, database_url: str, streams: Subjects, api_key: str, org: str
) -> None:
    """A body of undeclared length (chunked) counts as the largest a body may be, 8 MiB. With
    a budget of 32 MiB: an org holds 16, and an org with nothing inside may use 8 more."""
    keys = {"a": api_key}
    orgs = {"a": org}
    for name in ("b", "c", "d"):
        orgs[name] = f"{org}-{name}"
        keys[name] = await make_api_key(database_url, orgs[name])
    options = {"body_budget": 32 * MIB, "concurrency": 1, "wait_s": 5}
    async with gateway_app(nats_url, database_url, streams, **options) as (http, js):
        held: list[_HeldBody] = []
        uploads = []

        async def hold(name: str) -> None:
            body = _HeldBody(_body(orgs[name], f"held-{name}{len(held)}"))
            held.append(body)
            uploads.append(asyncio.create_task(_post(http, keys[name], body)))
            await asyncio.wait_for(body.started.wait(), 10)

        async def small(name: str, run_id: str) -> int:
            reply = await asyncio.wait_for(_post(http, keys[name], _body(orgs[name], run_id)), 10)
            if reply.status_code == 503:
                assert reply.headers["Retry-After"] == "2"
                assert "busy" in reply.json()["detail"]
            return int(reply.status_code)

        await hold("a")
        await hold("a")
        assert await small("a", "a-more") == 503  # A's share (16 MiB) is full
        await hold("b")
        await hold("b")  # the budget (32 MiB) is spent
        assert await small("b", "b-more") == 503
        # An org with nothing inside still gets in, from the reserve (8 MiB) ...
        assert await small("c", "c-first") == 202
        await hold("c")
        # ... until that is spent too.
        assert await small("d", "d-first") == 503
        assert await _stored(js, streams) == 1

        for body in held:
            body.go.set()
        answers = await asyncio.wait_for(asyncio.gather(*uploads), 30)
        assert [a.status_code for a in answers] == [202] * 5, [a.text for a in answers]
        # Every byte came back: the refused batches go through when resent.
        for name, run_id in (("a", "a-more"), ("b", "b-more"), ("d", "d-first")):
            assert await small(name, run_id) == 202
        assert await _stored(js, streams) == 9


async def test_a_body_that_does_not_arrive_in_time_is_408_and_frees_its_slot(
    nats_url: str, database_url: str, streams: Subjects, api_key: str, org: str
) -> None:
    options = {"body_budget": 16 * MIB, "body_timeout": 0.3}
    async with gateway_app(nats_url, database_url, streams, **options) as (http, js):
        stalled = _HeldBody(_body(org, "slow"))
        answer = await asyncio.wait_for(_post(http, api_key, stalled), 10)
        assert answer.status_code == 408, answer.text
        assert "did not arrive" in answer.json()["detail"]
        stalled.go.set()
        after = await _post(http, api_key, _body(org, "next"))
        assert after.status_code == 202, after.text
        assert await _stored(js, streams) == 1


def test_admission_counts_bytes_per_org_and_in_all_with_a_reserve_for_newcomers() -> None:
    gate = Admission(total=10, per_org=6, reserve=3)
    assert gate.enter("a", 4)
    assert not gate.enter("a", 3)  # past a's share
    assert gate.enter("a", 2)
    assert gate.enter("b", 4)  # the budget is spent
    assert not gate.enter("b", 1)
    assert gate.enter("c", 3)  # nothing inside: the reserve
    assert not gate.enter("d", 1)
    gate.leave("a", 4)
    assert gate.enter("d", 1)
    gate.leave("c", 3)
    gate.leave("d", 1)
    gate.leave("a", 2)
    gate.leave("b", 4)
    assert gate.enter("e", 6)
    with pytest.raises(ValueError, match="positive"):
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
