"""Retention at scale: a batch reads about its own rows however far the pass has come, and the
walk deletes exactly what one statement per batch from the table's start deleted before.

What a batch read is taken from its own plan (auto_explain, sent to this connection), so
nothing here depends on timing."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from shared.db import connect
from shared.retention import (
    DELETE_EXECUTIONS_SQL,
    ORGS_SQL,
    ORPHAN_EXPIRED,
    apply_retention,
    cutoff_for,
)
from tests.conftest import DATABASE_URL, _create_db, _drop_db, with_database
from tests.retention_reference import OLD_DELETE_EVENTS_SQL, OLD_DELETE_ORPHAN_STEPS_SQL

NOW = datetime(2026, 3, 1, tzinfo=UTC)

_SCANS = {"Seq Scan", "Tid Range Scan", "Bitmap Heap Scan", "Index Scan", "Index Only Scan"}


async def _old_pass(conn: asyncpg.Connection, batch: int) -> dict[str, tuple[int, int, int]]:
    """The pass before the walk, batch for batch: each statement searched from the start."""
    done: dict[str, tuple[int, int, int]] = {}
    for org_row in await conn.fetch(ORGS_SQL):
        org, cutoff = org_row["org"], cutoff_for(NOW, org_row["retention_days"])
        executions = components = events = 0
        while True:
            row = await conn.fetchrow(DELETE_EXECUTIONS_SQL, org, cutoff, batch)
            executions += row["executions"]
            components += row["components"]
            if row["executions"] < batch:
                break
        while True:
            deleted = int((await conn.execute(OLD_DELETE_ORPHAN_STEPS_SQL, org, cutoff, batch))[7:])
            components += deleted
            if deleted < batch:
                break
        while True:
            deleted = int((await conn.execute(OLD_DELETE_EVENTS_SQL, org, cutoff, batch))[7:])
            events += deleted
            if deleted < batch:
                break
        done[org] = (executions, components, events)
    return done


async def _left(conn: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], ...]:
    return (
        [tuple(r) for r in await conn.fetch("SELECT org, id FROM executions ORDER BY 1, 2")],
        [
            tuple(r)
            for r in await conn.fetch(
                "SELECT org, execution_id, node_id, attempt FROM component_executions"
                " ORDER BY 1, 2, 3, 4"
            )
        ],
        [tuple(r) for r in await conn.fetch("SELECT org, event_id FROM events ORDER BY 1, 2")],
    )


async def _mixed(conn: asyncpg.Connection) -> None:
    """Three orgs (retention 3, 10, 30 days): finished, failed, pending and running executions,
    kept or not by their own or their steps' last write; steps whose execution never came, some
    still reporting, one from an agent clock in 2199; events in no time order, some in space
    vacuum freed in the table's first pages."""
    rng = random.Random(20260301)
    await conn.execute(
        "INSERT INTO organizations (org, retention_days) VALUES ('a', 3), ('b', 10), ('c', 30)"
    )
    executions, steps, events = [], [], []
    for org in ("a", "b", "c"):
        for i in range(120):
            started = NOW - timedelta(days=rng.uniform(0, 20))
            status = rng.choice(["success", "failed", "running", "pending", "success"])
            touched = started + timedelta(days=rng.choice([0, 0, rng.uniform(0, 20)]))
            executions.append((org, f"x{i}", status, started, min(touched, NOW)))
            for node in range(rng.randint(0, 4)):
                step_at = started + timedelta(hours=node)
                wrote = step_at + timedelta(days=rng.choice([0, 0, rng.uniform(0, 20)]))
                step_status = rng.choice(["success", "running", "failed"])
                steps.append((org, f"x{i}", f"n{node}", 1, step_status, step_at, min(wrote, NOW)))
        for i in range(80):
            started = NOW - timedelta(days=rng.uniform(0, 20))
            if i == 0:
                started = datetime(2199, 1, 1, tzinfo=UTC)
            for node in range(rng.randint(1, 4)):
                wrote = NOW - timedelta(days=rng.choice([rng.uniform(0, 20), 15.0, 0.5]))
                step_status = rng.choice(["success", "running", "pending", "success"])
                steps.append((org, f"o{i}", f"n{node}", node % 2 + 1, step_status, started, wrote))
    await conn.executemany(
        "INSERT INTO executions (org, id, agent_name, status, started_at, first_seen_at,"
        " updated_at) VALUES ($1, $2, 'ruby', $3, $4, $4, $5)",
        executions,
    )
    await conn.executemany(
        "INSERT INTO component_executions (org, execution_id, node_id, attempt, agent_name,"
        " status, started_at, first_seen_at, updated_at) VALUES ($1, $2, $3, $4, 'ruby', $5,"
        " $6, $6, $7)",
        steps,
    )
    for i in range(6000):
        org = rng.choice("aabbc")
        events.append((org, f"e{i}", NOW - timedelta(days=rng.uniform(0, 20))))
    insert_events = (
        "INSERT INTO events (org, event_id, type, agent_name, execution_id, occurred_at,"
        " received_at) VALUES ($1, $2, 'execution_completed', 'ruby', 'x', $3, $3)"
    )
    await conn.executemany(insert_events, events[:4000])
    await conn.execute("DELETE FROM events WHERE event_id LIKE '%3' OR event_id LIKE '%7'")
    await conn.execute("VACUUM events")  # the rest lands in the first pages' freed space
    await conn.executemany(insert_events, events[4000:])


