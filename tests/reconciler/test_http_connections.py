"""The HTTP engine's keep-alive connections: closed by the engine, dropped, cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from services.reconciler.engines import EngineError
from services.reconciler.engines.http import HttpEngine, HttpEngineConfig
from services.reconciler.engines.http_client import KeepAliveClient
from services.reconciler.settings import DEFAULT_STATUS_MAP
from shared.events import Status
from tests.procs import free_port
from tests.reconciler.http_engine import EngineState, serving

BODY = b'{"status": "running"}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)


@dataclass
class RawEngine:
    """An engine on bare asyncio streams, to misbehave in ways uvicorn will not.

    `answers(connection, request)` (both counted from 0) says whether to answer a request;
    one not answered is dropped without a byte (the connection closed), or with `hang`, the
    connection is held open, silent, until the client closes it.
    """

    answers: Callable[[int, int], bool]
    hang: bool = False
    connections: int = 0
    requests: int = 0
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)
    _open: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = writer
        connection = self.connections
        self.connections += 1
        try:
            for request in range(1_000):
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if not self.answers(connection, request):
                    if self.hang and await reader.read() == b"":
                        self.closed_by_client.set()
                    return
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
            del self._open[task]

    async def stop(self) -> None:
        """Ends the connections still open (closing them rather than cancelling their tasks)."""
        tasks = list(self._open)
        for writer in self._open.values():
            writer.close()
        await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def raw_engine(engine: RawEngine) -> AsyncIterator[str]:
    server = await asyncio.start_server(engine.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await engine.stop()
        await server.wait_closed()


def http_engine(url: str) -> HttpEngine:
    return HttpEngine(
        HttpEngineConfig(
            base_url=url, status_map=DEFAULT_STATUS_MAP, timeout_seconds=2, backoff_seconds=0.01
        )
    )


async def test_idle_connections_the_engine_closed_are_not_engine_errors() -> None:
    # uvicorn closes idle connections after its keep-alive timeout (5 s by default), long
    # before the next pass (30 s): the pool must not hand them out as live.
    state = EngineState()
    for i in range(4):
        state.add(f"r{i}", "running")
    async with serving(state, free_port(), keep_alive_s=1) as url:
        engine = http_engine(url)
        try:
            await asyncio.gather(*(engine.get_run(f"r{i}") for i in range(4)))
            await asyncio.sleep(2.5)
            run = await engine.get_run("r0")
            assert run is not None
            assert run.status is Status.RUNNING
            runs = await asyncio.gather(*(engine.get_run(f"r{i}") for i in range(4)))
            assert [r.status if r else None for r in runs] == [Status.RUNNING] * 4
        finally:
            await engine.close()
    assert state.calls == {"r0": 3, "r1": 2, "r2": 2, "r3": 2}


async def test_a_pooled_connection_dropped_unanswered_is_retried_at_once_uncounted() -> None:
    # The race the pool cannot see: the server closes an idle connection as we send on it.
    raw = RawEngine(answers=lambda _connection, request: request == 0)
    async with raw_engine(raw) as url:
        engine = http_engine(url)
        try:
            await asyncio.gather(*(engine.get_run(f"r{i}") for i in range(4)))
            assert raw.connections == 4
            # Three error attempts would all go to pooled connections the server drops.
            run = await engine.get_run("r0")
            assert run is not None
            assert run.status is Status.RUNNING
        finally:
            await engine.close()
    # One request on a pooled connection (dropped), then one on a fresh connection.
    assert (raw.connections, raw.requests) == (5, 6)


async def test_failures_on_fresh_connections_still_count() -> None:
    # Only the very first request is answered; every later one is dropped unanswered.
    raw = RawEngine(answers=lambda connection, request: connection == request == 0)
    async with raw_engine(raw) as url:
        engine = http_engine(url)
        try:
            assert await engine.get_run("r0") is not None
            with pytest.raises(EngineError, match=r"\(after 3 attempts\)$"):
                await engine.get_run("r1")
        finally:
            await engine.close()
    # r1: the pooled connection (free), then three fresh connections (three attempts).
    assert (raw.connections, raw.requests) == (4, 5)


@pytest.mark.parametrize("pooled", [False, True], ids=["fresh", "pooled"])
async def test_a_cancelled_request_closes_its_connection(pooled: bool) -> None:
    # Unanswered requests hang; with `pooled` the first request is answered, so the
    # cancelled one runs on a connection taken from the pool.
    raw = RawEngine(answers=lambda _connection, request: pooled and request == 0, hang=True)
    async with raw_engine(raw) as url:
        client = KeepAliveClient(url, timeout=30)
        try:
            if pooled:
                assert (await client.get("/runs/r0")).status_code == 200
            with pytest.raises(TimeoutError) as cancelled:
                await asyncio.wait_for(client.get("/runs/r1"), 0.3)
            assert raw.connections == 1
            # Closed by the client, not left open until the garbage collector finds the
            # connection unreferenced: the caller still holds the error, as one logging it may.
            await asyncio.wait_for(raw.closed_by_client.wait(), 5)
            assert cancelled.type is TimeoutError
        finally:
            await client.aclose()
