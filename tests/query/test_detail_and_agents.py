"""Detail with steps and children, log, terminate over real NATS, agents and shares, 429."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import nats
import orjson
import pytest_asyncio

from services.query import admin
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

ORG = "qd-org"
ADMIN = token(ORG, "ada", "admin")
OWNER = token(ORG, "uma", "user")
OTHER = token(ORG, "ursula", "user")
CLIENT = token(ORG, "cleo", "client")


@pytest_asyncio.fixture(scope="module")
async def seeded(database_url: str) -> list[dict[str, Any]]:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await add_agent(conn, ORG, "worker", owner="uma", shared_with=("cleo",))
        await add_agent(conn, ORG, "hidden", owner="ada")
        rows = make_rows(ORG, ("worker",), 3, seed=3)
        now = datetime.now(UTC)
        rows[0].update(id="parent", status="running", execution_log="step 1\nstep 2")
        rows[1].update(id="child", parent_execution_id="parent")
        rows[2].update(id="engine-run", engine="temporal", external_id="wf-1", status="success")
        hidden = make_rows(ORG, ("hidden",), 1, seed=4)
        hidden[0].update(id="hidden-child", parent_execution_id="parent")
        await insert(conn, rows + hidden)
        steps = [
            ("a", 1, "none", None, "success"),
            ("b", 1, "fixed", 3, "failed"),
            ("b", 2, "fixed", 3, "failed"),
            ("b", 3, "fixed", 3, "failed"),
            ("b", 4, "fixed", 3, "success"),
            ("c", 2, None, None, "success"),
        ]
        for node, attempt, policy, max_attempts, status in steps:
            await conn.execute(
                "INSERT INTO component_executions (org, execution_id, node_id, attempt, "
                "agent_name, name, status, retry_policy, max_attempts, input, output, started_at, "
                "first_seen_at) VALUES ($1, 'parent', $2, $3, 'worker', $4, $5, $6, $7, $8, $9, "
                "$10, $10)",
                ORG,
                node,
                attempt,
                f"step-{node}",
                status,
                policy,
                max_attempts,
                {"n": attempt},
                {"ok": status == "success"},
                now + timedelta(seconds=attempt),
            )
        return rows
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def client(
    database_url: str, nats_url: str, subjects: Subjects, seeded: Any
) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(database_url, nats_url, subjects.prefix, terminate_timeout_s=0.5)
    async with client_for(settings) as found:
        yield found


async def test_detail_has_steps_retry_classes_and_visible_children(
    client: httpx.AsyncClient,
) -> None:
    reply = await client.get("/api/executions/parent", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    classes = {(c["node_id"], c["attempt"]): c["retry_class"] for c in body["components"]}
    assert classes == {
        ("a", 1): None,
        ("b", 1): None,
        ("b", 2): "expected",
        ("b", 3): "expected",
        ("b", 4): "unexpected",
        ("c", 2): "unexpected",
    }
    assert body["retries"] == {"expected": 2, "unexpected": 2}
    assert body["components"][0]["input"] == {"n": 1}
    assert {c["id"] for c in body["children"]} == {"child", "hidden-child"}
    assert body["log_url"] == "/api/executions/parent/log"
    # The owner of "worker" does not see the child run by "hidden".
    mine = (await client.get("/api/executions/parent", headers=OWNER)).json()
    assert [c["id"] for c in mine["children"]] == ["child"]
    log = await client.get("/api/executions/parent/log", headers=CLIENT)
    assert log.text == "step 1\nstep 2"
    assert (await client.get("/api/executions/child/log", headers=ADMIN)).status_code in (200, 404)
    assert (await client.get("/api/executions/nope", headers=ADMIN)).status_code == 404
    assert (await client.get("/api/executions/parent", headers=OTHER)).status_code == 404


async def test_children_the_caller_may_not_see_do_not_crowd_out_those_they_may(
    client: httpx.AsyncClient, database_url: str
) -> None:
    # 500 children by "hidden" come first in the children's order; "worker"'s one comes last.
    now = datetime.now(UTC)
    crowd = make_rows(ORG, ("hidden",), 500, seed=6)
    for i, row in enumerate(crowd):
        row.update(
            id=f"crowd-{i}", parent_execution_id="crowded", started_at=now - timedelta(days=2)
        )
    parent, mine = make_rows(ORG, ("worker",), 2, seed=7)
    parent.update(id="crowded")
    mine.update(id="crowd-visible", parent_execution_id="crowded", started_at=now)
    conn = await connect(database_url)
    try:
        await insert(conn, [parent, mine, *crowd])
    finally:
        await conn.close()
    owner = (await client.get("/api/executions/crowded", headers=OWNER)).json()
    assert [c["id"] for c in owner["children"]] == ["crowd-visible"]
    admin = (await client.get("/api/executions/crowded", headers=ADMIN)).json()
    assert len(admin["children"]) == 500  # the first 500 in order: the crowd
    assert "crowd-visible" not in {c["id"] for c in admin["children"]}


async def test_detail_asks_reconciler_for_missing_engine_steps(
    client: httpx.AsyncClient, nats_url: str, subjects: Subjects
) -> None:
    nc = await nats.connect(nats_url)
    asked: list[dict[str, Any]] = []

    async def answer(msg: Any) -> None:
        asked.append(orjson.loads(msg.data))
        await msg.respond(b'{"synced": 0}')

    await nc.subscribe(subjects.sync_components(), cb=answer)
    await nc.flush()
    try:
        for _ in range(50):  # the app connects to NATS in the background
            reply = await client.get("/api/executions/engine-run", headers=ADMIN)
            if asked:
                break
            await asyncio.sleep(0.1)
        assert reply.status_code == 200
        assert asked == [{"org": ORG, "execution_id": "engine-run"}]
    finally:
        await nc.close()


async def test_terminate_without_responder_is_unreachable(client: httpx.AsyncClient) -> None:
    await wait_nats(client)
    reply = await client.post("/api/executions/parent/terminate", headers=ADMIN)
    assert reply.status_code == 503
    assert "agent unreachable" in reply.json()["detail"]
    done = await client.post("/api/executions/engine-run/terminate", headers=ADMIN)
    assert done.status_code == 409
    assert (
        await client.post("/api/executions/parent/terminate", headers=CLIENT)
    ).status_code == 403


async def test_terminate_reaches_the_agent(
    client: httpx.AsyncClient, nats_url: str, subjects: Subjects
) -> None:
    await wait_nats(client)
    nc = await nats.connect(nats_url)
    got: list[dict[str, Any]] = []

    async def agent(msg: Any) -> None:
        got.append(orjson.loads(msg.data))
        await msg.respond(b'{"accepted": true, "reason": "stopping"}')

    await nc.subscribe(subjects.terminate(ORG, "worker"), cb=agent)
    await nc.flush()
    try:
        reply = await client.post(
            "/api/executions/parent/terminate", headers=OWNER, json={"reason": "stuck"}
        )
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"execution_id": "parent", "accepted": True, "reason": "stopping"}
        assert got == [{"execution_id": "parent", "requested_by": "uma", "reason": "stuck"}]
    finally:
        await nc.close()


async def test_agent_management_and_shares(client: httpx.AsyncClient) -> None:
    put = await client.put("/api/agents/worker", headers=ADMIN, json={"display_name": "Worker"})
    assert put.status_code == 200
    assert put.json()["display_name"] == "Worker"
    assert put.json()["owner"] == "uma"
    assert (await client.put("/api/agents/worker", headers=OWNER, json={})).status_code == 403
    bad = await client.put("/api/agents/worker", headers=ADMIN, json={"colour": "red"})
    assert bad.status_code == 422
    # The owner shares with another user, who then sees the agent; a non-owner may not.
    assert (await client.get("/api/agents", headers=OTHER)).json()["agents"] == []
    assert (await client.put("/api/agents/worker/shares/ursula", headers=OWNER)).status_code == 204
    seen = (await client.get("/api/agents", headers=OTHER)).json()["agents"]
    assert [a["name"] for a in seen] == ["worker"]
    assert "shared_with" not in seen[0]
    assert (await client.put("/api/agents/worker/shares/x", headers=OTHER)).status_code == 403
    # An agent out of the caller's scope is 403, as in the per-agent list, existing or not.
    assert (await client.put("/api/agents/hidden/shares/x", headers=OWNER)).status_code == 403
    assert (await client.put("/api/agents/no-such/shares/x", headers=OWNER)).status_code == 403
    assert (
        await client.delete("/api/agents/worker/shares/ursula", headers=ADMIN)
    ).status_code == 204
    assert (
        await client.delete("/api/agents/worker/shares/ursula", headers=ADMIN)
    ).status_code == 404
    assert (await client.get("/api/agents", headers=OTHER)).json()["agents"] == []


async def test_agent_fields_sent_as_null_are_cleared_and_left_out_ones_kept(
    client: httpx.AsyncClient,
) -> None:
    url = "/api/agents/spare"
    made = await client.put(
        url, headers=ADMIN, json={"display_name": "Spare", "owner": "uma", "project": "beta"}
    )
    assert made.json() == {
        "name": "spare",
        "display_name": "Spare",
        "owner": "uma",
        "project": "beta",
    }
    assert "spare" in {
        a["name"] for a in (await client.get("/api/agents", headers=OWNER)).json()["agents"]
    }
    cleared = await client.put(url, headers=ADMIN, json={"display_name": None, "project": None})
    assert cleared.json() == {
        "name": "spare",
        "display_name": None,
        "owner": "uma",
        "project": None,
    }
    kept = await client.put(url, headers=ADMIN, json={"display_name": "Spare 2"})
    assert kept.json()["owner"] == "uma"
    # Clearing the owner takes the agent out of the former owner's scope at once.
    disowned = await client.put(url, headers=ADMIN, json={"owner": None})
    assert disowned.json() == {
        "name": "spare",
        "display_name": "Spare 2",
        "owner": None,
        "project": None,
    }
    mine = (await client.get("/api/agents", headers=OWNER)).json()["agents"]
    assert "spare" not in {a["name"] for a in mine}
    assert (await client.put(url, headers=ADMIN, json={"owner": ""})).status_code == 422


async def test_rate_limit_answers_429_with_retry_after(database_url: str, nats_url: str) -> None:
    settings = settings_for(database_url, nats_url, rate_limit_burst=3, rate_limit_per_minute=6)
    async with client_for(settings) as client:
        codes = [(await client.get("/api/agents", headers=ADMIN)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = await client.get("/api/agents", headers=ADMIN)
        assert int(limited.headers["retry-after"]) >= 1
        # Another caller has a bucket of their own.
        assert (await client.get("/api/agents", headers=OWNER)).status_code == 200


async def test_admin_cli_creates_org_user_agent_and_shares(database_url: str) -> None:
    def run(*argv: str) -> int:
        return admin.main(["--database-url", database_url, *argv])

    assert await asyncio.to_thread(run, "org", "cli-org") == 0
    assert (
        await asyncio.to_thread(run, "user", "--org", "cli-org", "--user", "u", "--role", "user")
        == 0
    )
    assert (
        await asyncio.to_thread(run, "agent", "--org", "cli-org", "--agent", "bot", "--owner", "u")
        == 0
    )
    assert (
        await asyncio.to_thread(run, "share", "--org", "cli-org", "--agent", "bot", "--user", "c")
        == 0
    )
    assert (
        await asyncio.to_thread(run, "unshare", "--org", "cli-org", "--agent", "bot", "--user", "c")
        == 0
    )
    assert (
        await asyncio.to_thread(run, "unshare", "--org", "cli-org", "--agent", "bot", "--user", "c")
        == 1
    )
    assert await asyncio.to_thread(run, "agent", "--org", "no-org", "--agent", "bot") == 1
    conn = await connect(database_url)
    try:
        assert await conn.fetchval("SELECT role FROM users WHERE org = 'cli-org'") == "user"
        assert await conn.fetchval("SELECT owner FROM agents WHERE org = 'cli-org'") == "u"
    finally:
        await conn.close()


async def test_detail_links_to_the_engine_run_when_a_template_is_configured(
    database_url: str, nats_url: str, seeded: Any
) -> None:
    template = "http://temporal-ui:8233/namespaces/default/workflows/{external_id}"
    settings = settings_for(database_url, nats_url, engine_urls={"temporal": template})
    async with client_for(settings) as client:
        detail = (await client.get("/api/executions/engine-run", headers=ADMIN)).json()
        assert detail["engine_url"] == template.replace("{external_id}", "wf-1")
        other = (await client.get("/api/executions/parent", headers=ADMIN)).json()
        assert other["engine_url"] is None
        # List summaries carry the error text (cut to 200 characters) beside has_error.
        listed = (await client.get("/api/executions", headers=ADMIN)).json()["executions"]
        assert listed
        assert all("error" in e and "has_error" in e for e in listed)
