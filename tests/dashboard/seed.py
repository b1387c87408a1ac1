"""The fixed fleet the dashboard tests look at: three agents, 61 executions, one with steps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

AGENTS = ("alpha", "beta", "gamma")
TRIGGERS = ("schedule", "manual", "api", "agent")
RUNNING_ID = "seed-000"
DETAILED_ID = "seed-001"
CHILD_ID = "seed-010"


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    agent_name: str
    status: str
    triggered_by: str
    message: str
    started_at: datetime


def seed_rows(now: datetime) -> list[Row]:
    """61 executions, newest first, nine minutes apart; the newest is still running."""
    rows = []
    for i in range(61):
        if i == 0:
            status = "running"
        elif i % 7 == 3:
            status = "failed"
        elif i % 11 == 5:
            status = "cancelled"
        else:
            status = "success"
        message = f"Summarize invoice #{i}" if i % 5 == 0 else f"Triage inbox batch {i}"
        rows.append(
            Row(
                id=f"seed-{i:03d}",
                agent_name=AGENTS[i % 3],
                status=status,
                triggered_by=TRIGGERS[i % 4],
                message=message,
                started_at=now - timedelta(minutes=i * 9 + 2),
            )
        )
    return rows


INSERT_EXECUTION = """
INSERT INTO executions (org, id, agent_name, status, triggered_by, message, response, error,
    error_type, started_at, completed_at, duration_ms, cost, tokens_in, tokens_out, engine,
    external_id, parent_execution_id, execution_log, first_seen_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $10)
"""

INSERT_COMPONENT = """
INSERT INTO component_executions (org, execution_id, node_id, attempt, agent_name, name, status,
    retry_policy, max_attempts, input, output, error, started_at, completed_at, first_seen_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $13)
"""


async def seed(conn: asyncpg.Connection, org: str, now: datetime) -> list[Row]:
    """Users ada (admin), uma (user: owns alpha, beta shared with her), cleo (client: gamma)."""
    await conn.execute("INSERT INTO organizations (org) VALUES ($1)", org)
    await conn.executemany(
        "INSERT INTO users (org, user_id, role) VALUES ($1, $2, $3)",
        [
            (org, "ada", "admin"),
            (org, "uma", "user"),
            (org, "olga", "user"),
            (org, "cleo", "client"),
        ],
    )
    await conn.executemany(
        "INSERT INTO agents (org, name, display_name, owner) VALUES ($1, $2, $3, $4)",
        [
            (org, "alpha", "Alpha agent", "uma"),
            (org, "beta", "Beta agent", "olga"),
            (org, "gamma", "Gamma agent", "olga"),
        ],
    )
    await conn.executemany(
        "INSERT INTO agent_shares (org, agent_name, user_id) VALUES ($1, $2, $3)",
        [(org, "beta", "uma"), (org, "gamma", "cleo")],
    )
    rows = seed_rows(now)
    records = []
    for i, r in enumerate(rows):
        done = r.status != "running"
        duration = 1500 + 700 * i
        records.append(
            (
                org,
                r.id,
                r.agent_name,
                r.status,
                r.triggered_by,
                r.message,
                "Done." if r.status == "success" else None,
                "TimeoutError: the model did not answer in 30 s" if r.status == "failed" else None,
                "TimeoutError" if r.status == "failed" else None,
                r.started_at,
                r.started_at + timedelta(milliseconds=duration) if done else None,
                duration if done else None,
                round(0.003 * (i % 9 + 1), 4),
                1000 + 37 * i,
                200 + 11 * i,
                "temporal" if r.id == DETAILED_ID else None,
                "wf-seed-001" if r.id == DETAILED_ID else None,
                DETAILED_ID if r.id == CHILD_ID else None,
                "[start] planning\n[tool] fetch_mail -> 503, retrying\n[done] 3 drafts"
                if r.id == DETAILED_ID
                else None,
            )
        )
    await conn.executemany(INSERT_EXECUTION, records)
    t0 = rows[1].started_at
    steps = [
        ("plan", 1, "Plan", "success", "none", 1, {"goal": "triage"}, {"steps": 3}, None, 0, 2),
        ("fetch", 1, "Fetch mail", "failed", "exponential", 3, {"box": "inbox"}, None,
         "HTTP 503 from mail server", 2, 4),
        ("fetch", 2, "Fetch mail", "success", "exponential", 3, {"box": "inbox"}, {"n": 12},
         None, 5, 9),
        ("draft", 1, "Draft replies", "success", "none", 1, None, {"drafts": 3}, None, 9, 20),
    ]  # fmt: skip
    await conn.executemany(
        INSERT_COMPONENT,
        [
            (org, DETAILED_ID, node, attempt, "beta", name, status, policy, max_attempts,
             inp, out, err, t0 + timedelta(seconds=a), t0 + timedelta(seconds=b))
            for node, attempt, name, status, policy, max_attempts, inp, out, err, a, b in steps
        ],
    )  # fmt: skip
    return rows
