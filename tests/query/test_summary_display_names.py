"""Every execution summary names its agent's display name, as the list does: a workflow's
recent runs, a project's longest run and an execution's children, not only the list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

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

ORG = "qdn-org"
ADMIN = token(ORG, "ada", "admin")


async def test_summaries_carry_the_agents_display_name(database_url: str, nats_url: str) -> None:
    now = datetime.now(UTC)
    rows = make_rows(ORG, ("a1", "a2"), 4, seed=41, now=now)
    for i, row in enumerate(rows):
        moment = now - timedelta(minutes=10 - i)
        row.update(
            id=f"r{i}",
            agent_name=("a1", "a2")[i % 2],
            workflow="wf",
            project="p",
            status="success",
            started_at=moment,
            first_seen_at=moment,
            completed_at=moment + timedelta(seconds=i + 1),
            duration_ms=(i + 1) * 1000,
            parent_execution_id=None if i == 0 else "r0",
        )
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await add_agent(conn, ORG, "a1", display_name="Agent One")
        await add_agent(conn, ORG, "a2")  # no display name: null, as in the list
        await insert(conn, rows)
    finally:
        await conn.close()
    names = {"a1": "Agent One", "a2": None}
    async with client_for(settings_for(database_url, nats_url)) as client:

        async def get(path: str) -> dict[str, Any]:
            reply = await client.get(path, headers=ADMIN)
            assert reply.status_code == 200, reply.text
            body: dict[str, Any] = reply.json()
            return body

        listed = (await get("/api/executions"))["executions"]
        recent = (await get("/api/workflows/wf/stats"))["recent_runs"]
        longest = (await get("/api/projects/p/stats"))["longest_run"]
        children = (await get("/api/executions/r0"))["children"]
        assert [r["id"] for r in recent] == ["r3", "r2", "r1", "r0"]
        assert longest["id"] == "r3"
        assert [c["id"] for c in children] == ["r1", "r2", "r3"]
        for summary in [*listed, *recent, longest, *children]:
            assert summary["agent_display_name"] == names[summary["agent_name"]], summary
