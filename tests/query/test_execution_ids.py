"""Execution ids with `/` and other reserved characters: detail, log and terminate reach them
when the client percent-encodes the id, and the fixed paths still answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import nats
import orjson
import pytest_asyncio

from shared.db import connect
from shared.subjects import Subjects
from tests.query.helpers import (
    add_agent,
    add_org,
    client_for,
    insert,
    make_rows,
    settings_for,
    token,
    wait_nats,
)

ORG = "qid-org"
ADMIN = token(ORG, "ada", "admin")
SLASHED = "wf/run-1"
RESERVED = "q?x#y%z &+;=é/.."
#: `a/log` is a whole id; `a` has a log: `.../a%2Flog` is a detail, `.../a/log` the log of `a`.
IDS = (SLASHED, RESERVED, "a/log", "a", "a/terminate")


def path(execution_id: str, tail: str = "") -> str:
    return f"/api/executions/{quote(execution_id, safe='')}{tail}"


@pytest_asyncio.fixture(scope="module")
async def seeded(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await add_agent(conn, ORG, "worker")
        rows = make_rows(ORG, ("worker",), len(IDS), seed=5)
        for row, execution_id in zip(rows, IDS, strict=True):
            row.update(id=execution_id, status="running", execution_log=f"log of {execution_id}")
        await insert(conn, rows)
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def client(
    database_url: str, nats_url: str, subjects: Subjects, seeded: None
) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(database_url, nats_url, subjects.prefix, terminate_timeout_s=2)
    async with client_for(settings) as found:
        yield found


async def test_listed_ids_with_reserved_characters_have_detail_and_log(
    client: httpx.AsyncClient,
) -> None:
    listed = (await client.get("/api/executions", headers=ADMIN)).json()["executions"]
    assert {e["id"] for e in listed} == set(IDS)
    for execution_id in IDS:
        reply = await client.get(path(execution_id), headers=ADMIN)
        assert reply.status_code == 200, (execution_id, reply.text)
        body = reply.json()
        assert body["id"] == execution_id
        assert body["log_url"] == path(execution_id, "/log")
        log = await client.get(body["log_url"], headers=ADMIN)
        assert log.status_code == 200, (execution_id, log.text)
        assert log.text == f"log of {execution_id}"
    # Unencoded, a `/` separates segments: the log of `a`, not the execution `a/log`.
    assert (await client.get("/api/executions/a/log", headers=ADMIN)).text == "log of a"
    assert (await client.get("/api/executions/wf/run-1", headers=ADMIN)).status_code == 404
    assert (await client.get(path("wf/run-2"), headers=ADMIN)).status_code == 404


async def test_fixed_paths_still_answer(client: httpx.AsyncClient) -> None:
    for fixed in ("stats", "timeline", "export"):
        reply = await client.get(f"/api/executions/{fixed}", headers=ADMIN)
        assert reply.status_code == 200, (fixed, reply.text)
    stats = (await client.get("/api/executions/stats", headers=ADMIN)).json()
    assert "id" not in stats


async def test_terminate_reaches_the_agent_with_the_whole_id(
    client: httpx.AsyncClient, nats_url: str, subjects: Subjects
) -> None:
    await wait_nats(client)
    nc = await nats.connect(nats_url)
    got: list[dict[str, Any]] = []

    async def agent(msg: Any) -> None:
        got.append(orjson.loads(msg.data))
        await msg.respond(b'{"accepted": true, "reason": null}')

    await nc.subscribe(subjects.terminate(ORG, "worker"), cb=agent)
    await nc.flush()
    try:
        for execution_id in (SLASHED, "a/terminate"):
            reply = await client.post(path(execution_id, "/terminate"), headers=ADMIN)
            assert reply.status_code == 200, (execution_id, reply.text)
            assert reply.json()["execution_id"] == execution_id
        assert [g["execution_id"] for g in got] == [SLASHED, "a/terminate"]
    finally:
        await nc.close()
