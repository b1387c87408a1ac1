"""Agents and the gateway against the ingest service (a subprocess): what ends up in Postgres."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from services.ingest.apikeys import create_key
from shared.events import EventType
from shared.publisher import Fleet
from shared.publisher.envelope import execution_event
from shared.subjects import Subjects
from tests.publisher.conftest import Ingest, OwnNats


class Refused(RuntimeError):
    pass


async def wait_until(
    db: asyncpg.Connection, query: str, *args: Any, expect: Any, timeout: float = 40.0
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await db.fetchval(query, *args)
        if value == expect or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def row(db: asyncpg.Connection, org: str, run_id: str) -> asyncpg.Record:
    record = await db.fetchrow("SELECT * FROM executions WHERE org = $1 AND id = $2", org, run_id)
    assert record is not None
    return record


async def test_rows_for_success_failure_and_terminate(
    ingest: Ingest, nats_url: str, subjects: Subjects, db: asyncpg.Connection, org: str
) -> None:
    entered = asyncio.Event()
    running: list[str] = []
    async with Fleet(nats_url, org=org, subjects=subjects) as fleet:
        async with fleet.execution(
            "ruby-agent", message="Process invoice", triggered_by="schedule"
        ) as ok:
            async with ok.component("fetch", retry_policy="exponential", max_attempts=3) as step:
                step.output = {"rows": 2}
            ok.set(response="3 invoices", cost=0.02, tokens_in=100, tokens_out=20)
        try:
            async with fleet.execution("ruby-agent", message="Refund") as bad:
                raise Refused("card declined")
        except Refused:
            pass

        async def long_job() -> None:
            async with fleet.execution("slow-agent", message="crawl") as run:
                running.append(run.id)
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(long_job())
        await entered.wait()
        run_id = running[0]
        assert fleet._nc is not None
        reply = await fleet._nc.request(
            subjects.terminate(org, "slow-agent"),
            orjson.dumps({"execution_id": run_id, "reason": "operator stop"}),
            timeout=5,
        )
        assert orjson.loads(reply.data) == {"accepted": True, "reason": None}
        await asyncio.wait_for(task, 5)

    count = "SELECT count(*) FROM executions WHERE org = $1 AND status <> 'running'"
    finished = await wait_until(db, count, org, expect=3)
    state = await db.fetch("SELECT id, status FROM executions WHERE org = $1", org)
    assert finished == 3, [tuple(r) for r in state]
    done = await row(db, org, ok.id)
    assert (done["status"], done["response"], done["cost"]) == ("success", "3 invoices", 0.02)
    assert (done["tokens_in"], done["tokens_out"], done["triggered_by"]) == (100, 20, "schedule")
    assert done["duration_ms"] is not None
    failed = await row(db, org, bad.id)
    assert (failed["status"], failed["error_type"], failed["error"]) == (
        "failed",
        "Refused",
        "card declined",
    )
    cancelled = await row(db, org, run_id)
    assert (cancelled["status"], cancelled["error"]) == ("cancelled", "operator stop")
    steps = await db.fetch(
        "SELECT node_id, attempt, status, retry_policy FROM component_executions "
        "WHERE org = $1 AND execution_id = $2",
        org,
        ok.id,
    )
    assert [tuple(s) for s in steps] == [("fetch", 1, "success", "exponential")]


async def test_nats_restart_mid_run_stores_every_event_once(
    own_nats: OwnNats,
    service_env: dict[str, str],
    subjects: Subjects,
    db: asyncpg.Connection,
    org: str,
    tmp_path: Path,
) -> None:
    service = Ingest({**service_env, "NATS_URL": own_nats.url})
    await service.start()
    try:
        fleet = Fleet(
            own_nats.url, org=org, subjects=subjects, spool_dir=tmp_path / "spool", ack_timeout=0.5
        )
        await fleet.start()
        ids = []
        for i in range(40):
            if i == 10:
                own_nats.stop()
            if i == 30:
                own_nats.start()
            async with fleet.execution("steady", message=f"job {i}") as run:
                run.response = "ok"
            ids.append(run.id)
            await asyncio.sleep(0.02)
        assert fleet.stats.spooled > 0
        assert await fleet.flush(15)
        await fleet.close()
        events = "SELECT count(*) FROM events WHERE org = $1"
        assert await wait_until(db, events, org, expect=80) == 80
        rows = await db.fetch("SELECT id, status, response FROM executions WHERE org = $1", org)
        assert sorted(r["id"] for r in rows) == sorted(ids)
        assert {(r["status"], r["response"]) for r in rows} == {("success", "ok")}
    finally:
        service.stop()


async def test_gateway_through_ingest(
    ingest: Ingest, database_url: str, db: asyncpg.Connection, org: str
) -> None:
    key = (await create_key(db, org, "e2e")).key
    headers = {"X-API-Key": key}

    def started(run_id: str, **fields: Any) -> dict[str, Any]:
        return execution_event(
            EventType.EXECUTION_STARTED,
            org=org,
            execution={"id": run_id, "agent_name": "http-agent", **fields},
        )

    async with httpx.AsyncClient(base_url=ingest.url) as http:
        bad = [started("g1"), started("g2", duration_ms="soon")]
        refused = await http.post("/api/events", json=bad, headers=headers)
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["index"] == 1
        assert refused.json()["errors"][0]["field"] == "execution.duration_ms"
        good = [started(f"g{i}", message=f"m{i}") for i in range(50)]
        accepted = await http.post("/api/events", json=good, headers=headers)
        assert accepted.status_code == 202
        again = await http.post("/api/events", json=good, headers=headers)
        assert again.json() == {"accepted": 50, "duplicates": 50}
    count = "SELECT count(*) FROM executions WHERE org = $1"
    assert await wait_until(db, count, org, expect=50) == 50
    assert await db.fetchval("SELECT count(*) FROM events WHERE org = $1", org) == 50
