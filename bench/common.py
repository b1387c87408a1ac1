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
#: Where `--quick` runs write. Their figures (small tables, few rounds) must never replace a
#: full run's in bench/results/, which the README and docs cite.
QUICK_RESULTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "bench-quick"


def results_dir(quick: bool) -> Path:
    """The folder a run's result file goes to: bench/results/ for full runs only."""
    return QUICK_RESULTS if quick else RESULTS


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


#: A snapshot of processes' CPU seconds so far, by pid.
CpuSnapshot = dict[int, float]

#: Postgres's own processes, shared by every database (their titles name none).
_PG_AUXILIARY = (
    "walwriter",
    "checkpointer",
    "background writer",
    "autovacuum launcher",
    "logical replication launcher",
    "archiver",
    "stats collector",
    "parallel worker",
)


def postgres_title_counts(title: str, database: str | None) -> bool:
    """Whether a postgres process, by its title (`/proc/<pid>/cmdline`), works for `database`:
    the postmaster and the auxiliary processes always, a backend or autovacuum worker only
    for that database (all of them with `database` None)."""
    if database is None or not title.startswith("postgres: "):
        return True
    rest = title.removeprefix("postgres: ")
    head, sep, tail = rest.partition(": ")
    if sep and " " not in head:  # `cluster_name: ` (Debian's `15/main: `)
        rest = tail
    if rest.startswith("autovacuum worker"):
        return rest.split()[2:3] == [database]
    if rest.startswith(_PG_AUXILIARY):
        return True
    words = rest.split()  # a backend: user, database, client, activity
    return len(words) > 1 and words[1] == database


def nats_args_count(args: list[str], port: int | None) -> bool:
    """Whether a nats-server, by its arguments, is the one listening on `port` (any with
    `port` None)."""
    if port is None:
        return True
    wanted = str(port)
    return any(
        (a in ("-p", "--port") and args[i + 1 : i + 2] == [wanted])
        or a in (f"-p={wanted}", f"--port={wanted}")
        for i, a in enumerate(args)
    )


def command_cpu(
    *names: str, database: str | None = None, nats_port: int | None = None
) -> CpuSnapshot:
    """CPU seconds so far of every local process whose command name is one of `names` (or
    starts with `name:`, as Postgres titles its backends); for postgres with `database`,
    only the processes that work for it, for nats-server with `nats_port` only the one on
    that port (other tenants' work on a shared server is not this benchmark's cost)."""
    out: CpuSnapshot = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm not in names and comm.split(":", 1)[0] not in names:
                continue
            if database is not None or nats_port is not None:
                args = (entry / "cmdline").read_bytes().decode().split("\0")
                if comm == "nats-server" and not nats_args_count(args, nats_port):
                    continue
                if comm != "nats-server" and not postgres_title_counts(
                    " ".join(args).strip(), database
                ):
                    continue
        except (OSError, UnicodeDecodeError):
            continue
        out[int(entry.name)] = cpu_seconds(int(entry.name))
    return out


def cpu_used(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """CPU seconds used between two snapshots: each process's own growth, a process that
    started in between from zero. One that ended in between is left out; subtracting what it
    had used before (as a difference of two totals does) can make the figure negative."""
    total = 0.0
    for pid, now in after.items():
        then = before.get(pid, 0.0)
        total += now - then if now >= then else now  # lower: a new process on a reused pid
    return total


def postgres_cpu(database: str | None = None) -> CpuSnapshot:
    """CPU of the local postgres processes (backends, WAL writer, checkpointer, ...): those of
    `database` and the shared ones when it is given."""
    return command_cpu("postgres", database=database)


def nats_cpu(port: int | None = None) -> CpuSnapshot:
    """CPU of the local nats-server on `port` (every local one with `port` None)."""
    return command_cpu("nats-server", nats_port=port)


def database_of(url: str) -> str:
    """The database name in a PostgreSQL URL."""
    return urlsplit(url).path.lstrip("/")


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


def write_result(name: str, data: dict[str, Any], quick: bool = False) -> Path:
    directory = results_dir(quick)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
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
