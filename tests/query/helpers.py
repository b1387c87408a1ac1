"""Seeding executions straight into the tables, and an in-process app to call."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr

from services.query.app import create_app
from services.query.settings import QuerySettings
from shared.auth import mint_token

SECRET = "query-test-secret-0123456789abcdef-xyz"  # ≥ 32 bytes: pyjwt warns below
COLUMNS = (
    "org",
    "id",
    "agent_name",
    "project",
    "workflow",
    "status",
    "triggered_by",
    "message",
    "response",
    "error",
    "started_at",
    "completed_at",
    "duration_ms",
    "cost",
    "tokens_in",
    "tokens_out",
    "execution_log",
    "engine",
    "external_id",
    "parent_execution_id",
    "first_seen_at",
)
STATUSES = ("pending", "running", "success", "failed", "cancelled")
TRIGGERS = ("manual", "schedule", "agent", "user", "mcp", "api", "webhook", None)
WORDS = ("invoice", "summary", "report", "deploy", "refund", "weather", "translate")

INSERT = (
    f"INSERT INTO executions ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(COLUMNS)))})"
)


def make_rows(
    org: str, agents: Sequence[str], n: int, *, seed: int, now: datetime | None = None
) -> list[dict[str, Any]]:
    """`n` varied executions spread over the last 3 days (some unstarted)."""
    rnd = random.Random(seed)
    now = now or datetime.now(UTC)
    rows = []
    for i in range(n):
        status = rnd.choice(STATUSES)
        started = now - timedelta(seconds=rnd.randint(0, 3 * 86_400))
        unstarted = status == "pending" and rnd.random() < 0.5
        duration = rnd.randint(100, 90_000) if status in ("success", "failed") else None
        rows.append(
            {
                "org": org,
                "id": f"{org}-x{i:05d}",
                "agent_name": rnd.choice(agents),
                "project": rnd.choice(("alpha", "beta", None)),
                "workflow": rnd.choice(("wf-1", "wf-2", "wf-3", None)),
                "status": status,
                "triggered_by": rnd.choice(TRIGGERS),
                "message": f"please {rnd.choice(WORDS)} #{i} " + "x" * rnd.choice((0, 300)),
                "response": f"done: {rnd.choice(WORDS)}" if status == "success" else None,
                "error": "boom" if status == "failed" else None,
                "started_at": None if unstarted else started,
                "completed_at": started + timedelta(milliseconds=duration) if duration else None,
                "duration_ms": duration,
                "cost": round(rnd.random() / 10, 5) if status != "pending" else None,
                "tokens_in": rnd.randint(1, 5000),
                "tokens_out": rnd.randint(1, 5000),
                "execution_log": f"log of {i}" if rnd.random() < 0.3 else None,
                "engine": None,
                "external_id": None,
                "parent_execution_id": None,
                "first_seen_at": started,
            }
        )
    return rows


async def insert(conn: asyncpg.Connection, rows: Sequence[dict[str, Any]]) -> None:
    await conn.executemany(INSERT, [tuple(row[c] for c in COLUMNS) for row in rows])


async def add_org(conn: asyncpg.Connection, org: str) -> None:
    await conn.execute("INSERT INTO organizations (org) VALUES ($1) ON CONFLICT DO NOTHING", org)


async def add_agent(
    conn: asyncpg.Connection,
    org: str,
    name: str,
    *,
    owner: str | None = None,
    display_name: str | None = None,
    shared_with: Sequence[str] = (),
) -> None:
    await conn.execute(
        "INSERT INTO agents (org, name, owner, display_name) VALUES ($1, $2, $3, $4)",
        org,
        name,
        owner,
        display_name,
    )
    for user in shared_with:
        await conn.execute(
            "INSERT INTO agent_shares (org, agent_name, user_id) VALUES ($1, $2, $3)",
            org,
            name,
            user,
        )


def token(org: str, user: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(secret=SECRET, org=org, user=user, role=role)}"}


def settings_for(
    database_url: str, nats_url: str, prefix: str = "fleet", **extra: Any
) -> QuerySettings:
    return QuerySettings(
        database_url=database_url,
        nats_url=nats_url,
        subject_prefix=prefix,
        jwt_secret=SecretStr(SECRET),
        **extra,
    )


@asynccontextmanager
async def client_for(settings: QuerySettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
            yield client


async def wait_nats(client: httpx.AsyncClient) -> None:
    """Until the app has connected to NATS (it does so in the background)."""
    for _ in range(100):
        if (await client.get("/readyz")).json()["nats"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("query never connected to NATS")