async def test_the_walk_leaves_exactly_what_the_batches_from_the_start_left(
    fresh_database_url: str,
) -> None:
    conn = await connect(fresh_database_url)
    try:
        await _mixed(conn)
    finally:
        await conn.close()
    copy = await _create_db(urlsplit(fresh_database_url).path.lstrip("/"))
    try:
        old = await connect(with_database(DATABASE_URL, copy))
        new = await connect(fresh_database_url)
        try:
            old_counts = await _old_pass(old, 7)
            report = await apply_retention(new, now=NOW, batch_size=7)
            assert {o.org: (o.executions, o.components, o.events) for o in report.orgs} == (
                old_counts
            )
            assert min(old_counts["a"]) > 7  # several batches of each kind
            assert old_counts["c"] == (0, 0, 0)
            assert await _left(new) == await _left(old)
        finally:
            await old.close()
            await new.close()
    finally:
        await _drop_db(copy)


class _Plans:
    """The plans of this connection's statements, as auto_explain sends them."""

    def __init__(self) -> None:
        self.plans: list[dict[str, Any]] = []

    async def attach(self, conn: asyncpg.Connection) -> None:
        await conn.execute("LOAD 'auto_explain'")
        await conn.execute(
            "SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on;"
            " SET auto_explain.log_buffers = on; SET auto_explain.log_timing = off;"
            " SET auto_explain.log_format = json; SET client_min_messages = log"
        )
        conn.add_log_listener(self._got)

    def _got(self, _conn: object, message: Any) -> None:
        text = str(message.message)
        if text.startswith("duration:") and "{" in text:
            self.plans.append(json.loads(text[text.index("{") :]))

    def deletes(self, table: str) -> list[dict[str, Any]]:
        """The plans of the statements that deleted from `table`, in order."""
        return [p for p in self.plans if f"DELETE FROM {table}" in p["Query Text"]]


def _outer_scans(
    node: dict[str, Any], table: str, nested: bool = False
) -> Iterator[dict[str, Any]]:
    """Scans of `table` that walk it (not a per-row probe in a subplan, not a fetch by address)."""
    nested = nested or node.get("Parent Relationship") == "SubPlan"
    if not nested and node["Node Type"] in _SCANS and node.get("Relation Name") == table:
        yield node
    for child in node.get("Plans", []):
        yield from _outer_scans(child, table, nested)


def _read(plan: dict[str, Any], table: str) -> tuple[int, int]:
    """Pages read and rows examined by the scans that walk `table` in one statement."""
    scans = list(_outer_scans(plan["Plan"], table))
    pages = sum(
        int(n.get("Shared Hit Blocks", 0)) + int(n.get("Shared Read Blocks", 0)) for n in scans
    )
    rows = sum(
        (int(n["Actual Rows"]) + int(n.get("Rows Removed by Filter", 0))) * int(n["Actual Loops"])
        for n in scans
    )
    return pages, rows


