"""Request bodies (`PUT /api/agents/{name}`, `POST .../terminate`): read only after the caller
is authenticated, at most 64 KiB (declared or chunked), and text that JSON can carry but
Postgres and NATS cannot (a lone UTF-16 surrogate) is a 422 naming its field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from services.query.body import MAX_BODY_BYTES
from shared.db import connect
from tests.query.helpers import (
    add_agent,
    add_org,
    client_for,
    insert,
    make_rows,
    settings_for,
    token,
)

ORG = "qb-org"
ADMIN = token(ORG, "ada", "admin")
USER = token(ORG, "uma", "user")
JSON = {"content-type": "application/json"}
AGENT = "/api/agents/a1"
TERMINATE = "/api/executions/qb-running/terminate"
BODIES = [("PUT", AGENT), ("POST", TERMINATE)]
CHUNK = 64 * 1024


@pytest_asyncio.fixture(scope="module")
async def client(database_url: str, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await add_agent(conn, ORG, "a1", owner="olga")
        rows = make_rows(ORG, ("a1",), 3, seed=6)
        rows[0].update(id="qb-running", status="running")
        await insert(conn, rows)
    finally:
        await conn.close()
    async with client_for(settings_for(database_url, nats_url)) as found:
        yield found


class Stream:
    """A chunked request body (no Content-Length) that counts what the server pulled."""

    def __init__(self, head: bytes, total: int, tail: bytes = b"") -> None:
        self.head, self.total, self.tail = head, total, tail
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.sent = len(self.head)
        yield self.head
        padding = b" " * CHUNK
        while self.sent < self.total:
            self.sent += CHUNK
            yield padding
        self.sent += len(self.tail)
        yield self.tail


def fields(reply: httpx.Response) -> list[Any]:
    assert reply.status_code == 422, (reply.status_code, reply.text[:300])
    return [d["loc"] for d in reply.json()["detail"]]


@pytest.mark.parametrize(("method", "path"), BODIES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer not-a-token"}, {"authorization": "Basic eDp5"}],
    ids=["none", "bad", "basic"],
)
async def test_no_valid_token_is_401_whatever_the_body(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> None:
    for body in (b"{bad", b'{"display_name": 1, "reason": []}', b"[" * 10_000):
        reply = await client.request(method, path, content=body, headers={**JSON, **headers})
        assert reply.status_code == 401, (body[:20], reply.status_code, reply.text[:200])
        assert reply.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), BODIES)
async def test_an_anonymous_body_is_not_read(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    body = Stream(b'{"display_name": "', 32 * 1024 * 1024, b'"}')
    reply = await client.request(method, path, content=body, headers=JSON)
    assert reply.status_code == 401, reply.text[:200]
    assert body.sent <= CHUNK


@pytest.mark.parametrize(("method", "path"), BODIES)
async def test_a_body_past_64_kib_is_413_declared_or_chunked(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    # Valid JSON all the same: padding the object with whitespace.
    padded = b'{"reason": null' + b" " * MAX_BODY_BYTES + b"}"
    if method == "PUT":
        padded = padded.replace(b'"reason": null', b'"display_name": "Padded"')
    declared = await client.request(method, path, content=padded, headers={**JSON, **ADMIN})
    assert declared.status_code == 413, declared.text[:200]
    assert str(MAX_BODY_BYTES) in declared.json()["detail"]
    stream = Stream(padded[:-1], 8 * 1024 * 1024, b"}")
    chunked = await client.request(method, path, content=stream, headers={**JSON, **ADMIN})
    assert chunked.status_code == 413, chunked.text[:200]
    assert stream.sent <= MAX_BODY_BYTES + 2 * CHUNK
    # Just under the cap it is read and applied.
    fits = padded[: MAX_BODY_BYTES - 200] + b"}"
    reply = await client.request(method, path, content=fits, headers={**JSON, **ADMIN})
    assert reply.status_code in (200, 503), reply.text[:200]  # terminate: no agent listens
    if method == "PUT":
        assert reply.json()["display_name"] == "Padded"


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("PUT", AGENT, "display_name"),
        ("PUT", AGENT, "owner"),
        ("PUT", AGENT, "project"),
        ("POST", TERMINATE, "reason"),
    ],
)
async def test_a_lone_surrogate_is_422_naming_the_field(
    client: httpx.AsyncClient, method: str, path: str, field: str
) -> None:
    for text in ("\\ud800", "x\\udfffy", "\\udc00\\ud800"):
        body = f'{{"{field}": "{text}"}}'.encode()
        reply = await client.request(method, path, content=body, headers={**JSON, **ADMIN})
        assert fields(reply) == [["body", field]]
        assert "surrogate" in reply.json()["detail"][0]["msg"]


async def test_surrogate_pairs_are_whole_characters_and_a_lone_one_in_a_key_is_422(
    client: httpx.AsyncClient,
) -> None:
    pair = b'{"display_name": "smile \\ud83d\\ude00"}'
    reply = await client.put(AGENT, content=pair, headers={**JSON, **ADMIN})
    assert reply.status_code == 200, reply.text
    assert reply.json()["display_name"] == "smile \U0001f600"
    # A key holding a lone surrogate: the body is refused (pydantic reads no such key), no 500.
    reply = await client.put(AGENT, content=b'{"\\ud800": 1}', headers={**JSON, **ADMIN})
    assert fields(reply) == [["body"]]


async def test_bad_bodies_from_a_valid_caller_are_4xx_naming_the_body(
    client: httpx.AsyncClient,
) -> None:
    for method, path in BODIES:
        for body in (b"{bad", b"\xff\xfe", b"[" * 20_000, b"[1]"):
            reply = await client.request(method, path, content=body, headers={**JSON, **ADMIN})
            assert fields(reply)[0][0] == "body", (method, body[:10])
        reply = await client.request(
            method, path, content=b"{}", headers={"content-type": "text/plain", **ADMIN}
        )
        assert reply.status_code == 415, reply.text
    assert fields(await client.put(AGENT, headers=ADMIN)) == [["body"]]  # required
    assert fields(await client.put(AGENT, json={"colour": "red"}, headers=ADMIN)) == [
        ["body", "colour"]
    ]
    assert fields(await client.post(TERMINATE, json={"reason": "x" * 501}, headers=ADMIN)) == [
        ["body", "reason"]
    ]
    # Terminate's body is optional: none, `null` and `{}` all reach the command.
    for body in (b"", b"null", b"{}"):
        reply = await client.post(TERMINATE, content=body, headers={**JSON, **ADMIN})
        assert reply.status_code == 503, reply.text  # no agent listens in this test


async def test_the_body_is_read_only_for_callers_it_can_concern(
    client: httpx.AsyncClient,
) -> None:
    """A non-admin's agent update is refused before its body is read."""
    body = Stream(b'{"display_name": "', 32 * 1024 * 1024, b'"}')
    reply = await client.put(AGENT, content=body, headers={**JSON, **USER})
    assert reply.status_code == 403, reply.text
    assert body.sent <= CHUNK


async def test_an_owner_change_applies_to_the_new_owners_scope_at_once(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/api/agents", headers=USER)).json()["agents"] == []  # cached
    reply = await client.put(AGENT, json={"owner": "uma"}, headers=ADMIN)
    assert reply.status_code == 200, reply.text
    seen = (await client.get("/api/agents", headers=USER)).json()["agents"]
    assert [a["name"] for a in seen] == ["a1"]
    await client.put(AGENT, json={"owner": "olga"}, headers=ADMIN)


async def test_openapi_describes_both_bodies(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    put = paths["/api/agents/{name}"]["put"]["requestBody"]
    assert put["required"] is True
    schema = put["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"display_name", "owner", "project"}
    assert schema["additionalProperties"] is False
    post = paths["/api/executions/{execution_id}/terminate"]["post"]["requestBody"]
    assert post["required"] is False
    assert set(post["content"]["application/json"]["schema"]["properties"]) == {"reason"}
