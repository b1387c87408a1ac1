"""Durations in statistics: as reported, else from the execution's timestamps, as the
Prometheus histogram counts them (publishers need not send `duration_ms`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shared.db import connect
from tests.query.helpers import add_org, client_for, insert, make_rows, settings_for, token

ORG = "qd-org"
ADMIN = token(ORG, "ada", "admin")


async def test_a_run_without_duration_ms_counts_by_its_timestamps(
    database_url: str, nats_url: str
) -> None:
    """One run reports 1 s; one reports only its start and end, 3 s apart; one ends before it
    starts (a clock gone wrong: no duration); one is still running. Averages are 2 s, and the
    longest run is the one that took 3 s."""
    now = datetime.now(UTC)
    start = now - timedelta(hours=1)
    rows = make_rows(ORG, ("a1",), 4, seed=31, now=now)
    for row in rows:
        row.update(workflow="wf", project="p", started_at=start, first_seen_at=start)
    rows[0].update(id="reported", status="success", duration_ms=1000)
    rows[0]["completed_at"] = start + timedelta(seconds=1)
    rows[1].update(id="timed", status="failed", duration_ms=None)
    rows[1]["completed_at"] = start + timedelta(seconds=3)
    rows[2].update(id="skewed", status="success", duration_ms=None)
    rows[2]["completed_at"] = start - timedelta(seconds=5)
    rows[3].update(id="open", status="running", duration_ms=None, completed_at=None)
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await insert(conn, rows)
    finally:
        await conn.close()
    async with client_for(settings_for(database_url, nats_url)) as client:

        async def get(path: str) -> dict[str, Any]:
            reply = await client.get(path, headers=ADMIN)
            assert reply.status_code == 200, reply.text
            body: dict[str, Any] = reply.json()
            return body

        assert (await get("/api/executions/stats"))["avg_duration_ms"] == 2000
        assert (await get("/api/workflows/wf/stats"))["avg_duration_ms"] == 2000
        project = await get("/api/projects/p/stats")
        assert project["avg_duration_ms"] == 2000
        assert project["longest_run"]["id"] == "timed"
        listed = (await get("/api/workflows"))["workflows"]
        assert [(w["name"], w["avg_duration_ms"]) for w in listed] == [("wf", 2000)]
