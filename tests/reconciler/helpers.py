"""Test helpers: rows as an agent would have left them, a reconciler wired to test engines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import nats
from nats.js import JetStreamContext

from services.reconciler.engines import Engine
from services.reconciler.engines.http import HttpEngine, HttpEngineConfig
from services.reconciler.loop import PassReport, Reconciler
from services.reconciler.publish import EventPublisher
from services.reconciler.rules import Decision, Policy
from services.reconciler.settings import DEFAULT_STATUS_MAP
from shared.db import create_pool
from shared.settings import CommonSettings
from shared.streams import ensure_streams
from shared.subjects import Subjects
from tests.procs import free_port
from tests.reconciler.http_engine import EngineState, serving

#: A policy that fails a row lacking its run id once the grace is over (the rule the drift
#: tests exercise; the default only flags).
FAILING = Policy(
    first_check_grace=timedelta(seconds=0),
    missing_external_id_timeout=timedelta(seconds=60),
    fail_missing_external_id=True,
)

INSERT = """
INSERT INTO executions (org, id, agent_name, status, engine, external_id, started_at,
                        first_seen_at, completed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
"""


async def insert_row(
    conn: asyncpg.Connection,
    org: str,
    execution_id: str,
    *,
    engine: str | None,
    external_id: str | None,
    status: str = "running",
    age_s: float = 3600,
    agent: str = "agent-1",
) -> None:
    started = datetime.now(UTC) - timedelta(seconds=age_s)
    completed = datetime.now(UTC) if status in ("success", "failed", "cancelled") else None
    await conn.execute(
        INSERT, org, execution_id, agent, status, engine, external_id, started, completed
    )


async def make_reconciler(
    database_url: str,
    engines: Mapping[str, Engine],
    js: JetStreamContext | None,
    subjects: Subjects,
    policy: Policy | None = None,
    **kwargs: Any,
) -> Reconciler:
    publisher = None
    if js is not None:
        await ensure_streams(js, CommonSettings(subject_prefix=subjects.prefix))
        publisher = EventPublisher(js, subjects)
    pool = await create_pool(database_url, min_size=1, max_size=4)
    return Reconciler(pool, engines, publisher, policy or Policy(), **kwargs)


async def dry_pass(
    database_url: str, engines: Mapping[str, Engine], policy: Policy | None = None
) -> PassReport:
    """One pass that publishes nothing, by a reconciler made for it and closed after."""
    reconciler = await make_reconciler(database_url, engines, None, Subjects("x"), policy)
    try:
        return await reconciler.run_pass(fix=False)
    finally:
        await reconciler.pool.close()


async def decided_once_listed(
    reconciler: Reconciler,
    pick: Callable[[Decision], bool],
    ready: Callable[[list[Decision]], bool] = bool,
) -> list[Decision]:
    """The decisions `pick` selects from dry passes repeated until `ready` holds for them
    (Temporal's visibility lags a second or two behind a workflow's close), ~10 s at most."""
    found: list[Decision] = []
    for _ in range(50):
        report = await reconciler.run_pass(fix=False)
        found = [d for d in report.decisions if pick(d)]
        if ready(found):
            break
        await asyncio.sleep(0.2)
    return found


async def stream_messages(nats_url: str, subjects: Subjects) -> list[tuple[str, bytes]]:
    """Every message in the test's events stream (none when the stream does not exist)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(subjects.events_stream)
        except nats.js.errors.NotFoundError:
            return []
        found: list[tuple[str, bytes]] = []
        if info.state.messages == 0:
            return found
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(subjects.events_stream, seq)
            assert msg.subject is not None
            assert msg.data is not None
            found.append((msg.subject, msg.data))
        return found
    finally:
        await nc.close()


async def wait_until(
    conn: asyncpg.Connection, sql: str, args: tuple[Any, ...], want: Any, timeout: float = 45
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await conn.fetchval(sql, *args)
        if got == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def http_engine(state: EngineState, **config: Any) -> AsyncIterator[HttpEngine]:
    """An `HttpEngine` on the local test engine serving `state` (fast retries unless given)."""
    async with serving(state, free_port()) as url:
        options = {"status_map": DEFAULT_STATUS_MAP, "backoff_seconds": 0.01, **config}
        adapter = HttpEngine(HttpEngineConfig(base_url=url, **options))
        try:
            yield adapter
        finally:
            await adapter.close()


def ago(seconds: float) -> str:
    """An ISO time `seconds` before now, as an engine reports it (negative: in the future)."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """The base URL of an engine that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
