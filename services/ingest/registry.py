"""The orgs, agents, projects and workflows a batch mentions, minus what was written lately.

Every batch names the same few orgs, agents and projects. Upserting them all each time cost
~4 ms per 1,000-event batch, mostly agents' `last_seen_at` (a row update each, leaving dead
tuples behind). `RegistryCache` remembers what this process committed: an entry is written
again once it is `ttl` old (so a row removed elsewhere comes back) or, for an agent, when its
`last_seen_at` moves by more than `resolution` or it first gets a project. A batch whose
write finds a remembered org gone (a foreign-key violation) makes the consumer `forget` it all
and write the batch again, rather than dead-letter its events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.events import Event

AgentKey = tuple[str, str]  # org, agent name


@dataclass(slots=True)
class Registration:
    """What to make known: orgs, agents (project, last seen), projects and workflows."""

    orgs: set[str] = field(default_factory=set)
    agents: dict[AgentKey, tuple[str | None, datetime]] = field(default_factory=dict)
    projects: set[tuple[str, str]] = field(default_factory=set)
    workflows: dict[tuple[str, str], str | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.orgs or self.agents or self.projects or self.workflows)


def registration_of(events: Iterable[Event]) -> Registration:
    """Everything the events mention, with each agent's latest sighting and first project."""
    out = Registration()
    agents = out.agents
    for ev in events:
        out.orgs.add(ev.org)
        ex = ev.execution
        project = ex.project if ex is not None else None
        key = (ev.org, ev.agent)
        prev = agents.get(key)
        if prev is None:
            agents[key] = (project, ev.occurred_at)
        else:
            agents[key] = (prev[0] or project, max(prev[1], ev.occurred_at))
        if ex is not None:
            if ex.project:
                out.projects.add((ev.org, ex.project))
            if ex.workflow:
                out.workflows.setdefault((ev.org, ex.workflow), ex.project)
    return out


@dataclass(slots=True)
class _AgentWritten:
    has_project: bool
    last_seen_at: datetime
    at: float


class RegistryCache:
    """What this process committed to the registry tables lately (see the module doc)."""

    def __init__(
        self,
        ttl_s: float = 60.0,
        resolution: timedelta = timedelta(seconds=1),
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_s
        self._resolution = resolution
        self._max = max_entries
        self._clock = clock
        self._written: dict[object, float] = {}
        self._agents: dict[AgentKey, _AgentWritten] = {}

    def _fresh(self, key: object, now: float) -> bool:
        at = self._written.get(key)
        return at is not None and now - at < self._ttl

    def pending(self, wanted: Registration) -> Registration:
        """The part of `wanted` not written lately."""
        now = self._clock()
        out = Registration(
            orgs={o for o in wanted.orgs if not self._fresh(("org", o), now)},
            projects={p for p in wanted.projects if not self._fresh(("project", p), now)},
            workflows={
                w: project
                for w, project in wanted.workflows.items()
                if not self._fresh(("workflow", w), now)
            },
        )
        for key, (project, seen_at) in wanted.agents.items():
            written = self._agents.get(key)
            if (
                written is None
                or now - written.at >= self._ttl
                or seen_at - written.last_seen_at > self._resolution
                or (project is not None and not written.has_project)
            ):
                out.agents[key] = (project, seen_at)
        return out

    def forget(self) -> None:
        """Drop everything remembered (rows were deleted elsewhere)."""
        self._written.clear()
        self._agents.clear()

    def remember(self, committed: Registration) -> None:
        """Record what a committed transaction wrote."""
        if len(self._written) + len(self._agents) > self._max:
            self._written.clear()
            self._agents.clear()
        now = self._clock()
        for org in committed.orgs:
            self._written[("org", org)] = now
        for project_key in committed.projects:
            self._written[("project", project_key)] = now
        for workflow in committed.workflows:
            self._written[("workflow", workflow)] = now
        for key, (project, seen_at) in committed.agents.items():
            before = self._agents.get(key)
            has_project = project is not None or (before is not None and before.has_project)
            latest = seen_at if before is None else max(seen_at, before.last_seen_at)
            self._agents[key] = _AgentWritten(has_project, latest, now)
