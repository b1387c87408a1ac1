"""A `resume_from` that reaches the notifier after its hello window, on the real NATS and Postgres.

It is honoured while the client has had no event frame, and refused (`resume_too_late`) after.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest_asyncio
import websockets
from nats.js import JetStreamContext
from websockets.asyncio.client import ClientConnection

from services.notifier.app import Notifier
from shared.subjects import Subjects
from tests.notifier.helpers import (
    collect,
    connect_live,
    events_of,
    execution_event,
    publish,
    running,
    settings_for,
    token,
    ws_url,
)

HELLO_S = 0.05
#: The hello window of the busy-loop test: its setup must fit in it.
PATIENT_HELLO_S = 0.5


@pytest_asyncio.fixture
async def notifier(nats_url: str, database_url: str, subjects: Subjects) -> AsyncIterator[Notifier]:
    # Small server send buffers, so a replay to a client that does not read blocks soon.
    settings = settings_for(
        nats_url, database_url, subjects, hello_timeout_s=HELLO_S, socket_sndbuf=4096
    )
    async with running(settings) as app:
        yield app


@pytest_asyncio.fixture
async def patient_notifier(
    nats_url: str, database_url: str, subjects: Subjects
) -> AsyncIterator[Notifier]:
    # A window long enough for the test's setup on a loaded machine, so that it is the busy
    # loop turn, not a slow setup, that runs past it.
    settings = settings_for(nats_url, database_url, subjects, hello_timeout_s=PATIENT_HELLO_S)
    async with running(settings) as app:
        yield app


async def _send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(frame).decode())


async def _connect(port: int, query: str, tok: str) -> ClientConnection:
    """A client with a small receive buffer that stops reading while nobody calls `recv`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    ws = await websockets.connect(
        ws_url(port, query),
        subprotocols=["bearer", tok],  # type: ignore[list-item]
        sock=sock,
        max_queue=1,
    )
    ready = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ready["type"] == "ready", ready
    return ws


async def _metric_reaches(app: Notifier, name: str, labels: dict[str, str], value: float) -> None:
    for _ in range(200):
        if (app.metrics.registry.get_sample_value(name, labels) or 0) >= value:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{name}{labels} never reached {value}")


async def _hub_has_clients(app: Notifier, count: int) -> None:
    for _ in range(200):
        if len(app.hub.clients) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the notifier never had {count} clients")


async def _hub_reaches(app: Notifier, seq: int) -> None:
    for _ in range(200):
        if app.hub.last_seq >= seq:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"the notifier never received stream seq {seq}")


