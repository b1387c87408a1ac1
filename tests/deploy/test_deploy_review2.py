"""Review findings on deploy/: each test failed before its fix."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(*args: str) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *args], capture_output=True, check=True, timeout=60
    )


@contextlib.contextmanager
def _cluster() -> Iterator[tuple[Path, Path]]:
    """A fresh cluster (data dir, socket dir), not started; removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="fw-deploy-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    try:
        _as_postgres(
            str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "fleetwatch", "--no-sync"
        )
        yield data, root
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _start(data: Path, sockets: Path, port: int, listen: str) -> None:
    opts = f"-p {port} -k {sockets} -c listen_addresses='{listen}'"
    log = str(data.parent / "server.log")
    _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l", log, "-w", "start")


def _stop(data: Path) -> None:
    _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")


def _healthcheck(service: dict[str, Any], sockets: Path, port: int) -> int:
    """Run a compose CMD-SHELL health check here, as inside the container: libpq's default
    socket directory there is where the server's socket is (PGHOST), and the port is PGPORT."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL", test
    env = {"PATH": "/usr/bin:/bin", "PGHOST": str(sockets), "PGPORT": str(port)}
    done = subprocess.run(
        ["sh", "-c", test[1]], env=env, capture_output=True, timeout=30, check=False
    )
    return done.returncode


@pytest.mark.skipif(
    not (PG_BIN / "initdb").exists() or shutil.which("pg_isready") is None,
    reason="needs Debian's PostgreSQL 15 binaries and pg_isready",
)
def test_compose_postgres_is_healthy_only_once_it_takes_tcp_connections() -> None:
    """On a fresh volume the postgres image first runs a temporary server on its Unix socket
    only (`listen_addresses=''`) to create the database, then restarts. `pg_isready` without
    a host asks that socket and reports it ready: compose then starts `migrate`, which
    connects over TCP (postgres:5432), is refused, exits 1, and `docker compose up` stops
    with "service migrate didn't complete successfully" before any service starts."""
    postgres = yaml.safe_load(COMPOSE.read_text())["services"]["postgres"]
    port = free_port()
    with _cluster() as (data, sockets):
        _start(data, sockets, port, listen="")  # the image's temporary init server
        try:
            assert _healthcheck(postgres, sockets, port) != 0, (
                "the health check passes while Postgres takes no TCP connection (the image's "
                "init server): migrate would be started and refused"
            )
        finally:
            _stop(data)
        _start(data, sockets, port, listen="*")  # the real server, as the image runs it
        assert _healthcheck(postgres, sockets, port) == 0