async def test_a_later_events_batch_reads_no_more_pages_than_the_first(
    fresh_database_url: str,
) -> None:
    """Each batch searched from the table's first page, through every page earlier batches had
    emptied (until vacuum): the 20th batch read 20 times the pages of the first."""
    batch = 1000
    conn = await connect(fresh_database_url)
    try:
        await conn.execute("INSERT INTO organizations (org, retention_days) VALUES ('a', 30)")
        await conn.execute("INSERT INTO organizations (org, retention_days) VALUES ('b', 30)")
        # 60 days of events in received order, a fourth of them another org's; half expired.
        await conn.execute(
            "INSERT INTO events (org, event_id, type, agent_name, execution_id, occurred_at,"
            " received_at) SELECT CASE WHEN g % 4 = 0 THEN 'b' ELSE 'a' END, 'e' || g,"
            " 'execution_completed', 'ruby', 'x', t, t FROM generate_series(1, 60000) AS g,"
            " LATERAL (SELECT $1::timestamptz - (60 - g / 1000.0) * interval '1 day') AS at(t)",
            NOW,
        )
        await conn.execute("VACUUM ANALYZE events")
        per_page = await conn.fetchval(
            "SELECT reltuples / relpages FROM pg_class WHERE oid = 'events'::regclass"
        )
        plans = _Plans()
        await plans.attach(conn)
        (a,) = (await apply_retention(conn, now=NOW, batch_size=batch, orgs=["a"])).orgs
        assert a.events == 22_500
        reads = [_read(p, "events") for p in plans.deletes("events")]
        assert len(reads) >= 22
        # The pages holding a batch of this org's events (three in four of a page's rows).
        own = batch / (per_page * 0.75)
        for number, (pages, _rows) in enumerate(reads, 1):
            assert pages <= 2.5 * own + 4, (number, [p for p, _ in reads], round(own))
        left = await conn.fetchval(
            "SELECT count(*) FROM events WHERE received_at < $1", NOW - timedelta(days=30)
        )
        assert left == 7_499  # org b's (g < 30,000, one in four)
    finally:
        await conn.close()


async def test_a_later_orphan_steps_batch_examines_no_more_steps_than_its_window(
    fresh_database_url: str,
) -> None:
    """Each orphan-step batch scanned the org's steps from the start for `LIMIT` expired ones
    (no index serves their age): every batch examined the org's 60,000 steps, to delete
    5,000."""
    batch = 5000
    conn = await connect(fresh_database_url)
    try:
        await conn.execute("INSERT INTO organizations (org, retention_days) VALUES ('a', 30)")
        # 10,000 executions within retention with 4 steps each (their steps' times are older),
        # then 8,000 runs that never got a row, 4 steps each, half of them expired.
        await conn.execute(
            "INSERT INTO executions (org, id, agent_name, status, started_at, first_seen_at)"
            " SELECT 'a', 'x' || g, 'ruby', 'success', t, t FROM generate_series(1, 10000) g,"
            " LATERAL (SELECT $1::timestamptz - (g % 29) * interval '1 day') AS at(t)",
            NOW,
        )
        for prefix, runs in (("x", 10000), ("o", 8000)):
            await conn.execute(
                "INSERT INTO component_executions (org, execution_id, node_id, attempt,"
                " agent_name, status, started_at, first_seen_at, updated_at)"
                " SELECT 'a', $2 || g, 'n' || k, 1, 'ruby', 'success', t, t, t"
                " FROM generate_series(1, $3::int) g, generate_series(1, 4) k,"
                " LATERAL (SELECT $1::timestamptz - (g % 60) * interval '1 day') AS at(t)",
                NOW,
                prefix,
                runs,
            )
        await conn.execute("VACUUM ANALYZE")
        expired = await conn.fetchval(
            "SELECT count(*) FROM component_executions c WHERE " + ORPHAN_EXPIRED,
            "a",
            NOW - timedelta(days=30),
        )
        plans = _Plans()
        await plans.attach(conn)
        (a,) = (await apply_retention(conn, now=NOW, batch_size=batch)).orgs
        assert (a.executions, a.components) == (0, expired)
        assert expired > 2 * batch
        orphan_batches = [
            _read(p, "component_executions")
            for p in plans.deletes("component_executions")
            if "DELETE FROM executions" not in p["Query Text"]
        ]
        assert len(orphan_batches) >= 3
        # A batch walks a window of at most twice its size of the org's steps (the delete by
        # primary key of an expired execution's steps is a probe, not a walk).
        for number, (_pages, rows) in enumerate(orphan_batches, 1):
            assert rows <= 2 * batch, (number, [r for _, r in orphan_batches])
    finally:
        await conn.close()
