"""What-goes-in-must-come-out checks shared by the ingest, chaos and fuzz tests."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from nats.js import JetStreamContext

from services.ingest.merge import EXECUTION_FIELDS, fold
from shared.events import Event
from shared.subjects import Subjects
from tests.ingest.events_factory import to_wire

_TRACE = bool(os.environ.get("FLEETWATCH_TEST_TRACE"))
_TERMINAL = {"success", "failed", "cancelled"}
_TERMINAL_TYPE = {
    "execution_completed": "success",
    "execution_failed": "failed",
    "execution_cancelled": "cancelled",
}


async def publish(
    js: JetStreamContext, subjects: Subjects, events: list[Event], chunk: int = 300
) -> None:
    """Publish `events` pipelined in chunks, each with its event id as `Nats-Msg-Id`."""
    for start in range(0, len(events), chunk):
        await asyncio.gather(
            *(
                js.publish(
                    subjects.event(e.org, e.agent, e.type),
                    to_wire(e),
                    headers={"Nats-Msg-Id": e.event_id},
                )
                for e in events[start : start + chunk]
            )
        )


async def wait_for_count(
    conn: asyncpg.Connection, sql: str, args: tuple[Any, ...], expected: int, timeout: float = 60
) -> int:
    """Poll `sql` (a count) until it reaches `expected` or `timeout` passes; return the count."""
    deadline = time.monotonic() + timeout
    while True:
        count: int = await conn.fetchval(sql, *args)
        if count >= expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.2)


def stored_equals_fold(rows: list[asyncpg.Record], events: list[Event]) -> list[str]:
    """Differences between stored execution rows and the pure fold of the events (empty: equal)."""
    folded = fold(events).executions
    problems = []
    by_key = {(r["org"], r["id"]): r for r in rows}
    if set(by_key) != set(folded):
        problems.append(f"keys differ: {len(by_key)} stored vs {len(folded)} folded")
    for key, state in folded.items():
        row = by_key.get(key)
        if row is None:
            continue
        for name in EXECUTION_FIELDS:
            want = state.values.get(name)
            if want is not None and hasattr(want, "value"):
                want = want.value
            if row[name] != want:
                problems.append(f"{key} {name}: stored {row[name]!r} != folded {want!r}")
        if row["versions"] != state.versions:
            problems.append(f"{key} versions differ")
    return problems


def status_regressions(rows: list[asyncpg.Record], events: Iterable[Event]) -> list[str]:
    """Executions that saw a terminal event but are stored with a non-terminal status."""
    terminal: dict[tuple[str, str], str] = {}
    for ev in events:
        if ev.type.value in _TERMINAL_TYPE:
            terminal[(ev.org, ev.execution_id)] = _TERMINAL_TYPE[ev.type.value]
    problems = []
    for row in rows:
        key = (row["org"], row["id"])
        if key in terminal and row["status"] not in _TERMINAL:
            problems.append(f"{key}: terminal event seen but status is {row['status']!r}")
    return problems


@dataclass
class Verdict:
    """The outcome of checking one org's stored data against what was published and acked."""

    published: int
    acked: int
    stored: int
    lost: set[str] = field(default_factory=set)
    phantom: set[str] = field(default_factory=set)
    duplicated: int = 0
    fold_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        # A run in which nothing was acked (or stored) proved nothing: not a pass.
        proved = self.acked > 0 and self.stored > 0
        return proved and not (self.lost or self.phantom or self.duplicated or self.fold_problems)

    def explain(self) -> str:
        return (
            f"published={self.published} acked={self.acked} stored={self.stored} "
            f"lost={sorted(self.lost)[:10]} phantom={sorted(self.phantom)[:10]} "
            f"duplicated={self.duplicated} fold={self.fold_problems[:10]}"
        )


async def verify_org(
    conn: asyncpg.Connection, org: str, published: dict[str, Event], acked: set[str]
) -> Verdict:
    """Every acked event stored (set equality by event_id), none twice, rows equal the fold.

    An event published but never acked (its publisher gave up) may or may not be stored; both
    are correct, but whatever is stored must have been published.
    """
    ids = [r["event_id"] for r in await conn.fetch("SELECT event_id FROM events WHERE org=$1", org)]
    stored = set(ids)
    rows = await conn.fetch("SELECT * FROM executions WHERE org = $1", org)
    row_keys = [(r["org"], r["id"]) for r in rows]
    duplicated = (len(ids) - len(stored)) + (len(row_keys) - len(set(row_keys)))
    events = [published[i] for i in stored if i in published]
    problems = stored_equals_fold(list(rows), events) + status_regressions(list(rows), events)
    return Verdict(
        published=len(published),
        acked=len(acked),
        stored=len(stored),
        lost=acked - stored,
        phantom=stored - set(published),
        duplicated=duplicated,
        fold_problems=problems,
    )


async def wait_stored(
    conn: asyncpg.Connection, org: str, ids: set[str], timeout: float = 60
) -> float | None:
    """Seconds until every id in `ids` is in the events table, or None after `timeout`."""
    started = time.monotonic()
    wanted = sorted(ids)
    while True:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM events WHERE org = $1 AND event_id = ANY($2::text[])",
            org,
            wanted,
        )
        elapsed = time.monotonic() - started
        if _TRACE:
            print(f"wait_stored {elapsed:6.1f}s {count}/{len(wanted)}", flush=True)
        if count >= len(wanted):
            return elapsed
        if elapsed > timeout:
            return None
        await asyncio.sleep(0.1)
