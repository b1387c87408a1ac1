"""`fleetwatch up`'s embedded servers, second review: a restart after a crash."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from shared.embedded import Embedded, database_url_or_embedded
from shared.subjects import Subjects
from tests.procs import free_port
from tests.test_up import Up, gone

pytestmark = pytest.mark.e2e


def _unreachable() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"


async def _select_one(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        value: int = await conn.fetchval("SELECT 1")
        return value
    finally:
        await conn.close()


def _kill_postmasters(pgdata: Path) -> None:
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in (proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR")
def test_embedded_postgres_starts_over_a_stale_postmaster_pid(tmp_path: Path) -> None:
    """The embedded server was killed (or the machine restarted) and left postmaster.pid
    naming a pid some other process now has: pgserver took that process for the server and
    `up` failed with a bare "FileNotFoundError" on every run until the file was deleted."""
    pgdata = (tmp_path / "pgdata").resolve()
    embedded = Embedded()
    other = subprocess.Popen(["sleep", "60"])
    try:
        database_url_or_embedded(_unreachable(), tmp_path, embedded, explicit=True)
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        embedded.stop()
        assert not (pgdata / "postmaster.pid").exists()
        # As a killed server leaves it, its pid now another (live) process's.
        (pgdata / "postmaster.pid").write_text("\n".join([str(other.pid), *lines[1:]]) + "\n")

        url, source = database_url_or_embedded(_unreachable(), tmp_path, embedded, explicit=True)

        assert source.startswith("embedded PostgreSQL"), source
        assert asyncio.run(_select_one(url)) == 1
        assert other.poll() is None  # not taken for the server, nor stopped as one
    finally:
        embedded.stop()
        _kill_postmasters(pgdata)
        other.kill()
        other.wait()


def test_services_on_another_address_are_waited_for_and_printed_there(
    tmp_path: Path, nats_url: str, database_url: str, subjects: Subjects
) -> None:
    """With QUERY_HOST / NOTIFIER_HOST set (README: where each service listens) `up` checked
    health on 127.0.0.1, waited 60 s for a service that was answering and gave up with
    "did not answer"; its dashboard URL named 127.0.0.1 too."""
    up = Up(
        tmp_path,
        {
            "NATS_URL": nats_url,
            "DATABASE_URL": database_url,
            "FLEETWATCH_SUBJECT_PREFIX": subjects.prefix,
            "QUERY_HOST": "::1",
            "NOTIFIER_HOST": "::1",
        },
    )
    try:
        up.wait_for("Stop with Ctrl-C.", timeout=45)
        started = up.started()
        query = f"http://[::1]:{up.ports['QUERY_PORT']}"
        assert f"Dashboard:  {query}/#token=" in up.stdout()
        assert f"ws://[::1]:{up.ports['NOTIFIER_PORT']}/ws" in up.stdout()
        token = up.stdout().split("#token=", 1)[1].split()[0]
        answer = httpx.get(
            f"{query}/api/executions", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        config = httpx.get(
            f"{query}/api/config", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert f"[::1]:{up.ports['NOTIFIER_PORT']}" in config.text, config.text

        up.process.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0, up.output()
        assert gone(started) == []
    finally:
        up.reap()
