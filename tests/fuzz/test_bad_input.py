"""Oversized and malicious input against a real `fleetwatch query` process: a clear 4xx, never
a 5xx, and metacharacters are taken literally (a search for `%` matches a literal `%` only)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import orjson
import pytest
import pytest_asyncio

from tests.isolation.world import World
from tests.procs import Service

pytestmark = pytest.mark.e2e

NUL = "\x00"
META = ["%", "_", "\\", "%_%", "\\%", "'; DROP TABLE executions; --", '" OR 1=1 --', "*", "[a-z]"]
UNICODE = ["é漢字🙂", "\u202e\u200b", "ǅ" * 50, "\ufeff"]
# Postgres text cannot hold NUL: every string that reaches SQL must be refused first.
NUL_VALUES = [NUL, f"a{NUL}b", f"%{NUL}%"]


@pytest_asyncio.fixture
async def admin(world_query: tuple[Service, World]) -> AsyncIterator[httpx.AsyncClient]:
    service, world = world_query
    headers = world.callers["a-admin"].headers
    async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=20) as client:
        yield client


def _clear_4xx(r: httpx.Response, what: object) -> None:
    assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), (what, r.headers)
    assert "detail" in r.json(), (what, r.text[:300])


def _cursor(body: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")


async def test_search_metacharacters_and_unicode_are_literal(
    admin: httpx.AsyncClient, world_query: tuple[Service, World]
) -> None:
    _, world = world_query
    for text in META + UNICODE:
        for path in (
            "/api/executions",
            "/api/agents/alpha/executions",
            "/api/executions/timeline",
            "/api/executions/export",
        ):
            r = await admin.get(path, params={"search": text})
            assert r.status_code == 200, (path, text, r.status_code, r.text[:300])
        listing = (await admin.get("/api/executions", params={"search": text})).json()
        needle = text.strip().lower()
        expected = [
            row
            for row in world.rows
            if row["org"] == world.org_a
            and needle in ((row["message"] or "").lower() + "\n" + (row["response"] or "").lower())
        ]
        assert listing["total_count"] == len(expected), (text, listing["total_count"])
    # The DROP TABLE above was data: the table is still there, with all of A's rows.
    listing = (await admin.get("/api/executions", params={"limit": 1})).json()
    assert listing["total_count"] == sum(1 for r in world.rows if r["org"] == world.org_a)


async def test_oversized_values_get_422(admin: httpx.AsyncClient) -> None:
    huge = "x" * 30_000  # in the URL: httpx refuses components over 64 KiB
    for path, params in [
        ("/api/executions", {"search": huge}),
        ("/api/executions", {"search": "y" * 201}),
        ("/api/executions", {"project": huge}),
        ("/api/executions", {"workflow": huge}),
        ("/api/executions", {"agent_name": "a" * 65}),
        ("/api/executions", {"cursor": huge}),
        ("/api/executions", {"limit": "9" * 40}),
        ("/api/executions", {"offset": "9" * 40}),
        ("/api/executions", {"start_time": huge}),
        ("/api/executions", {"status": ",".join(["failed"] * 51)}),
        ("/api/executions/stats", {"hours": "9" * 40}),
        ("/api/executions/timeline", {"hours": "-1"}),
        ("/api/executions/export", {"search": huge}),
        ("/api/workflows", {"hours": "9" * 40}),
    ]:
        _clear_4xx(await admin.get(path, params=params), (path, list(params)))
    for path in (
        f"/api/executions/{huge[:5000]}",
        f"/api/executions/{huge[:5000]}/log",
        f"/api/workflows/{huge[:5000]}/stats",
        f"/api/projects/{huge[:5000]}/stats",
        f"/api/agents/{huge[:5000]}/executions",
    ):
        r = await admin.get(path)
        assert r.status_code in (404, 422), (path[:40], r.status_code, r.text[:300])
    r = await admin.put("/api/agents/alpha", json={"display_name": huge * 10})
    _clear_4xx(r, "huge display_name")
    r = await admin.put(f"/api/agents/alpha/shares/{huge[:5000]}")
    _clear_4xx(r, "huge share user")
    r = await admin.post("/api/executions/x/terminate", json={"reason": huge})
    assert r.status_code in (404, 422), r.text[:300]


@pytest.mark.parametrize("value", NUL_VALUES, ids=["nul", "inner-nul", "pattern-nul"])
async def test_nul_is_refused_with_422_everywhere(admin: httpx.AsyncClient, value: str) -> None:
    for path, name in [
        ("/api/executions", "search"),
        ("/api/executions", "project"),
        ("/api/executions", "workflow"),
        ("/api/executions", "triggered_by"),
        ("/api/executions", "agent_name"),
        ("/api/executions", "start_time"),
        ("/api/executions", "cursor"),
        ("/api/agents/alpha/executions", "search"),
        ("/api/agents/alpha/executions", "project"),
        ("/api/executions/timeline", "search"),
        ("/api/executions/timeline", "workflow"),
        ("/api/executions/export", "search"),
        ("/api/executions/export", "project"),
        ("/api/executions/stats", "agent_name"),
    ]:
        r = await admin.get(path, params={name: value})
        assert r.status_code == 422, (path, name, r.status_code, r.text[:300])
    # A cursor that decodes to an id holding NUL.
    bad_cursor = _cursor({"v": 1, "t": "2026-01-01T00:00:00+00:00", "i": f"x{value}"})
    r = await admin.get("/api/executions", params={"cursor": bad_cursor})
    assert r.status_code == 422, (r.status_code, r.text[:300])
    seg = quote(value, safe="")  # in a path segment, percent-encoded
    for path in (
        f"/api/executions/{seg}",
        f"/api/executions/{seg}/log",
        f"/api/workflows/{seg}/stats",
        f"/api/projects/{seg}/stats",
        f"/api/agents/{seg}/executions",
    ):
        r = await admin.get(path)
        assert r.status_code in (404, 422), (repr(path), r.status_code, r.text[:300])
    r = await admin.post(f"/api/executions/{seg}/terminate")
    assert r.status_code in (404, 422), (r.status_code, r.text[:300])
    for body in ({"display_name": value}, {"owner": value}, {"project": value}):
        _clear_4xx(await admin.put("/api/agents/alpha", json=body), body)
    _clear_4xx(await admin.put(f"/api/agents/alpha/shares/{seg}"), "share")
    _clear_4xx(await admin.delete(f"/api/agents/alpha/shares/{seg}"), "unshare")


async def test_raw_bytes_in_the_url(admin: httpx.AsyncClient) -> None:
    """Invalid UTF-8 and a lone surrogate, percent-encoded by hand."""
    for raw in ("%FF%FE", "%ED%A0%80", "%C0%AF", "%00"):
        for path in (
            f"/api/executions?search={raw}",
            f"/api/executions?project={raw}",
            f"/api/executions/{raw}",
            f"/api/agents/{raw}/executions",
            f"/api/workflows/{raw}/stats",
        ):
            r = await admin.get(path)
            assert r.status_code < 500, (path, r.status_code, r.text[:300])


async def test_deep_and_malformed_json_bodies(admin: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json"}
    deep = "[" * 100_000 + "]" * 100_000
    deep_obj = '{"display_name": ' + "{" + '"a":{' * 5_000 + "}" * 5_001 + "}"
    for body in (
        deep,
        deep_obj,
        '{"display_name": "x"',
        "\xff\xfe",
        '{"display_name": 1}',
        '{"display_name": null, "owner": ["x"]}',
        '{"unknown": "x"}',
        "[]",
        '"just a string"',
        "",
    ):
        for method, path in (
            ("PUT", "/api/agents/alpha"),
            ("POST", "/api/executions/nope/terminate"),
        ):
            r = await admin.request(method, path, content=body.encode(), headers=headers)
            what = (method, path, body[:40], r.status_code, r.text[:300])
            assert 400 <= r.status_code < 500, what
    # A big (but flat) body: 5 MB of JSON string.
    big = orjson.dumps({"display_name": "z" * 5_000_000})
    r = await admin.put("/api/agents/alpha", content=big, headers=headers)
    _clear_4xx(r, "5 MB body")
