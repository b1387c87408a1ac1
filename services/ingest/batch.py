"""Apply one batch of validated events to Postgres in one transaction (the ingest use case)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple

import asyncpg

from services.ingest import repo
from services.ingest.merge import (
    ComponentKey,
    ExecutionKey,
    Finished,
    RowState,
    component_key,
    finished_in,
    fold,
)
from services.ingest.registry import Registration, RegistryCache, registration_of
from shared.events import Event
from shared.validation import Rejected


class Incoming(NamedTuple):
    """A valid event with where it came from in the stream (a tuple: one is built per event)."""

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
    #: What was upserted into the registry tables (orgs, agents, projects, workflows).
    registered: Registration = field(default_factory=Registration)
    executions_written: int = 0
    components_written: int = 0


def _status_rank(versions: dict[str, str]) -> int:
    version = versions.get("status")
    return int(version[0]) if version else -1


def _owners(
    executions: dict[ExecutionKey, str],
    components: dict[ComponentKey, str],
    steps: dict[ExecutionKey, str],
) -> dict[ExecutionKey, str]:
    owners = dict(executions)
    for (org, ex, _node, _attempt), agent in components.items():
        owners.setdefault((org, ex), agent)
    for key, agent in steps.items():
        owners.setdefault(key, agent)
    return owners


@dataclass(slots=True)
class _Plan:
    accepted: list[Incoming] = field(default_factory=list)
    duplicates: list[Event] = field(default_factory=list)
    rejected: list[tuple[int, Rejected]] = field(default_factory=list)
    #: Event rows to look up (their execution or step is stored) and of new rows.
    rows: list[repo.EventRow] = field(default_factory=list)
    rows_of_new: list[repo.EventRow] = field(default_factory=list)


def _plan(
    keyed: list[tuple[Incoming, Event, str, str]],
    stored_owners: dict[ExecutionKey, str],
    stored_ex: dict[ExecutionKey, RowState],
    stored_co: dict[ComponentKey, RowState],
    known: Collection[tuple[str, str]] = (),
) -> _Plan:
    """Which events are refused (another agent's execution), repeated, or to be recorded;
    `known` events (recorded before) are repeats that claim nothing."""
    plan = _Plan()
    owners = dict(stored_owners)
    seen: set[tuple[str, str]] = set()
    for index, (item, ev, ex_id, agent) in enumerate(keyed):
        event_key = (ev.org, ev.event_id)
        if event_key in known:
            plan.duplicates.append(ev)
            continue
        owner = owners.setdefault((ev.org, ex_id), agent)
        if owner != agent:
            plan.rejected.append(
                (
                    index,
                    Rejected(
                        "agent_mismatch",
                        f"execution {ex_id!r} belongs to agent {owner!r}",
                    ),
                )
            )
            continue
        if event_key in seen:
            plan.duplicates.append(ev)
            continue
        seen.add(event_key)
        plan.accepted.append(item)
        # The type as is: a StrEnum is its text (`.value` is a slow property).
        row = (ev.org, ev.event_id, ev.type, agent, ex_id, ev.occurred_at, item.stream_seq)
        if ev.component is None:
            stored = (ev.org, ex_id) in stored_ex
        else:
            stored = component_key(ev) in stored_co
        (plan.rows if stored else plan.rows_of_new).append(row)
    return plan


async def apply_batch(
    conn: asyncpg.Connection, items: list[Incoming], registry: RegistryCache | None = None
) -> Outcome:
    """Record, fold and write `items`; the caller owns the transaction and commits it.

    With a `registry`, orgs and agents written lately are not upserted again; the caller
    passes `outcome.registered` to `registry.remember` once the transaction has committed.
    """
    outcome = Outcome()
    # Each event's execution id and agent, read once (properties cost on the hot path).
    keyed = []
    for item in items:
        ev = item.event
        body = ev.execution
        if body is not None:
            keyed.append((item, ev, body.id, body.agent_name))
        else:
            assert ev.component is not None
            assert ev.agent_name is not None
            keyed.append((item, ev, ev.component.execution_id, ev.agent_name))
    ekeys = sorted({(ev.org, ex_id) for _, ev, ex_id, _ in keyed})
    ckeys = sorted({component_key(ev) for _, ev, _, _ in keyed if ev.component is not None})
    await repo.lock_executions(conn, ekeys)
    stored_ex = await repo.fetch_executions(conn, ekeys)
    stored_co = await repo.fetch_components(conn, ckeys)
    # An execution whose steps arrived before it has no row yet, but its steps name its owner.
    step_owners = await repo.fetch_step_owners(conn, [k for k in ekeys if k not in stored_ex])

    # An execution belongs to the agent that first reported it; another agent of the same
    # org cannot write into it (the subject is trusted only as far as its own agent).
    owners = _owners(
        {k: s.agent_name for k, s in stored_ex.items()},
        {k: s.agent_name for k, s in stored_co.items()},
        step_owners,
    )
    known: set[tuple[str, str]] = set()
    while True:  # each round learns at least one more recorded event: at most len(items)
        plan = _plan(keyed, owners, stored_ex, stored_co, known)
        try:
            fresh = await repo.insert_events(conn, plan.rows, plan.rows_of_new)
            break
        except repo.EventsKnownAlready as exc:
            # Events of new rows recorded before (an event_id reused): duplicates, which claim
            # no execution for their agent (as one arriving alone would not). Decided again.
            known |= exc.keys
    outcome.rejected = plan.rejected
    outcome.duplicates = plan.duplicates
    accepted = plan.accepted
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
    wanted = registration_of(new_events)
    outcome.registered = registry.pending(wanted) if registry is not None else wanted
    if outcome.registered:
        reg = outcome.registered
        await repo.upsert_registry(conn, reg.orgs, reg.agents, reg.projects, reg.workflows)
    outcome.applied = new_events
    return outcome
