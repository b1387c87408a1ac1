"""One budget for all clients' queues (`NOTIFIER_BUFFER_BUDGET_BYTES`): past it the clients
holding the most are cut with 4008, and readers that keep up are not touched."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, cast

import orjson
import pytest
from nats.js import JetStreamContext
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from services.notifier.clients import Client
from services.notifier.hub import Hub
from services.notifier.metrics import Metrics
from services.notifier.summary import EventMeta, Outgoing
from shared.access import Scope
from shared.auth import Claims, Role
from shared.events import Status
from shared.subjects import Subjects
from tests.notifier.helpers import (
    close_code,
    connect_live,
    execution_event,
    publish,
    running,
    settings_for,
    token,
)

BUDGET = 1024 * 1024


def _big_event(org: str) -> dict[str, Any]:
    """An event whose frame is as large as a summary gets (~2 KB): long idents and texts."""
    long_id = "i" * 200
    return execution_event(
        org,
        "x",
        id=long_id,
        project=long_id,
        workflow=long_id,
        schedule_id=long_id,
        external_id=long_id,
        parent_execution_id=long_id,
        message="m" * 200,
        response="r" * 200,
        error="e" * 200,
        error_type="t" * 200,
    )


async def _stopped_reader(port: int, tok: str) -> ClientConnection:
    """A client that stops reading after `ready`: tiny receive buffer, library queue of 1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    ws, _ = await connect_live(port, tok, sock=sock, max_queue=1)
    return ws


async def _read_until(ws: ClientConnection, seq: int, seen: list[int]) -> None:
    while not seen or seen[-1] < seq:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        if "seq" in frame and frame["type"] != "ready":
            seen.append(frame["seq"])


async def test_stopped_readers_are_cut_when_all_queues_pass_the_budget(
    nats_url: str,
    database_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    org: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each client alone may queue 4 MiB, far more than any of them will: only the budget on
    # all of them together can cut anyone here.
    settings = settings_for(
        nats_url,
        database_url,
        subjects,
        client_queue_bytes=4 * 1024 * 1024,
        buffer_budget_bytes=BUDGET,
        socket_sndbuf=4096,
        slow_close_grace_s=20,
    )
    tok = token(org, "boss", "admin")
    caplog.set_level(logging.WARNING, logger="services.notifier.hub")
    async with running(settings) as app:
        reader, _ = await connect_live(app.port, tok)
        stopped = [await _stopped_reader(app.port, tok) for _ in range(4)]
        # 4 x ~1.7 MB is more than the budget; each stopped client alone passes it too, so the
        # last one left is cut as well. The reader takes each chunk before the next is sent.
        published: list[int] = []
        seen: list[int] = []
        for _ in range(32):
            chunk = await asyncio.gather(
                *(publish(js, subjects, _big_event(org)) for _ in range(25))
            )
            published.extend(chunk)
            await _read_until(reader, max(chunk), seen)
        assert seen == sorted(published)
        # Fan-out of the last event is done: every cut has been made, only the reader is left.
        hub = app.hub
        assert [c.conn.state for c in hub.clients] == [State.OPEN]
        metric = app.metrics.registry.get_sample_value
        assert metric("notifier_buffer_budget_cuts_total") == 4
        assert metric("notifier_slow_client_disconnects_total", {"reason": "buffer_budget"}) == 4
        assert metric("notifier_slow_client_disconnects_total", {"reason": "queue_full"}) is None
        assert hub.queued_bytes == sum(c.queued for c in hub.clients) <= BUDGET
        for ws in stopped:
            # What was queued, then the close frame behind it.
            assert await close_code(ws, 5) == 4008
        budget_logs = [r for r in caplog.records if "buffer budget" in r.getMessage()]
        assert len(budget_logs) == 1, budget_logs
        # The reader still gets what follows.
        later = await publish(js, subjects, _big_event(org))
        await _read_until(reader, later, seen)
        assert seen[-1] == later
        assert reader.state is State.OPEN
        await reader.close()


class _Transport:
    """A transport whose buffer the test sets; a write adds to it (a stuck client's socket)."""

    def __init__(self, stuck: bool) -> None:
        self.stuck = stuck
        self.buffered = 0

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        if self.stuck:
            self.buffered += len(data)

    def abort(self) -> None:
        self.buffered = 0


class _Protocol:
    def __init__(self) -> None:
        self.state = State.OPEN
        self.closed_with: int | None = None

    def send_close(self, code: int, reason: str) -> None:
        self.closed_with = code
        self.state = State.CLOSING


class _Conn:
    def __init__(self, stuck: bool) -> None:
        self.protocol = _Protocol()
        self.transport = _Transport(stuck)

    def send_data(self) -> None:
        pass


def _client(hub: Hub, stuck: bool) -> Client:
    scope = Scope(org="acme", user="u", role=Role.ADMIN, agents=None)
    claims = cast(Any, Claims).model_construct(org="acme", sub="u", role=Role.ADMIN)
    client = Client(cast(Any, _Conn(stuck)), claims, scope)
    client.live = True
    hub.add(client)
    return client


def _event(seq: int, size: int) -> Outgoing:
    meta = EventMeta(
        org="acme",
        agent="x",
        status=Status.RUNNING,
        execution_id=f"e{seq}",
        triggered_by=None,
        is_component=False,
    )
    return Outgoing(seq=seq, meta=meta, payload=b"p" * size)


def _buffer(client: Client) -> _Transport:
    return cast(_Transport, cast(Any, client.conn).transport)


async def test_the_sum_is_exact_drained_buffers_are_looked_at_again_and_the_largest_go() -> None:
    hub = Hub(
        Metrics(), queue_bytes=1 << 30, pending_max=10, slow_close_grace_s=1, buffer_budget=10_000
    )
    fast = _client(hub, stuck=False)
    a, b = _client(hub, stuck=True), _client(hub, stuck=True)
    hub.publish(_event(1, 3_000))  # 3,004 bytes a frame
    assert (a.queued, b.queued, fast.queued) == (3_004, 3_004, 0)
    assert hub.queued_bytes == 6_008
    # `a` drains all it had, unseen by fan-out until it is written to again; the sum is then
    # past the budget by what fan-out last saw, but not by what the buffers hold: nobody is cut.
    _buffer(a).buffered = 0
    b_before = _buffer(b).buffered
    _buffer(b).buffered += 3_004  # as if it had got another event outside fan-out
    hub.publish(_event(2, 1_000))
    assert hub.queued_bytes == sum(c.queued for c in hub.clients) <= 10_000
    assert len(hub.clients) == 3
    assert b.queued == b_before + 3_004 + 1_004
    # Now `b` holds the most and the sum passes the budget: `b` goes, `a` and `fast` stay.
    hub.publish(_event(3, 3_000))
    assert cast(Any, b.conn).protocol.closed_with == 4008
    assert hub.clients == {a, fast}
    assert hub.queued_bytes == a.queued == 1_004 + 3_004
    assert hub.metrics.registry.get_sample_value("notifier_buffer_budget_cuts_total") == 1
    hub.remove(a)
    assert hub.queued_bytes == 0
