"""Breakable infrastructure for the fault matrix: a TCP proxy, and throwaway Postgres and NATS.

The shared servers are never touched: faults on Postgres or NATS use instances of the test's
own, and "unreachable / slow / reset" is played by an in-process proxy between the service
and its server.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.migrate import migrate
from tests.procs import LOG_DIR, free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), dropping whatever is still buffered."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Pipe:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for task in self.tasks:
            task.cancel()
        _rst(self.client)
        if self.server is not None:
            _rst(self.server)


class Proxy:
    """A TCP proxy whose link can be cut (blackholed), slowed or reset on demand.

    `latency` delays every chunk in both directions (order kept); when a connection ends,
    data still held back is dropped, as if the sender had died before it left.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.latency = 0.0
        self.up_latency: float | None = None  # client → server; None: same as `latency`
        self._down = False
        self._pipes: set[_Pipe] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.connections = 0
        #: Bytes read from clients, bound for the server (held back by latency or not).
        self.sent_up = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset_all()
        for writer in list(self._held):
            _rst(writer)
        self._held.clear()

    def reset_all(self) -> int:
        """Reset every open connection; returns how many."""
        pipes = list(self._pipes)
        for pipe in pipes:
            pipe.abort()
        self._pipes.clear()
        return len(pipes)

    def cut(self) -> None:
        """Unreachable: open connections reset, new ones accepted but never answered."""
        self._down = True
        self.reset_all()

    def heal(self) -> None:
        self._down = False
        for writer in list(self._held):
            _rst(writer)
        self._held.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._down:
            self._held.add(writer)  # a blackhole: the caller's connect hangs until heal()
            return
        pipe = _Pipe(client=writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _rst(writer)
            return
        pipe.server = up_writer
        self._pipes.add(pipe)
        pipe.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, pipe, up_lat=True)),
            asyncio.create_task(self._pump(up_reader, writer, pipe, up_lat=False)),
        ]

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pipe: _Pipe,
        *,
        up_lat: bool,
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if up_lat:
                    self.sent_up += len(data)
                lat = self.latency if not up_lat or self.up_latency is None else self.up_latency
                queue.put_nowait((time.monotonic() + lat, data))
            while not queue.empty():
                await asyncio.sleep(0.01)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            sender.cancel()
            # Dropping what is held back is the point: the peer never sees it.
            pipe.abort()
            self._pipes.discard(pipe)


def url_through(url: str, port: int) -> str:
    """`url` (postgresql:// or nats://) with its host and port replaced by a proxy's."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{port}"))


def port_of(url: str, default: int = 5432) -> int:
    return urlsplit(url).port or default


def via_port(url: str, port: int) -> str:
    """`url` with its host and port replaced by 127.0.0.1:`port` (a proxy's), user kept."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)
    user = host[0] + "@" if len(host) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@contextlib.asynccontextmanager
async def proxy_to(port: int) -> AsyncIterator[Proxy]:
    proxy = Proxy(port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def _as_postgres(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *args], capture_output=True, check=True, timeout=60
    )


@dataclass
class OwnPostgres:
    """A throwaway PostgreSQL 15 cluster on a free port (never the shared server)."""

    datadir: Path
    port: int
    #: Extra server settings (`-c name=value`).
    settings: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "30", *args)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1"
        opts += "".join(f" -c {setting}" for setting in self.settings)
        log = self.datadir / "server.log"
        self._ctl("-o", opts, "-l", str(log), "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")

    def restart_immediate(self) -> None:
        """Crash-stop (no checkpoint; recovery replays the WAL) and start again."""
        self.stop("immediate")
        self.start()


@contextlib.asynccontextmanager
async def own_postgres(*settings: str) -> AsyncIterator[OwnPostgres]:
    """initdb + pg_ctl as the postgres user in a temp dir, migrated; removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="fw-chaos-pg-"))
    shutil.chown(root, "postgres", "postgres")
    datadir = root / "data"
    await asyncio.to_thread(
        _as_postgres,
        str(PG_BIN / "initdb"),
        "-D",
        str(datadir),
        "-A",
        "trust",
        "-U",
        "postgres",
        "--no-sync",
    )
    pg = OwnPostgres(datadir=datadir, port=free_port(), settings=settings)
    await asyncio.to_thread(pg.start)
    try:
        conn = await asyncpg.connect(pg.url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield pg
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(pg.stop, "immediate")
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class OwnNats:
    """A throwaway nats-server with JetStream state on disk (never the shared server)."""

    storedir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    #: Server configuration file text (e.g. `max_payload: 65536`), beside the flags.
    config: str = ""

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _config_args(self) -> list[str]:
        if not self.config:
            return []
        path = self.storedir / "nats.conf"
        path.write_text(self.config)
        return ["-c", str(path)]

    def _spawn(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with (LOG_DIR / f"nats-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(VENV_BIN / "nats-server"),
                    "-js",
                    "-sd",
                    str(self.storedir),
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    *self._config_args(),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        self._spawn()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("own nats-server did not start")

    async def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(self.process.wait, 10)


@contextlib.asynccontextmanager
async def own_nats(config: str = "") -> AsyncIterator[OwnNats]:
    root = Path(tempfile.mkdtemp(prefix="fw-chaos-nats-"))
    server = OwnNats(storedir=root, port=free_port(), config=config)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
        shutil.rmtree(root, ignore_errors=True)
