"""An export holds a bounded number of bytes in memory, however large its rows.

A message and a response may each hold 64 KiB: a batch of `QUERY_EXPORT_BATCH_SIZE` (2,000)
such rows is 256 MB of text before the CSV copy of it, more than the pod's memory limit. A
batch stops at `QUERY_EXPORT_BATCH_BYTES` of text (at least one row), and the next one goes
on from its last row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.query.app import create_app
from shared.db import connect
from tests.query.helpers import add_org, insert, make_rows, settings_for, token

ORG = "qx-org"
ADMIN = token(ORG, "ada", "admin")
BIG = 64 * 1024
BUDGET = 512 * 1024


@pytest_asyncio.fixture(scope="module")
async def rows(database_url: str) -> list[dict[str, Any]]:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        data = make_rows(ORG, ("a1",), 40, seed=21)
        for i, row in enumerate(data):
            if i % 4:  # long texts, with a few short rows among them
                row.update(message=f"m{i}" + "m" * BIG, response=f"r{i}" + "r" * BIG)
        await insert(conn, data)
        return data
    finally:
        await conn.close()


class Chunks:
    """The app, noting the size of each body chunk it sends (httpx's ASGI transport joins
    them before the test could see them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.sizes: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def noted(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                self.sizes.append(len(message["body"]))
            await send(message)

        await self.app(scope, receive, noted)


@pytest_asyncio.fixture(scope="module")
async def app(database_url: str, nats_url: str, rows: list[dict[str, Any]]) -> AsyncIterator[Any]:
    settings = settings_for(
        database_url, nats_url, export_batch_size=1000, export_batch_bytes=BUDGET
    )
    found = create_app(settings)
    async with found.router.lifespan_context(found):
        yield found


async def _export(app: Any, params: dict[str, str]) -> tuple[bytes, list[int]]:
    noting = Chunks(app)
    transport = httpx.ASGITransport(app=noting)
    async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
        reply = await client.get("/api/executions/export", params=params, headers=ADMIN)
    assert reply.status_code == 200, reply.text
    return reply.content, noting.sizes


def _newest_first(rows: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(rows, key=lambda r: (r["started_at"] or r["first_seen_at"], r["id"]))
    return [r["id"] for r in reversed(ordered)]


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
async def test_export_batches_are_bounded_by_bytes(
    app: Any, rows: list[dict[str, Any]], fmt: str
) -> None:
    body, sizes = await _export(app, {"format": fmt})
    one_row = 2 * BIG + 4096  # a batch may pass the budget by its last row
    assert max(sizes) <= BUDGET + one_row, sizes
    text = body.decode()
    if fmt == "csv":
        exported = [r["id"] for r in csv.DictReader(io.StringIO(text, newline=""))]
    else:
        exported = [orjson.loads(line)["id"] for line in text.splitlines()]
    assert exported == _newest_first(rows)  # every row once, in list order


async def test_search_export_is_bounded_too(app: Any, rows: list[dict[str, Any]]) -> None:
    body, sizes = await _export(app, {"format": "ndjson", "search": "mmmm"})  # a common term
    assert max(sizes) <= BUDGET + 2 * BIG + 4096, sizes
    exported = [orjson.loads(line)["id"] for line in body.splitlines()]
    long_ones = [r for r in rows if len(r["message"]) > BIG]
    assert exported == _newest_first(long_ones)
