"""Third review: clients are told when the live feed is interrupted (NATS lost) and restored.

Before, a connected client got nothing while the notifier had lost NATS, exactly as on a quiet
day, so a dashboard kept saying "live" over stale data. Now the notifier sends the additive
`{"type": "feed_status", "live": false}` when it loses NATS, the same at once (after `ready`) to
a client connecting meanwhile, and `{"type": "feed_status", "live": true}` once its consumer
follows again; events missed meanwhile follow, and /readyz says the same as the frames. All on
real parts: a NATS server of the test's own, stopped and started, or reached through a proxy
that cuts the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection

from shared.subjects import Subjects
from tests.chaos.infra import own_nats, port_of, proxy_to, url_through
from tests.notifier.helpers import (
    collect,
    connect_live,
    events_of,
    execution_event,
    jetstream,
    publish,
    running,
    settings_for,
    token,
)


async def until_status(ws: ClientConnection, limit_s: float) -> tuple[dict[str, Any], list[Any]]:
    """Frames up to the first `feed_status` (which must come within `limit_s`), and the others."""
    others: list[Any] = []
    async with asyncio.timeout(limit_s):
        while True:
            frame = orjson.loads(await ws.recv())
            if frame["type"] == "feed_status":
                return frame, others
            others.append(frame)


async def readyz(port: int) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code


async def test_clients_are_told_while_nats_is_down_and_when_it_is_back(
    database_url: str, subjects: Subjects, org: str
) -> None:
    tok = token(org, "boss", "admin")
    async with own_nats() as server:
        settings = settings_for(server.url, database_url, subjects)
        async with running(settings) as app:
            live, _ = await connect_live(app.port, tok)
            async with jetstream(server.url) as js:
                before = await publish(js, subjects, execution_event(org, "x"))
            assert [f["seq"] for f in events_of(await collect(live, until_seq=before))] == [before]
            await server.kill()
            down, _ = await until_status(live, limit_s=5)
            assert down == {"type": "feed_status", "live": False, "reason": down["reason"]}
            assert await readyz(app.port) == 503
            # A dashboard opened during the outage is told at once, right after `ready`.
            late, _ = await connect_live(app.port, tok)
            late_status, _ = await until_status(late, limit_s=2)
            assert late_status["live"] is False
            await server.start()
            back, _ = await until_status(live, limit_s=20)
            assert back == {"type": "feed_status", "live": True}
            assert (await until_status(late, limit_s=5))[0] == back
            assert await readyz(app.port) == 200
            async with jetstream(server.url) as js:
                after = await publish(js, subjects, execution_event(org, "x"))
            for ws in (live, late):
                frames = await collect(ws, until_seq=after, limit_s=5)
                assert [f["seq"] for f in events_of(frames)] == [after]
                assert not [f for f in frames if f["type"] == "feed_status"]  # told once
                await ws.close()


async def test_events_published_during_the_cut_follow_the_restored_status(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    """The notifier's link to NATS cut while publishers go on: what they published meanwhile
    reaches the client once the feed is back, with nothing lost or repeated."""
    async with proxy_to(port_of(nats_url, 4222)) as proxy:
        settings = settings_for(url_through(nats_url, proxy.port), database_url, subjects)
        async with jetstream(nats_url) as js, running(settings) as app:
            live, _ = await connect_live(app.port, token(org, "boss", "admin"))
            proxy.cut()
            assert (await until_status(live, limit_s=5))[0]["live"] is False
            during = await publish(js, subjects, execution_event(org, "x"))
            proxy.heal()
            back, early = await until_status(live, limit_s=20)
            assert back["live"] is True
            after = await publish(js, subjects, execution_event(org, "x"))
            frames = early + await collect(live, until_seq=after, limit_s=10)
            assert [f["seq"] for f in events_of(frames)] == [during, after]
            await live.close()
