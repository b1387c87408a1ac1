"""Per-workflow and per-project statistics: a measured zero is a value, not "no data"."""

from __future__ import annotations

import httpx

from shared.db import connect
from tests.query.helpers import add_org, client_for, insert, make_rows, settings_for, token

ORG = "qg-org"
ADMIN = token(ORG, "ada", "admin")


async def test_runs_that_took_zero_ms_average_zero_not_none(
    database_url: str, nats_url: str
) -> None:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        rows = make_rows(ORG, ("a1",), 4, seed=11)
        for row in rows:  # instant runs (a cached answer): measured, and 0 ms each
            row.update(workflow="instant", project="fast", status="success", duration_ms=0)
        rows[0].update(workflow="unmeasured", project="vague", duration_ms=None)
        await insert(conn, rows)
    finally:
        await conn.close()
    async with client_for(settings_for(database_url, nats_url)) as client:

        async def get(path: str) -> dict[str, object]:
            reply: httpx.Response = await client.get(path, headers=ADMIN)
            assert reply.status_code == 200, reply.text
            body: dict[str, object] = reply.json()
            return body

        assert (await get("/api/workflows/instant/stats"))["avg_duration_ms"] == 0
        assert (await get("/api/projects/fast/stats"))["avg_duration_ms"] == 0
        listed = (await get("/api/workflows"))["workflows"]
        assert isinstance(listed, list)
        by_name = {w["name"]: w["avg_duration_ms"] for w in listed}
        assert by_name == {"instant": 0, "unmeasured": None}


async def test_lists_cut_at_500_say_so(database_url: str, nats_url: str) -> None:
    """/api/workflows, /api/projects and an execution's children stop at 500: they once did
    it silently, so a client could not tell the 501st workflow from none."""
    org = "qg-cut-org"
    admin = token(org, "ada", "admin")
    conn = await connect(database_url)
    try:
        await add_org(conn, org)
        rows = make_rows(org, ("a1",), 502, seed=12)
        for i, row in enumerate(rows):
            row.update(workflow=f"wf-{i:04d}", project=f"p-{i % 3}", parent_execution_id="root")
        rows[-1].update(parent_execution_id=None, id="root")
        await insert(conn, rows)
    finally:
        await conn.close()
    async with client_for(settings_for(database_url, nats_url)) as client:
        workflows = (await client.get("/api/workflows", headers=admin)).json()
        assert (len(workflows["workflows"]), workflows["truncated"]) == (500, True)
        projects = (await client.get("/api/projects", headers=admin)).json()
        assert (len(projects["projects"]), projects["truncated"]) == (3, False)
        detail = (await client.get("/api/executions/root", headers=admin)).json()
        assert (len(detail["children"]), detail["children_truncated"]) == (500, True)
        child = (await client.get(f"/api/executions/{rows[0]['id']}", headers=admin)).json()
        assert (child["children"], child["children_truncated"]) == ([], False)


async def test_most_used_component_counts_only_the_executions_own_agents_steps(
    database_url: str, nats_url: str
) -> None:
    """A workflow's and a project's `most_used_component` count the steps of their executions,
    and only those written by the execution's own agent: ingest refuses another agent's steps,
    and the read does not rely on that alone (as the execution's own steps list does not)."""
    org = "qg-top-org"
    admin = token(org, "ada", "admin")
    conn = await connect(database_url)
    try:
        await add_org(conn, org)
        rows = make_rows(org, ("a1",), 3, seed=13)
        for row in rows:
            row.update(workflow="wf-top", project="p-top")
        await insert(conn, rows)
        steps = [(row["id"], "a1", "fetch", n) for row in rows for n in range(2)]
        steps.append((rows[0]["id"], "a1", "summarize", 0))
        # Rows another agent of the org got into the same executions, around ingest.
        steps += [(row["id"], "intruder", "exfiltrate", n) for row in rows for n in range(5)]
        await conn.executemany(
            "INSERT INTO component_executions "
            "(org, execution_id, node_id, attempt, agent_name, name, status, first_seen_at) "
            "VALUES ($1, $2, $3, 1, $4, $5, 'success', now())",
            [(org, ex, f"{name}-{n}", agent, name) for ex, agent, name, n in steps],
        )
    finally:
        await conn.close()
    async with client_for(settings_for(database_url, nats_url)) as client:
        for path in ("/api/workflows/wf-top/stats", "/api/projects/p-top/stats"):
            reply = await client.get(path, headers=admin)
            assert reply.status_code == 200, reply.text
            assert reply.json()["most_used_component"] == {"name": "fetch", "uses": 6}, path
