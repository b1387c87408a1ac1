"""Start fleetwatch services as real processes for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
