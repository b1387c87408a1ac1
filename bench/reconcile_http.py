"""Benchmark: one reconciliation pass over 10,000 running executions against a local HTTP engine.

Compares the pass (SQL read, bounded-concurrency GETs with retries, rules, publishing the
corrections to JetStream) with two raw baselines at the same concurrency: the same GETs with
plain httpx, and with the reconciler's own keep-alive client (so the difference is the pass's
own overhead). Writes bench/results/reconcile_http.json.

    .venv/bin/python bench/reconcile_http.py [--quick] [--rows N] [--concurrency C] [--delay-ms D]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import orjson
from nats.js.errors import NotFoundError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import results_dir  # noqa: E402
from services.reconciler.engines.http import HttpEngine, HttpEngineConfig  # noqa: E402
from services.reconciler.engines.http_client import KeepAliveClient  # noqa: E402
from services.reconciler.loop import Reconciler  # noqa: E402
from services.reconciler.publish import EventPublisher  # noqa: E402
from services.reconciler.rules import Policy  # noqa: E402
from services.reconciler.settings import DEFAULT_STATUS_MAP  # noqa: E402
from shared.db import connect, create_pool  # noqa: E402
from shared.migrate import migrate  # noqa: E402
from shared.settings import DEFAULT_DATABASE_URL, DEFAULT_NATS_URL, CommonSettings  # noqa: E402
from shared.streams import ensure_streams  # noqa: E402
from shared.subjects import Subjects  # noqa: E402

DATABASE_URL = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
NATS_URL = os.environ.get("NATS_URL", DEFAULT_NATS_URL)
ORG = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _db_url(name: str) -> str:
    base, _, _ = DATABASE_URL.rpartition("/")
    return f"{base}/{name}"


async def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _seed(url: str, rows: int) -> None:
    conn = await connect(url)
    try:
        await migrate(conn)
        started = datetime.now(UTC) - timedelta(hours=1)
        await conn.copy_records_to_table(
            "executions",
            records=[
                (
                    ORG,
                    f"ex-{n}",
                    f"agent-{n % 20}",
                    "running",
                    "http",
                    f"synth-{n}",
                    started,
                    started,
                )
                for n in range(rows)
            ],
            columns=[
                "org",
                "id",
                "agent_name",
                "status",
                "engine",
                "external_id",
                "started_at",
                "first_seen_at",
            ],
        )
    finally:
        await conn.close()


async def _baseline(base_url: str, rows: int, concurrency: int) -> float:
    limit = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def one(n: int) -> None:
            async with limit:
                response = await client.get(f"/runs/synth-{n}")
                response.raise_for_status()
                response.json()

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(rows)))
        return time.perf_counter() - started


async def _baseline_own_client(base_url: str, rows: int, concurrency: int) -> float:
    client = KeepAliveClient(base_url, max_connections=concurrency, timeout=30)
    try:

        async def one(n: int) -> None:
            response = await client.get(f"/runs/synth-{n}")
            assert response.status_code == 200
            orjson.loads(response.body)

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(rows)))
        return time.perf_counter() - started
    finally:
        await client.aclose()


async def _pass(url: str, base_url: str, concurrency: int) -> dict[str, Any]:
    subjects = Subjects(f"bench{uuid.uuid4().hex[:8]}")
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_streams(js, CommonSettings(subject_prefix=subjects.prefix))
    engine = HttpEngine(
        HttpEngineConfig(
            base_url=base_url,
            list_path=None,
            status_map=DEFAULT_STATUS_MAP,
            max_connections=concurrency,
            timeout_seconds=10,
        )
    )
    pool = await create_pool(url, min_size=1, max_size=4)
    reconciler = Reconciler(
        pool, {"http": engine}, EventPublisher(js, subjects), Policy(), concurrency=concurrency
    )
    try:
        report = await reconciler.run_pass(fix=True)
    finally:
        await engine.close()
        await pool.close()
        for stream in (subjects.events_stream, subjects.dlq_stream):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)
        await nc.close()
    return {
        "seconds": round(report.duration_s, 3),
        "checked": report.checked,
        "mismatches": len(report.mismatches),
        "corrections_published": report.published,
        "engine_errors": len(report.engine_errors),
    }


async def main_async(args: argparse.Namespace, port: int) -> dict[str, Any]:
    rows = args.rows or (1_000 if args.quick else 10_000)
    db_name = f"fwbench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(DATABASE_URL)
    await admin.execute(f'CREATE DATABASE "{db_name}"')
    try:
        await _wait_port(port)
        base_url = f"http://127.0.0.1:{port}"
        await _seed(_db_url(db_name), rows)
        await _baseline(base_url, min(rows, 200), args.concurrency)  # warm up
        baseline_s = await _baseline(base_url, rows, args.concurrency)
        own_client_s = await _baseline_own_client(base_url, rows, args.concurrency)
        result = await _pass(_db_url(db_name), base_url, args.concurrency)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await admin.close()
    return {
        "benchmark": "reconcile_http",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rows": rows,
        "concurrency": args.concurrency,
        "engine_delay_ms": args.delay_ms,
        "baseline_raw_gets_httpx": {
            "seconds": round(baseline_s, 3),
            "per_second": round(rows / baseline_s),
        },
        "baseline_raw_gets_own_client": {
            "seconds": round(own_client_s, 3),
            "per_second": round(rows / own_client_s),
        },
        "reconcile_pass": {**result, "per_second": round(rows / result["seconds"])},
        "pass_vs_httpx_baseline": round(result["seconds"] / baseline_s, 3),
        "pass_vs_own_client_baseline": round(result["seconds"] / own_client_s, 2),
        "target_seconds": 30,
        "within_target": result["seconds"] <= 30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 rows instead of 10,000")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=5.0, help="engine latency per request")
    parser.add_argument("--out", default=None, help="default: bench/results/reconcile_http.json")
    args = parser.parse_args()
    args.out = args.out or str(results_dir(args.quick) / "reconcile_http.json")
    port = _free_port()
    # The engine runs in a process of its own, as a real one would.
    engine = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reconciler.http_engine",
            "--port",
            str(port),
            "--delay-ms",
            str(args.delay_ms),
        ],
        cwd=ROOT,
    )
    try:
        results = asyncio.run(main_async(args, port))
    finally:
        engine.terminate()
        engine.wait(10)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
