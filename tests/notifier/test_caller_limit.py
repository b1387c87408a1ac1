"""One caller holds at most NOTIFIER_MAX_SOCKETS_PER_CALLER sockets (real NATS and Postgres):
the next closes with 4429 before it takes anything; a socket closed frees its place, and other
callers are never affected."""

from __future__ import annotations

import asyncio

import websockets
from websockets.exceptions import ConnectionClosed

from shared.subjects import Subjects
from tests.notifier.helpers import connect_live, running, settings_for, token, ws_url

LIMIT = 3


async def _refused_code(port: int, tok: str) -> int | None:
    ws = await websockets.connect(ws_url(port), subprotocols=["bearer", tok])  # type: ignore[list-item]
    try:
        frame = await asyncio.wait_for(ws.recv(), 5)
    except ConnectionClosed:
        return ws.close_code
    raise AssertionError(f"connection accepted past the limit: {frame!r}")


async def test_a_caller_past_its_socket_limit_is_refused_with_4429(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    settings = settings_for(nats_url, database_url, subjects, max_sockets_per_caller=LIMIT)
    async with running(settings) as app:
        boss = token(org, "boss", "admin")
        held = [(await connect_live(app.port, boss))[0] for _ in range(LIMIT)]
        assert await _refused_code(app.port, boss) == 4429
        # Another user of the same org, and the same user name in another org, still connect.
        other, _ = await connect_live(app.port, token(org, "ann", "admin"))
        elsewhere, _ = await connect_live(app.port, token(f"{org}-b", "boss", "admin"))
        assert app.metrics.caller_limit_closes._value.get() == 1
        # A socket closed frees its place.
        await held.pop().close()
        for _ in range(250):  # the server sees the close a moment later
            if len(app.hub.clients) == LIMIT + 1:
                break
            await asyncio.sleep(0.02)
        assert len(app.hub.clients) == LIMIT + 1
        again, _ = await connect_live(app.port, boss)
        for ws in (*held, other, elsewhere, again):
            await ws.close()