async def test_late_resume_from_is_honoured_while_no_event_was_sent(
    notifier: Notifier, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    tok = token(org, "boss", "admin")
    # What both clients missed while they were away: more than their sockets hold, so their
    # replays block until they read.
    long_text = "t" * 200
    missed = [
        await publish(
            js,
            subjects,
            execution_event(org, "x", message=long_text, response=long_text, error=long_text),
        )
        for _ in range(300)
    ]
    resume_from = missed[2]
    # `filtered` gave filters in the URL (live at once) and then had nothing: every event
    # since is filtered out.
    filtered = await _connect(notifier.port, "status=failed", tok)
    meanwhile = [await publish(js, subjects, execution_event(org, "x")) for _ in range(10)]
    # Only once the notifier has them are they missed, not live, for a client connecting now.
    await _hub_reaches(notifier, meanwhile[-1])
    # `silent` sends nothing within the window and goes live with nothing for it.
    silent = await _connect(notifier.port, "", tok)
    await asyncio.sleep(HELLO_S * 4)
    elsewhere = [await publish(js, subjects, execution_event(f"{org}-b", "x")) for _ in range(5)]
    # The `ready` frames below report a seq at least this far: the notifier must have them.
    await _hub_reaches(notifier, elsewhere[-1])
    assert await collect(filtered, idle_s=0.3) == []
    assert await collect(silent, idle_s=0.01) == []

    # Both resume late; `filtered` also widens its filters in the same frame.
    await _send(filtered, {"subscribe": {}, "resume_from": resume_from})
    await _send(silent, {"resume_from": resume_from})
    await _metric_reaches(notifier, "notifier_resumes_total", {"outcome": "ring"}, 2)
    # Fanned out while both replays wait for their clients to read: held, then sent once.
    during = [await publish(js, subjects, execution_event(org, "x")) for _ in range(20)]
    total = len(missed) + len(meanwhile) + len(elsewhere) + len(during)
    await _metric_reaches(notifier, "notifier_events_total", {}, total)
    wanted = missed[3:] + meanwhile
    for ws in (filtered, silent):
        frames = await collect(ws, until_seq=during[-1])
        assert [f["seq"] for f in events_of(frames)] == wanted + during
        readies = [f for f in frames if f["type"] == "ready"]
        assert len(readies) == 1
        # The second `ready` ends the replay, before the held events.
        assert frames.index(readies[0]) == len(wanted)
        assert readies[0]["seq"] >= elsewhere[-1]
    held = notifier.metrics.registry.get_sample_value(
        "notifier_messages_sent_total", {"path": "held"}
    )
    assert held == 2 * len(during)

    # Then live, each event once.
    live = [await publish(js, subjects, execution_event(org, "x")) for _ in range(5)]
    for ws in (filtered, silent):
        frames = await collect(ws, until_seq=live[-1])
        assert [f["seq"] for f in frames] == live
        assert await collect(ws, idle_s=0.3) == []
        await ws.close()


async def test_resume_from_after_an_event_is_refused_and_the_feed_goes_on(
    notifier: Notifier, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    tok = token(org, "boss", "admin")
    live, _ = await connect_live(notifier.port, tok)
    seqs = [await publish(js, subjects, execution_event(org, "x")) for _ in range(3)]
    assert [f["seq"] for f in events_of(await collect(live, until_seq=seqs[-1]))] == seqs
    # One had a live event; the other only replayed ones (it resumed through the URL).
    replayed = await websockets.connect(ws_url(notifier.port, f"token={tok}&resume_from={seqs[0]}"))
    frames = await collect(replayed, until_seq=seqs[-1])
    assert [f["seq"] for f in frames] == seqs[1:]
    assert orjson.loads(await asyncio.wait_for(replayed.recv(), 5))["type"] == "ready"
    for ws in (live, replayed):
        await _send(ws, {"resume_from": seqs[0]})
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (frame["type"], frame.get("error")) == ("error", "resume_too_late"), frame
    later = await publish(js, subjects, execution_event(org, "x"))
    for ws in (live, replayed):
        frames = await collect(ws, until_seq=later)
        assert [f["seq"] for f in frames] == [later]
        assert await collect(ws, idle_s=0.3) == []
        await ws.close()


async def test_a_first_frame_that_arrived_in_time_counts_on_a_busy_loop(
    patient_notifier: Notifier, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    """A loop turn that runs long (a reconnect storm's replays) can run the hello window's timer
    after a frame arrived in time but before the loop read it; that frame is still the first,
    even though an event is already held for the client."""
    notifier = patient_notifier
    missed = [await publish(js, subjects, execution_event(org, "x")) for _ in range(3)]
    # The window starts at `Hub.add`, after this.
    started = time.monotonic()
    ws = await websockets.connect(
        ws_url(notifier.port),
        subprotocols=["bearer", token(org, "boss", "admin")],  # type: ignore[list-item]
    )
    await _hub_has_clients(notifier, 1)  # the server waits for the first frame
    (client,) = notifier.hub.clients
    held = await publish(js, subjects, execution_event(org, "x"))
    await _hub_reaches(notifier, held)  # the event is held for the client
    # Still in the window: the frame below is in time, and only the busy turn makes it late.
    assert not client.live
    assert [out.seq for out in client.pending] == [held]
    assert time.monotonic() - started < PATIENT_HELLO_S, "setup outlasted the hello window"

    def busy_turn() -> None:
        # The frame reaches the server's socket while this turn's work goes on; the window's
        # timer is due by now and runs right after it, before the next poll of the sockets.
        ws.protocol.send_text(orjson.dumps({"resume_from": missed[0]}))
        ws.send_data()
        time.sleep(PATIENT_HELLO_S)

    asyncio.get_running_loop().call_soon(busy_turn)
    time.sleep(PATIENT_HELLO_S * 2)  # noqa: ASYNC251 - the window ends while the loop is busy
    frames = await collect(ws, until_seq=held)
    frames += await collect(ws, idle_s=0.3)
    await ws.close()
    assert [f["type"] for f in frames] == ["execution_started"] * 3 + ["ready"]
    assert [f["seq"] for f in events_of(frames)] == [*missed[1:], held]


async def test_resume_from_is_honoured_once_per_connection(
    notifier: Notifier, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    for _ in range(3):
        await publish(js, subjects, execution_event(org, "x"))
    # A client with no shares is never sent an event frame, so only the once-rule refuses it.
    tok = token(org, "nobody", "client")
    at_hello, _ = await connect_live(notifier.port, tok, {"resume_from": 0})
    late, _ = await connect_live(notifier.port, tok)
    await _send(late, {"resume_from": 0})
    assert orjson.loads(await asyncio.wait_for(late.recv(), 5))["type"] == "ready"
    for ws in (at_hello, late):
        for _ in range(3):
            await _send(ws, {"resume_from": 0})
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (frame["type"], frame.get("error")) == ("error", "resume_too_late"), frame
    sample = notifier.metrics.registry.get_sample_value
    outcomes = ("ring", "stream", "up_to_date", "resync")
    assert sum(sample("notifier_resumes_total", {"outcome": o}) or 0 for o in outcomes) == 2
    # The connections stay usable.
    await _send(late, {"subscribe": {"agent_name": ["x"]}})
    assert orjson.loads(await asyncio.wait_for(late.recv(), 5))["type"] == "subscribed"
    for ws in (at_hello, late):
        await ws.close()


async def test_a_refused_resume_still_confirms_the_filters_its_frame_set(
    notifier: Notifier, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    """The frame's `subscribe` is applied even though its `resume_from` is refused, so the
    client is told so, as for any later `subscribe`: otherwise it cannot know which filters
    are in force."""
    live, _ = await connect_live(notifier.port, token(org, "boss", "admin"))
    seq = await publish(js, subjects, execution_event(org, "x"))
    assert [f["seq"] for f in events_of(await collect(live, until_seq=seq))] == [seq]
    await _send(live, {"subscribe": {"status": ["failed"]}, "resume_from": 0})
    frames = [orjson.loads(await asyncio.wait_for(live.recv(), 5)) for _ in range(2)]
    assert [(f["type"], f.get("error")) for f in frames] == [
        ("error", "resume_too_late"),
        ("subscribed", None),
    ]
    await publish(js, subjects, execution_event(org, "x"))
    failed = await publish(js, subjects, execution_event(org, "x", "execution_failed"))
    assert [f["seq"] for f in events_of(await collect(live, until_seq=failed))] == [failed]
    await live.close()
