"""Statistics review: the timeline counts the rows the list counts for the same filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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

ORG = "sr2-edge-org"
ADMIN = token(ORG, "ada", "admin")


async def test_a_timeline_start_time_within_the_slack_counts_the_rows_the_list_does(
    database_url: str, nats_url: str
) -> None:
    """A start_time a few seconds before the window's start (the client computed `now - hours`
    a moment before the server) is accepted, and `filters_applied` names it; the rows between
    it and the server's window start were cut off, so the buckets added up to less than the
    list's `total_count` for the very same filters."""
    now = datetime.now(UTC)
    edge = now - timedelta(hours=24, seconds=20)  # after start_time, before the window start
    rows = make_rows(ORG, ("a1",), 2, seed=21, now=now)
    for row, moment in zip(rows, (edge, now - timedelta(hours=1)), strict=True):
        row.update(status="success", started_at=moment, first_seen_at=moment, cost=0.5)
        row.update(completed_at=moment + timedelta(seconds=1), duration_ms=1000)
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await add_agent(conn, ORG, "a1")
        await insert(conn, rows)
    finally:
        await conn.close()
    start_time = (now - timedelta(hours=24, seconds=40)).isoformat()
    params = {"start_time": start_time, "agent_name": "a1"}
    async with client_for(settings_for(database_url, nats_url)) as client:
        listed = await client.get("/api/executions", headers=ADMIN, params=params)
        assert listed.status_code == 200, listed.text
        assert listed.json()["total_count"] == 2
        reply = await client.get(
            "/api/executions/timeline", headers=ADMIN, params={**params, "hours": 24}
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["filters_applied"]["start_time"] == start_time.replace("+00:00", "Z")
        buckets = body["buckets"]
        assert sum(b["total"] for b in buckets) == 2
        assert sum(b["success"] for b in buckets) == 2
        assert sum(b["cost"] for b in buckets) == 1.0
        # The edge row sits in the bucket of its own hour: the first one, or the second when an
        # hour begins between start_time and the edge (a run at 18:00:21 puts start_time at
        # 17:59:41 and the edge at 18:00:01).
        starts = [datetime.fromisoformat(b["bucket"].replace("Z", "+00:00")) for b in buckets]
        own = edge.replace(minute=0, second=0, microsecond=0)
        assert starts[0] <= edge
        assert own in starts[:2], (own, starts[:2])
        assert buckets[starts.index(own)]["total"] >= 1
