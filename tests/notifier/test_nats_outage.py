"""NATS unreachable while clients connect and resume, on real parts (NATS through a proxy).

A resume reads the stream's bounds (and maybe the stream) from NATS. When NATS cannot answer,
the client is told to retry later (1013, as for any lookup it cannot make now) rather than
getting an internal error; and once NATS is back, live delivery goes on without a gap.
"""

from __future__ import annotations

import asyncio

import httpx
import orjson
import websockets

from shared.streams import ensure_streams
from shared.subjects import Subjects
from tests.chaos.infra import own_nats, port_of, proxy_to, url_through
from tests.notifier.helpers import (
    close_code,
    collect,
    connect_live,
    events_of,
    execution_event,
    jetstream,
    publish,
    running,
    settings_for,
    token,
    ws_url,
)


async def test_a_resume_while_nats_is_unreachable_is_try_again_and_live_recovers(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    tok = token(org, "boss", "admin")
    async with proxy_to(port_of(nats_url, 4222)) as proxy:
        settings = settings_for(url_through(nats_url, proxy.port), database_url, subjects)
        async with jetstream(nats_url) as js, running(settings) as app:
            live, _ = await connect_live(app.port, tok)
            first = await publish(js, subjects, execution_event(org, "x"))
            assert [f["seq"] for f in events_of(await collect(live, until_seq=first))] == [first]
            proxy.cut()
            during = await publish(js, subjects, execution_event(org, "x"))
            resuming = await websockets.connect(
                ws_url(app.port, f"token={tok}&resume_from={first - 1}")
            )
            assert await close_code(resuming, limit_s=20) == 1013
            assert (
                app.metrics.registry.get_sample_value(
                    "notifier_resumes_total", {"outcome": "unavailable"}
                )
                == 1
            )
            proxy.heal()
            after = await publish(js, subjects, execution_event(org, "x"))
            frames = events_of(await collect(live, until_seq=after, limit_s=30))
            assert [f["seq"] for f in frames] == [during, after]
            await live.close()


async def test_ready_after_a_nats_restart_means_live_events_flow_again(
    database_url: str, subjects: Subjects, org: str
) -> None:
    """The live consumer lives in the NATS server's memory: a restart loses it. nats-py alone
    notices only after two missed idle heartbeats (10 s or more), and /readyz said ready all
    along; the notifier follows anew on reconnect, and is ready only once it does."""
    async with own_nats() as server:
        settings = settings_for(server.url, database_url, subjects)
        async with running(settings) as app:
            live, _ = await connect_live(app.port, token(org, "boss", "admin"))
            async with jetstream(server.url) as js:
                before = await publish(js, subjects, execution_event(org, "x"))
            assert [f["seq"] for f in events_of(await collect(live, until_seq=before))] == [before]
            await server.kill()
            await server.start()
            async with httpx.AsyncClient() as http:
                for _ in range(300):
                    if (await http.get(f"http://127.0.0.1:{app.port}/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("never ready again")
            async with jetstream(server.url) as js:
                after = await publish(js, subjects, execution_event(org, "x"))
                frames = events_of(await collect(live, until_seq=after, limit_s=5))
            assert [f["seq"] for f in frames] == [after]
            await live.close()


async def test_a_recreated_stream_is_followed_and_clients_are_told_to_resync(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    """The events stream deleted and made again (an operator changing what cannot be updated,
    a NATS server that lost its storage): sequences start over at 1. The notifier must not wait
    forever past the old end; its clients hold sequences the stream no longer has, so they are
    closed with 1012 and, resuming, are told to reload."""
    settings = settings_for(nats_url, database_url, subjects, stream_check_s=0.2)
    tok = token(org, "boss", "admin")
    async with jetstream(nats_url) as js, running(settings) as app:
        live, _ = await connect_live(app.port, tok)
        seqs = [await publish(js, subjects, execution_event(org, "x")) for _ in range(3)]
        assert [f["seq"] for f in events_of(await collect(live, until_seq=seqs[-1]))] == seqs
        await js.delete_stream(subjects.events_stream)
        await ensure_streams(js, settings)
        assert await close_code(live, limit_s=10) == 1012
        resuming = await websockets.connect(ws_url(app.port, f"token={tok}&resume_from={seqs[-1]}"))
        frame = orjson.loads(await asyncio.wait_for(resuming.recv(), 5))
        assert (frame["type"], frame["reason"]) == ("resync_required", "unknown_sequence")
        assert orjson.loads(await asyncio.wait_for(resuming.recv(), 5))["type"] == "ready"
        fresh = await publish(js, subjects, execution_event(org, "x"))
        assert fresh == 1
        assert [f["seq"] for f in events_of(await collect(resuming, until_seq=fresh))] == [fresh]
        await resuming.close()
