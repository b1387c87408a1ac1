"""A replay past the in-memory ring reads only the caller's org from the stream (real NATS and
Postgres): another org's traffic costs it nothing, an org with nothing in the range resumes at
once, and the client still ends up exactly at the live point with no gap reported."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from services.notifier.stream import REPLAY_MSG_TIMEOUT_S, Reached, read_range
from services.notifier.summary import decode
from shared.streams import ensure_streams
from shared.subjects import Subjects
from tests.notifier.helpers import (
    collect,
    events_of,
    execution_event,
    publish,
    running,
    settings_for,
    token,
    until_ready,
    ws_url,
)


async def test_a_replay_reads_only_the_callers_org(
    nats_url: str,
    database_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    org: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_for(nats_url, database_url, subjects, ring_size=5)
    await ensure_streams(js, settings)
    other = f"{org}-b"
    start = await publish(js, subjects, execution_event(org, "x"))
    own = [await publish(js, subjects, execution_event(org, "x")) for _ in range(5)]
    for _ in range(200):  # another org's traffic after them, past the ring
        await publish(js, subjects, execution_event(other, "x"))
    decoded: list[str] = []

    def counting_decode(subjects_: Subjects, subject: str, data: bytes) -> object:
        decoded.append(subject)
        return decode(subjects_, subject, data)

    monkeypatch.setattr("services.notifier.session.decode", counting_decode)
    async with running(settings) as app:
        live = app.hub.last_seq
        # The resume goes in the URL, as the docs advise: in a first frame that reaches the
        # server after its hello window (a loaded CI run), `ready` comes before the replay.
        ws = await websockets.connect(
            ws_url(app.port, f"token={token(org, 'boss', 'admin')}&resume_from={start}")
        )
        frames = await until_ready(ws, 10)
        after = await collect(ws, idle_s=0.5)
        await ws.close()
        assert [f["seq"] for f in events_of(frames)] == own
        assert [f for f in frames if f["type"] == "resync_required"] == []
        assert frames[-1] == {"type": "ready", "seq": live}
        assert after == []  # nothing is published meanwhile: no event, no second `ready`
        # Only the caller's org was read: 5 messages, not 205.
        assert decoded == [subjects.event(org, "x", "execution_started")] * 5

        # An org with nothing in the range resumes at once (no wait for a read timeout).
        began = time.monotonic()
        ws = await websockets.connect(
            ws_url(app.port, f"token={token(f'{org}-c', 'boss', 'admin')}&resume_from={start}")
        )
        frames = await until_ready(ws, 10)
        took = time.monotonic() - began
        frames += await collect(ws, idle_s=0.3)
        await ws.close()
        assert frames == [{"type": "ready", "seq": live}]
        # Waiting for a read timeout costs REPLAY_MSG_TIMEOUT_S (5 s) on top of the handshake;
        # the rest of the bound is slack for a loaded machine.
        assert took < REPLAY_MSG_TIMEOUT_S - 1, took


async def test_a_filtered_read_keeps_what_was_pushed_before_it_asked(
    nats_url: str,
    database_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    org: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server pushes a new consumer's messages at once: by the time its info answers, all
    may be delivered and none pending. That is not "nothing for this filter"."""
    await ensure_streams(js, settings_for(nats_url, database_url, subjects))
    seqs = [await publish(js, subjects, execution_event(org, "x")) for _ in range(3)]
    real_info = JetStreamContext.PushSubscription.consumer_info

    async def late_info(self: JetStreamContext.PushSubscription) -> ConsumerInfo:
        await asyncio.sleep(0.3)  # everything is delivered meanwhile
        return await real_info(self)

    monkeypatch.setattr(JetStreamContext.PushSubscription, "consumer_info", late_info)
    reached = Reached()
    read = [
        m.metadata.sequence.stream
        async for m in read_range(
            js, subjects, seqs[0], seqs[-1], subject=subjects.org_events(org), reached=reached
        )
    ]
    assert read == seqs
    assert reached.seq == seqs[-1]
