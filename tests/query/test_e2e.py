"""The query service as a process: `fleetwatch query` on a free port, driven over HTTP."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from shared.db import connect
from tests.procs import free_port, wait_ready
from tests.query.helpers import SECRET, add_org, insert, make_rows, token

pytestmark = pytest.mark.e2e


@pytest_asyncio.fixture
async def query_url(service_env: dict[str, str]) -> AsyncIterator[str]:
    port = free_port()
    env = {**service_env, "FLEETWATCH_JWT_SECRET": SECRET, "QUERY_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.cli", "query", env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            await wait_ready(url, timeout=30)
        except TimeoutError:
            raise AssertionError(f"query not ready (exit code {proc.returncode})") from None
        yield url
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)


async def test_query_process_serves_the_api(database_url: str, query_url: str, org: str) -> None:
    conn = await connect(database_url)
    try:
        await add_org(conn, org)
        await insert(conn, make_rows(org, ("bot",), 60, seed=9))
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=query_url) as client:
        assert (await client.get("/api/executions")).status_code == 401
        headers = token(org, "ada", "admin")
        page = (await client.get("/api/executions", headers=headers, params={"limit": 50})).json()
        assert page["total_count"] == 60
        assert page["has_more"] is True
        rest = await client.get(
            "/api/executions", headers=headers, params={"cursor": page["next_cursor"]}
        )
        assert len(rest.json()["executions"]) == 10
        assert (await client.get("/api/executions/stats", headers=headers)).status_code == 200
        assert "fleetwatch_query_request_seconds" in (await client.get("/metrics")).text
        assert (await client.get("/")).status_code == 200


async def test_query_process_routes_percent_encoded_ids(
    database_url: str, query_url: str, org: str
) -> None:
    """Over real HTTP: `%2F` inside an id stays in its segment (uvicorn's raw path)."""
    conn = await connect(database_url)
    try:
        await add_org(conn, org)
        rows = make_rows(org, ("bot",), 2, seed=4)
        rows[0].update(id="wf/run-1", execution_log="done")
        rows[1].update(id="wf", execution_log="other")
        await insert(conn, rows)
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=query_url, headers=token(org, "ada", "admin")) as client:
        detail = await client.get("/api/executions/wf%2Frun-1")
        assert detail.status_code == 200, detail.text
        assert detail.json()["id"] == "wf/run-1"
        assert detail.json()["log_url"] == "/api/executions/wf%2Frun-1/log"
        assert (await client.get(detail.json()["log_url"])).text == "done"
        assert (await client.get("/api/executions/wf%2Flog")).status_code == 404
        assert (await client.get("/api/executions/wf/log")).text == "other"
        assert (await client.get("/api/executions/stats")).status_code == 200
