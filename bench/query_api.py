"""Query API latency at scale: HTTP (real uvicorn process) against the same SQL run raw.

    .venv/bin/python -m bench.query_api [--quick] [--rows N] [--iterations N] [--reuse]
        [--cases search,stats,...]

Loads N executions (default 1,000,000; --quick 50,000) over 50 agents and 3 orgs into a
dedicated database `fwbench_query_<N>` with COPY (`--reuse` keeps one of a previous run with
the same row count, migrated up to date), then for each case times, interleaved round by
round: the API over HTTP with its count and stats caches off, the very SQL the API then runs
(same where-builder, same statements, same RLS transaction) through asyncpg, and the API with
its default caches. Prints a table and writes bench/results/query_api.json (`--quick`:
test-artifacts/bench-quick/, so that a smoke run never replaces the full run's figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from bench.common import results_dir
from services.query import repo
from services.query.cursor import CursorKey, encode_cursor
from services.query.filters import ListFilters, search_pattern
from services.query.where import Where, after, among, filtered
from shared.access import enter_org
from shared.auth import mint_token
from shared.db import connect
from shared.migrate import migrate

SECRET = "bench-secret-0123456789abcdef-0123456789"
ORGS = ("bench-a", "bench-b", "bench-c")
STATUSES = ("success",) * 14 + ("failed",) * 3 + ("running", "pending", "cancelled")
TRIGGERS = ("manual", "schedule", "agent", "user", "mcp", "api", "webhook")
WORDS = (
    "invoice", "summary", "report", "deploy", "refund", "weather", "translate", "classify",
    "extract", "forecast", "schedule", "audit", "reconcile", "onboarding", "churn",
)  # fmt: skip
COPY_COLUMNS = (
    "org", "id", "agent_name", "project", "workflow", "status", "triggered_by", "message",
    "response", "error", "started_at", "completed_at", "duration_ms", "cost", "tokens_in",
    "tokens_out", "first_seen_at",
)  # fmt: skip


def _db_url(base: str, name: str) -> str:
    return urlunsplit(urlsplit(base)._replace(path=f"/{name}"))


def _rows(n: int, now: datetime, seed: int = 42) -> Any:
    rnd = random.Random(seed)
    agents = [f"agent-{i:02d}" for i in range(50)]
    span = 30 * 86_400
    for i in range(n):
        agent_index = rnd.randrange(50)
        org = ORGS[agent_index % 3]
        status = rnd.choice(STATUSES)
        started = now - timedelta(seconds=rnd.random() * span)
        duration = rnd.randint(200, 120_000) if status in ("success", "failed") else None
        word = rnd.choice(WORDS)
        yield (
            org, f"ex-{i:08d}", agents[agent_index], f"project-{agent_index % 5}",
            f"wf-{agent_index % 10}-{rnd.randrange(3)}", status, rnd.choice(TRIGGERS),
            f"Please {word} the data for customer {rnd.randrange(100_000)} and report back.",
            f"Finished {word}: {rnd.randrange(10_000)} records" if status == "success" else None,
            "upstream timeout" if status == "failed" else None,
            started, started + timedelta(milliseconds=duration) if duration else None, duration,
            round(rnd.random() * 0.05, 6), rnd.randrange(5000), rnd.randrange(2000), started,
        )  # fmt: skip


async def reusable(base_url: str, name: str, n: int) -> str | None:
    """The URL of an already loaded bench database of `n` rows (migrated up to date), or None."""
    admin = await asyncpg.connect(base_url)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return None
    finally:
        await admin.close()
    url = _db_url(base_url, name)
    conn = await connect(url)
    try:
        if await conn.fetchval("SELECT to_regclass('executions')") is None:
            return None
        if await conn.fetchval("SELECT count(*) FROM executions") != n:
            return None
        if await migrate(conn):  # a new index: refresh the planner's statistics too
            await conn.execute("VACUUM ANALYZE executions")
    finally:
        await conn.close()
    return url


async def load(base_url: str, name: str, n: int) -> str:
    admin = await asyncpg.connect(base_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = _db_url(base_url, name)
    conn = await connect(url)
    try:
        await migrate(conn)
        for org in ORGS:
            await conn.execute("INSERT INTO organizations (org) VALUES ($1)", org)
        for i in range(50):
            await conn.execute(
                "INSERT INTO agents (org, name, display_name, owner) VALUES ($1, $2, $3, 'owner')",
                ORGS[i % 3], f"agent-{i:02d}", f"Agent {i}",
            )  # fmt: skip
        now = datetime.now(UTC)
        rows = _rows(n, now)
        chunk = 50_000
        while True:
            batch = [r for _, r in zip(range(chunk), rows, strict=False)]
            if not batch:
                break
            await conn.copy_records_to_table("executions", records=batch, columns=COPY_COLUMNS)
        await conn.execute("VACUUM ANALYZE executions")
    finally:
        await conn.close()
    return url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_query(db_url: str, **env: str) -> tuple[asyncio.subprocess.Process, str]:
    port = _free_port()
    full_env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "FLEETWATCH_JWT_SECRET": SECRET,
        "FLEETWATCH_LOG_LEVEL": "WARNING",
        "QUERY_PORT": str(port),
        "QUERY_RATE_LIMIT_PER_MINUTE": "1000000",
        "QUERY_RATE_LIMIT_BURST": "100000",
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.cli", "query", env=full_env
    )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("query did not become ready")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


async def timed(fn: Callable[[], Awaitable[Any]], iterations: int) -> list[float]:
    return (await interleaved({"x": fn}, iterations))["x"]


async def interleaved(
    fns: dict[str, Callable[[], Awaitable[Any]]], iterations: int
) -> dict[str, list[float]]:
    """Each function once per round, in a rotating order, so that the machine's load (shared,
    2 cores) weighs on all of them alike."""
    names = list(fns)
    for _ in range(min(5, iterations)):  # warm plans, pool and caches
        for name in names:
            await fns[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(iterations):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter()
            await fns[name]()
            out[name].append(time.perf_counter() - started)
    return out


async def raw_list(
    pool: asyncpg.Pool,
    org: str,
    filters: ListFilters,
    where: Where,
    limit: int,
    cursor: CursorKey | None,
) -> None:
    """The statements `run_list` sends for one page when its count is not cached."""
    async with pool.acquire() as conn, conn.transaction():
        await enter_org(conn, org)
        candidates = walk = None
        base = where
        if filters.search is not None:  # the search's candidate ids (migration 0012)
            pattern = search_pattern(filters.search)
            candidates = await repo.search_candidates(conn, pattern, cap=2000)
            if candidates is not None:
                base = where = among(where, candidates)
            else:  # a common term: the ILIKE over the list walked in order
                where = filtered(org, None, replace(filters, search=None))
                walk = pattern
        if cursor is not None:
            where = after(where, cursor)
        rows = await repo.list_page(conn, where, limit=limit + 1, offset=0, search=walk)
        if cursor is None and len(rows) <= limit:
            return  # the page is the whole list: its length is the count
        if candidates is not None:
            await repo.count(conn, base, cap=10_000)
        elif filters.search is not None:
            unsearched = filtered(org, None, replace(filters, search=None))
            await repo.search_count(conn, unsearched, search_pattern(filters.search), budget=2000)
        else:
            await repo.count(conn, filtered(org, None, filters), cap=10_000)


async def raw_stats(pool: asyncpg.Pool, org: str, hours: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await enter_org(conn, org)
        since = datetime.now(UTC) - timedelta(hours=hours)
        await repo.stats_groups(conn, filtered(org, None, ListFilters(start_time=since)))
        await repo.running_count(conn, filtered(org, None, ListFilters()))
        await repo.display_names(conn, org)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    t0 = time.perf_counter()
    name = f"fwbench_query_{args.rows}"
    reused = await reusable(base_url, name, args.rows) if args.reuse else None
    db_url = reused or await load(base_url, name, args.rows)
    load_s = time.perf_counter() - t0
    print(
        f"{'reused' if reused else 'loaded'} {args.rows:,} executions ({load_s:.1f} s)", flush=True
    )
    if args.load_only:
        return {}
    org = ORGS[0]
    headers = {
        "Authorization": f"Bearer {mint_token(secret=SECRET, org=org, user='b', role='admin')}"
    }
    pool = await asyncpg.create_pool(
        db_url, min_size=2, max_size=2, server_settings={"plan_cache_mode": "force_custom_plan"}
    )
    assert pool is not None
    deep_id, deep_at = await pool.fetchrow(
        "SELECT id, sort_at FROM executions WHERE org = $1 ORDER BY sort_at DESC, id DESC "
        "OFFSET $2 LIMIT 1",
        org, min(100_000, args.rows // 6),
    )  # fmt: skip
    deep = encode_cursor(CursorKey(deep_at, deep_id))
    window_start = datetime.now(UTC) - timedelta(days=3)
    cases: list[tuple[str, dict[str, Any], ListFilters, str | None]] = [
        ("first page", {}, ListFilters(), None),
        ("deep cursor page", {"cursor": deep}, ListFilters(), deep),
        ("agent_name", {"agent_name": "agent-03"}, ListFilters(agent_name=("agent-03",)), None),
        ("status", {"status": "failed"}, ListFilters(status=("failed",)), None),
        ("triggered_by", {"triggered_by": "mcp"}, ListFilters(triggered_by=("mcp",)), None),
        ("project", {"project": "project-1"}, ListFilters(project=("project-1",)), None),
        ("workflow", {"workflow": "wf-3-1"}, ListFilters(workflow=("wf-3-1",)), None),
        (
            "time window",
            {"start_time": window_start.isoformat()},
            ListFilters(start_time=window_start),
            None,
        ),
        (
            "3 filters",
            {"agent_name": "agent-03", "status": "success", "triggered_by": "schedule"},
            ListFilters(agent_name=("agent-03",), status=("success",), triggered_by=("schedule",)),
            None,
        ),
        # What people search for: one customer (rare: ~40 rows of the org) and a common word
        # (1 row in 15). "customer" itself is in every message.
        (
            "search selective",
            {"search": "customer 4242"},
            ListFilters(search="customer 4242"),
            None,
        ),
        ("search common", {"search": "refund"}, ListFilters(search="refund"), None),
    ]
    results: dict[str, Any] = {}
    wanted = [w.strip() for w in (args.cases or "").split(",") if w.strip()]

    def selected(name: str) -> bool:
        """`--cases search,stats`: the cases whose name contains one of these (default all)."""
        return not wanted or any(w in name for w in wanted)

    # Two servers side by side: `cold` counts on every page and computes stats on every
    # request (what the raw SQL does), `warm` has the default caches (count 5 s, stats 5 s).
    cold_proc, cold_url = await start_query(db_url, QUERY_COUNT_TTL_S="0", QUERY_STATS_TTL_S="0")
    warm_proc, warm_url = await start_query(db_url)
    try:
        async with (
            httpx.AsyncClient(base_url=cold_url, headers=headers, timeout=60) as cold,
            httpx.AsyncClient(base_url=warm_url, headers=headers, timeout=60) as warm,
        ):
            for name, params, filters, cursor in cases:
                if not selected(name):
                    continue
                base = filtered(org, None, filters)
                key = CursorKey(deep_at, deep_id) if cursor else None

                async def http_cold(p: dict[str, Any] = params) -> None:
                    reply = await cold.get("/api/executions", params={**p, "limit": 50})
                    reply.raise_for_status()

                async def http_warm(p: dict[str, Any] = params) -> None:
                    reply = await warm.get("/api/executions", params={**p, "limit": 50})
                    reply.raise_for_status()

                async def raw_call(
                    f: ListFilters = filters, w: Where = base, c: CursorKey | None = key
                ) -> None:
                    await raw_list(pool, org, f, w, 50, c)

                results[name] = await interleaved(
                    {"http": http_cold, "raw": raw_call, "http_cached": http_warm},
                    args.iterations,
                )
                print(f"  {name}: done", flush=True)

            async def stats_cold() -> None:
                (await cold.get("/api/executions/stats")).raise_for_status()

            async def stats_warm() -> None:
                (await warm.get("/api/executions/stats")).raise_for_status()

            async def stats_raw() -> None:
                await raw_stats(pool, org, 24)

            if selected("stats cached") or selected("stats uncached"):
                timing = await interleaved(
                    {"http": stats_cold, "raw": stats_raw, "http_cached": stats_warm},
                    args.iterations,
                )
                results["stats cached"] = {"http": timing["http_cached"], "raw": timing["raw"]}
                results["stats uncached"] = {"http": timing["http"], "raw": timing["raw"]}
            rss_after = rss_mb(warm_proc.pid)
            rss_peak = max(rss_mb(warm_proc.pid, "VmHWM"), rss_mb(cold_proc.pid, "VmHWM"))
    finally:
        for proc in (cold_proc, warm_proc):
            proc.terminate()
            await proc.wait()
        await pool.close()
    goals = {
        "search selective": 50.0,
        "search common": 50.0,
        "stats cached": 10.0,
        "stats uncached": 150.0,
    }
    table = {}
    for name, timing in results.items():
        h50, h99 = pct(timing["http"], 50), pct(timing["http"], 99)
        r50, r99 = pct(timing["raw"], 50), pct(timing["raw"], 99)
        goal = goals.get(name, 30.0)
        # Cached stats skip the SQL by design: the ratio goal applies to uncached reads.
        ratio_ok = name == "stats cached" or h99 <= 3 * r99
        cached = timing.get("http_cached")
        table[name] = {
            "http_p50_ms": round(h50, 2),
            "http_p99_ms": round(h99, 2),
            "raw_p50_ms": round(r50, 2),
            "raw_p99_ms": round(r99, 2),
            "p99_ratio": round(h99 / r99, 2) if r99 else None,
            "goal_p99_ms": goal,
            "meets_goal": h99 <= goal and ratio_ok,
            "requests": len(timing["http"]),
            "http_mean_ms": round(statistics.fmean(timing["http"]) * 1000, 2),
            # The same requests to the server with the default caches (count cached 5 s).
            "http_count_cached_p50_ms": round(pct(cached, 50), 2) if cached else None,
            "http_count_cached_p99_ms": round(pct(cached, 99), 2) if cached else None,
        }
    return {
        "rows": args.rows,
        "orgs": len(ORGS),
        "agents": 50,
        "iterations": args.iterations,
        "load_seconds": round(load_s, 1),
        "query_rss_mb": round(rss_after, 1),
        "query_peak_rss_mb": round(rss_peak, 1),
        "rss_goal_mb": 150,
        "cases": table,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['rows']:,} executions, {result['orgs']} orgs, {result['agents']} agents, "
        f"{result['iterations']} requests per case (org bench-a, ~1/3 of the rows)"
    )
    head = f"{'case':<18}{'http p50':>10}{'http p99':>10}{'raw p50':>10}{'raw p99':>10}"
    print(head + f"{'p99 ratio':>11}{'goal':>8}  ok  {'cached p50':>10}{'cached p99':>11}")
    for name, row in result["cases"].items():
        print(
            f"{name:<18}{row['http_p50_ms']:>10.2f}{row['http_p99_ms']:>10.2f}"
            f"{row['raw_p50_ms']:>10.2f}{row['raw_p99_ms']:>10.2f}{row['p99_ratio']:>11}"
            f"{row['goal_p99_ms']:>8.0f}  {'yes' if row['meets_goal'] else 'NO ':<3}"
            f"{row['http_count_cached_p50_ms'] or '':>11}"
            f"{row['http_count_cached_p99_ms'] or '':>11}"
        )
    print(
        f"query RSS {result['query_rss_mb']} MB (peak {result['query_peak_rss_mb']} MB, "
        f"goal ≤ {result['rss_goal_mb']} MB)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.query_api", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50,000 rows, 50 requests per case")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--iterations", type=int)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the bench database of a previous run with the same row count (migrated)",
    )
    parser.add_argument("--load-only", action="store_true", help="load the database and stop")
    parser.add_argument(
        "--cases",
        help="comma-separated parts of case names to run (e.g. `search`, `stats`); default all",
    )
    args = parser.parse_args(argv)
    args.rows = args.rows or (50_000 if args.quick else 1_000_000)
    args.iterations = args.iterations or (50 if args.quick else 300)
    result = asyncio.run(run(args))
    if args.load_only:
        return 0
    print_table(result)
    # A partial run (`--cases`) does not overwrite the full run's results; nor does `--quick`.
    suffix = "" if not args.cases else "_" + "_".join(args.cases.replace(" ", "").split(","))
    out = results_dir(args.quick) / f"query_api{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
