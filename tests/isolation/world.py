"""Two orgs with people of every role, owned/shared/unshared agents and executions, for the
isolation probes and the fuzzers. Every row is kept so that a test can compute, by brute
force, exactly what a given caller may see."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import nats
from nats.js.errors import NotFoundError

from shared.auth import mint_token
from shared.db import connect
from shared.subjects import Subjects
from tests.procs import Service, running
from tests.query.helpers import add_agent, add_org, insert, make_rows

SECRET = "isolation-world-secret-0123456789-abcdef-0123456789"

# Agent names are deliberately the same in both orgs (plus one of each org's own), so that a
# filter by name that forgot the org would show up in the counts.
AGENTS_A = ("alpha", "beta", "gamma")
AGENTS_B = ("alpha", "beta", "delta")


@dataclass(frozen=True)
class Caller:
    """One probe identity: who, and which agents of its org it may see (None: all)."""

    label: str
    org: str
    user: str
    role: str
    agents: frozenset[str] | None

    @property
    def token(self) -> str:
        return mint_token(secret=SECRET, org=self.org, user=self.user, role=self.role)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def sees(self, row: dict[str, Any]) -> bool:
        return row["org"] == self.org and (self.agents is None or row["agent_name"] in self.agents)


@dataclass
class World:
    org_a: str
    org_b: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    callers: dict[str, Caller] = field(default_factory=dict)

    def visible(self, caller: Caller) -> list[dict[str, Any]]:
        return [r for r in self.rows if caller.sees(r)]

    def hidden(self, caller: Caller) -> list[dict[str, Any]]:
        return [r for r in self.rows if not caller.sees(r)]

    def one_hidden(self, caller: Caller, **match: Any) -> dict[str, Any] | None:
        for row in self.hidden(caller):
            if all(row.get(k) == v for k, v in match.items()):
                return row
        return None

    def canaries(self, caller: Caller) -> set[str]:
        """Strings that exist only in rows this caller may not see (ids, marked messages)."""
        seen_ids = {r["id"] for r in self.visible(caller)}
        out = {r["id"] for r in self.hidden(caller)} - seen_ids
        other = self.org_b if caller.org == self.org_a else self.org_a
        out.add(other)
        return out


def _people(org: str, b_side: bool) -> list[tuple[str, str]]:
    people = [("boss", "admin"), ("owner", "user"), ("cust", "client")]
    if not b_side:
        people.append(("sharer", "user"))
        people.append(("nobody", "user"))
    return people


async def seed_world(conn: asyncpg.Connection, *, per_agent: int = 12) -> World:
    """Org A: alpha (owned by `owner`), beta (owned by `boss`, shared with `sharer`, `cust`),
    gamma (no owner, unshared); users boss/owner/sharer/cust/nobody. Org B: alpha (owned by
    `owner`), beta (shared with `cust`), delta; users boss/owner/cust."""
    tag = uuid.uuid4().hex[:8]
    world = World(org_a=f"isoa-{tag}", org_b=f"isob-{tag}")
    now = datetime.now(UTC)
    for org, agents, b_side in ((world.org_a, AGENTS_A, False), (world.org_b, AGENTS_B, True)):
        await add_org(conn, org)
        await conn.executemany(
            "INSERT INTO users (org, user_id, role) VALUES ($1, $2, $3)",
            [(org, u, r) for u, r in _people(org, b_side)],
        )
        await add_agent(conn, org, "alpha", owner="owner", display_name=f"Alpha of {org}")
        await add_agent(
            conn, org, "beta", owner="boss", shared_with=("cust",) if b_side else ("sharer", "cust")
        )
        await add_agent(conn, org, agents[2])
        rows = make_rows(org, agents, per_agent * len(agents), seed=len(org) + int(b_side), now=now)
        for i, row in enumerate(rows):
            row["agent_name"] = agents[i % len(agents)]
            row["message"] = f"[{org}] {row['message']}"
            row["workflow"] = row["workflow"] or f"wf-{org}"
            # Running rows everywhere: terminate must reach the NATS step, stats count them.
            if i % 7 == 0:
                row.update(status="running", completed_at=None, duration_ms=None, error=None)
                row["started_at"] = row["started_at"] or now - timedelta(minutes=5)
            if i % 5 == 0:
                row["execution_log"] = f"log of {row['id']} in {org}"
        await insert(conn, rows)
        world.rows += rows
        comps = [
            {
                "org": org,
                "execution_id": row["id"],
                "node_id": f"n{k}",
                "attempt": 1,
                "agent_name": row["agent_name"],
                "name": f"step-{org}-{k}",
                "status": "success",
                "first_seen_at": now,
            }
            for row in rows[:10]
            for k in range(2)
        ]
        await conn.executemany(
            "INSERT INTO component_executions "
            "(org, execution_id, node_id, attempt, agent_name, name, status, first_seen_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [tuple(c.values()) for c in comps],
        )
        world.components += comps
    a, b = world.org_a, world.org_b
    for caller in (
        Caller("a-admin", a, "boss", "admin", None),
        Caller("a-owner", a, "owner", "user", frozenset({"alpha"})),
        Caller("a-sharer", a, "sharer", "user", frozenset({"beta"})),
        Caller("a-nobody", a, "nobody", "user", frozenset()),
        Caller("a-client", a, "cust", "client", frozenset({"beta"})),
        Caller("b-admin", b, "boss", "admin", None),
        Caller("b-owner", b, "owner", "user", frozenset({"alpha"})),
        Caller("b-client", b, "cust", "client", frozenset({"beta"})),
    ):
        world.callers[caller.label] = caller
    return world


def query_env(nats_url: str, database_url: str, prefix: str | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "FLEETWATCH_SUBJECT_PREFIX": prefix or f"iso{uuid.uuid4().hex[:8]}",
        "FLEETWATCH_JWT_SECRET": SECRET,
        # Probes and fuzzers fire thousands of requests: the limiter is not under test here.
        "QUERY_RATE_LIMIT_PER_MINUTE": "1000000",
        "QUERY_RATE_LIMIT_BURST": "100000",
    }


@asynccontextmanager
async def seeded_query(
    nats_url: str, database_url: str, extra_env: Iterable[tuple[str, str]] = ()
) -> AsyncIterator[tuple[Service, World]]:
    """A `fleetwatch query` process over a database holding a fresh world."""
    conn = await connect(database_url)
    try:
        world = await seed_world(conn)
    finally:
        await conn.close()
    async with running("query", query_env(nats_url, database_url), extra_env=dict(extra_env)) as q:
        yield q, world


async def delete_streams(nats_url: str, subjects: Subjects) -> None:
    """Remove the event and dead-letter streams a test made for its subject prefix."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for stream in (subjects.events_stream, subjects.dlq_stream):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)
    finally:
        await nc.close()
