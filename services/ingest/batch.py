"""Apply one batch of validated events to Postgres in one transaction (the ingest use case)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from services.ingest import repo
from services.ingest.merge import (
    ComponentKey,
    ExecutionKey,
    Finished,
    component_key,
    execution_key,
    finished_in,
    fold,
)
from shared.events import Event
from shared.validation import Rejected


@dataclass(frozen=True, slots=True)
class Incoming:
    """A valid event with where it came from in the stream."""

    event: Event
    stream_seq: int | None = None


@dataclass(slots=True)
class Outcome:
    applied: list[Event] = field(default_factory=list)
    duplicates: list[Event] = field(default_factory=list)
    #: Events valid on their own but contradicting stored rows (index into the input).
    rejected: list[tuple[int, Rejected]] = field(default_factory=list)
    #: Executions that reached a terminal status in this batch (counted once each).
    finished: list[Finished] = field(default_factory=list)
    executions_written: int = 0
    components_written: int = 0


def _status_rank(versions: dict[str, str]) -> int:
    version = versions.get("status")
    return int(version[0]) if version else -1


def _owners(
    executions: dict[ExecutionKey, str], components: dict[ComponentKey, str]
) -> dict[ExecutionKey, str]:
    owners = dict(executions)
    for (org, ex, _node, _attempt), agent in components.items():
        owners.setdefault((org, ex), agent)
    return owners


async def apply_batch(conn: asyncpg.Connection, items: list[Incoming]) -> Outcome:
    """Record, fold and write `items`; the caller owns the transaction and commits it."""
    outcome = Outcome()
    ekeys = sorted({execution_key(i.event) for i in items})
    ckeys = sorted({component_key(i.event) for i in items if i.event.component is not None})
    await repo.lock_executions(conn, ekeys)
    stored_ex = await repo.fetch_executions(conn, ekeys)
    stored_co = await repo.fetch_components(conn, ckeys)

    # An execution belongs to the agent that first reported it; another agent of the same
    # org cannot write into it (the subject is trusted only as far as its own agent).
    owners = _owners(
        {k: s.agent_name for k, s in stored_ex.items()},
        {k: s.agent_name for k, s in stored_co.items()},
    )
    accepted: list[Incoming] = []
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(items):
        ev = item.event
        owner = owners.setdefault(execution_key(ev), ev.agent)
        if owner != ev.agent:
            outcome.rejected.append(
                (
                    index,
                    Rejected(
                        "agent_mismatch",
                        f"execution {ev.execution_id!r} belongs to agent {owner!r}",
                    ),
                )
            )
            continue
        if (ev.org, ev.event_id) in seen:
            outcome.duplicates.append(ev)
            continue
        seen.add((ev.org, ev.event_id))
        accepted.append(item)

    fresh = await repo.insert_events(
        conn,
        [
            (
                i.event.org,
                i.event.event_id,
                i.event.type.value,
                i.event.agent,
                i.event.execution_id,
                i.event.occurred_at,
                i.stream_seq,
            )
            for i in accepted
        ],
    )
    new_events = []
    for item in accepted:
        if (item.event.org, item.event.event_id) in fresh:
            new_events.append(item.event)
        else:
            outcome.duplicates.append(item.event)
    if not new_events:
        return outcome

    ranks_before = {k: _status_rank(s.versions) for k, s in stored_ex.items()}
    folded = fold(new_events, stored_ex, stored_co)
    outcome.finished = finished_in(ranks_before, folded.executions)
    outcome.executions_written = await repo.write_rows(conn, folded.executions, components=False)
    outcome.components_written = await repo.write_rows(conn, folded.components, components=True)
    await _register(conn, new_events)
    outcome.applied = new_events
    return outcome


async def _register(conn: asyncpg.Connection, events: list[Event]) -> None:
    orgs: set[str] = set()
    agents: dict[tuple[str, str], tuple[str | None, datetime]] = {}
    projects: set[tuple[str, str]] = set()
    workflows: dict[tuple[str, str], str | None] = {}
    for ev in events:
        orgs.add(ev.org)
        ex = ev.execution
        project = ex.project if ex is not None else None
        key = (ev.org, ev.agent)
        prev = agents.get(key)
        seen_at = ev.occurred_at if prev is None else max(prev[1], ev.occurred_at)
        agents[key] = ((prev[0] if prev else None) or project, seen_at)
        if ex is not None:
            if ex.project:
                projects.add((ev.org, ex.project))
            if ex.workflow:
                workflows.setdefault((ev.org, ex.workflow), ex.project)
    await repo.upsert_registry(conn, orgs, agents, projects, workflows)
