"""Start fleetwatch services as real processes for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

LOG_DIR = Path(__file__).resolve().parent.parent / "test-artifacts" / "logs"


def _port_pool() -> range:
    """The ports this test process hands out: below the kernel's ephemeral range (where the
    outgoing connections of every process on the machine take theirs) and, under
    pytest-xdist, a slice of its own per worker. A port asked of the kernel (bind to 0) could
    be handed out twice: in one process (a CI failure: `up` refused INGEST_PORT and
    NOTIFIER_PORT for being the same) or to another worker's connection before the service
    it was for had bound it."""
    try:
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    low, high = 10000, max(first_ephemeral, 12000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker) if worker.isdigit() else 0
    size = (high - low) // max(workers, 1)
    return range(low + index * size, low + (index + 1) * size)


_POOL = _port_pool()
# A random start: two test runs on one machine (a session and CI) begin apart.
_next = itertools.count(random.randrange(len(_POOL)))


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port nothing listens on, not handed out before by this process (see _port_pool)."""
    for _ in range(len(_POOL)):
        port = _POOL[next(_next) % len(_POOL)]
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port in {_POOL.start}-{_POOL.stop - 1}")


@dataclass
class Service:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout=timeout)


async def wait_ready(url: str, timeout: float = 30.0, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url + path)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}{path} not ready after {timeout}s")
            await asyncio.sleep(0.1)


def start_service(
    name: str,
    env: Mapping[str, str],
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Service:
    """Run `fleetwatch <name>` on a free port (env `<NAME>_PORT`); logs go to test-artifacts."""
    port = port or free_port()
    full_env = {**env, f"{name.upper()}_PORT": str(port), **(extra_env or {})}
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}-{port}-{os.getpid()}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", name],
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    log_file.close()
    return Service(name=name, port=port, process=process, log_path=log_path)


@contextlib.asynccontextmanager
async def running(
    name: str,
    env: Mapping[str, str],
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Service]:
    """A ready service for the duration of the block; stopped with SIGTERM after."""
    service = start_service(name, env, port, extra_env)
    try:
        try:
            await wait_ready(service.url)
        except TimeoutError:
            service.kill()
            raise RuntimeError(f"{name} did not become ready:\n{service.log()[-3000:]}") from None
        yield service
    finally:
        service.kill(signal.SIGTERM)
        try:
            await asyncio.to_thread(service.wait, 30)
        except subprocess.TimeoutExpired:
            service.kill()
            await asyncio.to_thread(service.wait, 10)
