"""Fixtures of the publisher tests: streams for the test's prefix, a NATS server of the
test's own (to stop and restart), and a reader of what the stream holds."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import orjson
import pytest
import pytest_asyncio
from fastapi import FastAPI
from nats.js import JetStreamContext

from services.ingest.apikeys import create_key
from services.ingest.gateway import create_gateway_router
from shared.db import connect, create_pool
from shared.events import EventType
from shared.publisher import Fleet, OutgoingEvent, Spool, execution_event
from shared.publisher.envelope import dedupe_id, encode
from shared.settings import CommonSettings
from shared.streams import ensure_streams
from shared.subjects import Subjects
from tests.procs import free_port

VENV_BIN = Path(sys.executable).parent
NATS_SERVER = str(VENV_BIN / "nats-server")
REPO = Path(__file__).resolve().parents[2]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"port {port} not open after {timeout}s")


class OwnNats:
    """A nats-server of one test, on a fixed port and store, that can be stopped and restarted."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.monitor_port = free_port()
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                NATS_SERVER, "-js", "-sd", str(self.store), "-a", "127.0.0.1",
                "-p", str(self.port), "-m", str(self.monitor_port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port)
        wait_port(self.monitor_port)

    async def connections(self) -> int:
        """How many client connections the server holds (its monitoring endpoint)."""
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{self.monitor_port}/connz")
        count: int = response.json()["num_connections"]
        return count

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[OwnNats]:
    server = OwnNats(tmp_path / "nats-store")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def make_streams(nats_url: str, subjects: Subjects) -> None:
    nc = await nats.connect(nats_url)
    try:
        await ensure_streams(nc.jetstream(), CommonSettings(subject_prefix=subjects.prefix))
    finally:
        await nc.close()


@pytest_asyncio.fixture
async def streams(nats_url: str, subjects: Subjects) -> Subjects:
    await make_streams(nats_url, subjects)
    return subjects


async def stream_messages(
    js: JetStreamContext, stream: str
) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """Every message of `stream` in order: subject, headers and parsed body."""
    info = await js.stream_info(stream)
    out: list[tuple[str, dict[str, str], dict[str, Any]]] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await js.get_msg(stream, seq)
        assert msg.subject is not None
        out.append((msg.subject, dict(msg.headers or {}), orjson.loads(msg.data or b"null")))
    return out


async def wait_for_count(
    js: JetStreamContext, stream: str, count: int, timeout: float = 10.0
) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    deadline = time.monotonic() + timeout
    while True:
        messages = await stream_messages(js, stream)
        if len(messages) >= count or time.monotonic() > deadline:
            return messages
        await asyncio.sleep(0.05)


class Ingest:
    """The ingest service as a subprocess, with its HTTP port (the gateway lives there)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = {**env, "INGEST_PORT": str(self.port), "FLEETWATCH_LOG_LEVEL": "WARNING"}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "ingest"], env=self.env, cwd=REPO
        )

    async def start(self) -> None:
        self.proc = self.spawn()
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, "ingest exited during startup"
                try:
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError("ingest not ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest_asyncio.fixture
async def ingest(service_env: dict[str, str]) -> AsyncIterator[Ingest]:
    service = Ingest(service_env)
    await service.start()
    try:
        yield service
    finally:
        service.stop()


def env_without_nats() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "NATS_URL"}


def completed(org: str, run_id: str, **fields: Any) -> dict[str, Any]:
    """An `execution_completed` of agent `writer`, as a client would publish it."""
    return execution_event(
        EventType.EXECUTION_COMPLETED,
        org=org,
        execution={"id": run_id, "agent_name": "writer", "status": "success", **fields},
    )


def left_by_an_older_client(
    directory: Path, streams: Subjects, org: str, after: tuple[str, ...] = ("next",)
) -> None:
    """A spool holding a record over NATS' max_payload (1.2 MB: refused for good) ahead of
    good ones (run ids `after`)."""
    spool = Spool(directory)
    spool.open()
    for run_id, log in (("poison", "漢" * 400_000), *((run_id, "ok") for run_id in after)):
        event = completed(org, run_id, execution_log=log)
        spool.append(
            OutgoingEvent(
                streams.event(org, "writer", "execution_completed"),
                dedupe_id(org, event["event_id"]),
                encode(event),
            )
        )
    spool.close()


async def ask_terminate(
    fleet: Fleet, streams: Subjects, org: str, agent: str, execution_id: str, timeout: float = 3
) -> bytes:
    """What the agent answers to a request to terminate `execution_id` (as the query
    service sends it)."""
    assert fleet._nc is not None
    reply = await fleet._nc.request(
        streams.terminate(org, agent),
        orjson.dumps({"execution_id": execution_id}),
        timeout=timeout,
    )
    return reply.data


async def make_api_key(database_url: str, org: str) -> str:
    """A new active HTTP gateway key of `org`."""
    conn = await connect(database_url)
    try:
        return (await create_key(conn, org, "tests")).key
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def api_key(database_url: str, org: str) -> str:
    """An active HTTP gateway key of the test's org."""
    return await make_api_key(database_url, org)


@asynccontextmanager
async def gateway_for(
    pool: asyncpg.Pool, js: JetStreamContext, subjects: Subjects, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the gateway in-process on `pool` and `js`; `options` go to
    `create_gateway_router` (key_lookup_timeout, concurrency, wait_s)."""
    app = FastAPI()
    settings = CommonSettings(subject_prefix=subjects.prefix)
    app.include_router(create_gateway_router(settings, lambda: pool, lambda: js, **options))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=60
    ) as http:
        yield http


@asynccontextmanager
async def gateway_app(
    nats_url: str, database_url: str, subjects: Subjects, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, JetStreamContext]]:
    """`gateway_for` on a pool and a NATS connection of its own, with the streams of
    `subjects` made."""
    pool = await create_pool(database_url, max_size=2)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await ensure_streams(js, CommonSettings(subject_prefix=subjects.prefix))
        async with gateway_for(pool, js, subjects, **options) as http:
            yield http, js
    finally:
        await nc.close()
        await pool.close()
