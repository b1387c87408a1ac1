"""Helpers every benchmark shares: percentiles, RSS, result files, a bench database."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def command_cpu_seconds(*names: str) -> float:
    """CPU time of every local process whose command name is one of `names` (or starts with
    `name:`, as Postgres titles its backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm in names or comm.split(":", 1)[0] in names:
                total += cpu_seconds(int(entry.name))
    return total


def postgres_cpu_seconds() -> float:
    """CPU time of every local postgres process (backends, WAL writer, checkpointer, ...)."""
    return command_cpu_seconds("postgres")


def nats_cpu_seconds() -> float:
    """CPU time of every local nats-server process."""
    return command_cpu_seconds("nats-server")


def _cpu_line() -> list[str]:
    try:
        return Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return []


def idle_seconds() -> float:
    """CPU time no process wanted (idle + I/O wait, all cores)."""
    fields = _cpu_line()
    return (int(fields[4]) + int(fields[5])) / _CLOCK_TICKS if len(fields) > 5 else 0.0


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests while this machine wanted it (all cores).

    A run that suffered steal is slower for reasons outside the code under test; benchmarks
    report it beside their figures.
    """
    fields = _cpu_line()
    return int(fields[8]) / _CLOCK_TICKS if len(fields) > 8 else 0.0


def machine_pct(seconds: float, elapsed: float) -> float:
    """CPU seconds (stolen, idle, ...) as a share of all the machine's cores over `elapsed` s."""
    return seconds / (max(elapsed, 1e-9) * (os.cpu_count() or 1)) * 100


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def server_url() -> str:
    return os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def recreate_database(name: str) -> str:
    admin = await asyncpg.connect(server_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(server_url(), name)


async def database_exists(name: str) -> bool:
    admin = await asyncpg.connect(server_url())
    try:
        return bool(await admin.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", name))
    finally:
        await admin.close()
