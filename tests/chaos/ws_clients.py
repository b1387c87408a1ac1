"""The WebSocket clients of fault 10: readers that resume after every restart, stalled ones,
and a loop of their own for the ones that resume in their first frame."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus


@dataclass
class Client:
    name: str
    token: str
    #: None: the whole org; else only these agents.
    agents: frozenset[str] | None
    stalled: bool = False
    #: Resume in the first frame instead of the URL.
    by_frame: bool = False
    last_seq: int = 0
    got: Counter[str] = field(default_factory=Counter)
    foreign: list[dict[str, Any]] = field(default_factory=list)
    resyncs: int = 0
    reconnects: int = 0
    #: Connections that got a second `ready`: a late first-frame `resume_from` was honoured.
    late_resumes: int = 0
    errors: list[str] = field(default_factory=list)
    ws: ClientConnection | None = None
    connected: bool = False


async def open_client(port: int, client: Client) -> ClientConnection:
    """Connect (retrying while the notifier is down) and resume from the last seq seen.

    The token goes in the subprotocol; `resume_from` (after the first connection) in the URL,
    or for `by_frame` clients in the first frame.
    """
    resume = client.last_seq if client.reconnects else None
    query = "" if resume is None or client.by_frame else f"?resume_from={resume}"
    delay = 0.05
    while True:
        try:
            ws = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws{query}",
                subprotocols=["bearer", client.token],  # type: ignore[list-item]
                open_timeout=5,
                max_queue=1 if client.stalled else 64,
                ping_interval=None,
            )
        except (OSError, InvalidHandshake, InvalidStatus, TimeoutError):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            continue
        if resume is not None and client.by_frame:
            await ws.send(orjson.dumps({"resume_from": resume}).decode())
        return ws


async def read(port: int, client: Client, stop: asyncio.Event) -> None:
    """Read until `stop`, reconnecting (with `resume_from`) whenever the connection is lost."""
    while not stop.is_set():
        ws = await open_client(port, client)
        client.ws = ws
        client.connected = True
        readies = 0
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                kind = frame.get("type", "")
                if kind.startswith(("execution_", "component_")):
                    if frame["seq"] <= client.last_seq:
                        client.errors.append(f"seq went back: {frame['seq']} <= {client.last_seq}")
                    client.last_seq = max(client.last_seq, frame["seq"])
                    execution = frame.get("execution") or {}
                    agent = execution.get("agent_name")
                    if frame.get("event_id") is None:
                        client.errors.append(f"event without id: {frame}")
                        continue
                    if client.agents is not None and agent not in client.agents:
                        client.foreign.append(frame)
                    client.got[frame["event_id"]] += 1
                elif kind == "ready":
                    readies += 1
                    if readies == 2:
                        client.late_resumes += 1
                elif kind == "resync_required":
                    client.resyncs += 1
                elif kind == "error":
                    client.errors.append(str(frame))
        except ConnectionClosed:
            pass
        client.connected = False
        client.reconnects += 1


async def stall(port: int, client: Client) -> None:
    client.ws = await open_client(port, client)  # and never read again


async def run_readers(port: int, clients: list[Client], stop: asyncio.Event) -> None:
    """Every client reading until `stop` is set; then their sockets are aborted (no closing
    handshakes to wait for)."""
    tasks = [asyncio.create_task(read(port, c, stop)) for c in clients]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            if c.ws is not None:
                c.ws.transport.abort()


class OwnLoop:
    """An event loop on a thread of its own, for clients that must not queue behind the others.

    All readers in one loop is a test artifact: after a restart each URL client gets its replay
    at once, and one loop turn then parses thousands of frames before a first-frame client's
    handshake completes, so its first frame left up to 1.7 s after the server's window had
    ended, when events had long been flowing to it (a browser tab has no such neighbours).
    The clients' state is only written on this thread; the test thread reads counters and
    membership, which the GIL keeps consistent.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` on this loop; awaitable from the test's loop."""
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def call(self, callback: Callable[[], object]) -> None:
        self.loop.call_soon_threadsafe(callback)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()
