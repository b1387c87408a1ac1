"""A replay from the stream stops once its client has left, on the real NATS and Postgres.

The websockets server does not cancel a handler when its peer closes: a resume past the ring
whose filter matched nothing in the range read on, for nobody, to the range's end (~8,000
events a second of a core), holding one of the replay turns and the caller's socket count
all along."""

from __future__ import annotations

import asyncio

import orjson
import websockets
from nats.js import JetStreamContext

from shared.subjects import Subjects
from tests.notifier.helpers import execution_event, running, settings_for, token, ws_url

EVENTS = 8000


async def _publish_many(js: JetStreamContext, subjects: Subjects, org: str) -> None:
    for start in range(0, EVENTS, 200):
        events = [execution_event(org, "x") for _ in range(min(200, EVENTS - start))]
        await asyncio.gather(
            *(
                js.publish(
                    subjects.event(org, "x", ev["type"]),
                    orjson.dumps(ev),
                    headers={"Nats-Msg-Id": ev["event_id"]},
                )
                for ev in events
            )
        )


async def test_a_replay_whose_client_left_stops_reading(
    nats_url: str, database_url: str, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    settings = settings_for(nats_url, database_url, subjects, ring_size=1, replay_concurrency=1)
    tok = token(org, "boss", "admin")
    async with running(settings) as app:
        await _publish_many(js, subjects, org)
        # A resume from the first event whose filter matches none of them; the client leaves
        # as soon as its replay has the turn.
        ws = await websockets.connect(
            ws_url(app.port, f"token={tok}&resume_from=1&agent_name=nobody")
        )
        for _ in range(500):
            if app.stream_replays.locked():
                break
            await asyncio.sleep(0.01)
        assert app.stream_replays.locked()
        await ws.close()
        outcome = {}
        for _ in range(1000):
            outcome = {
                name: app.metrics.registry.get_sample_value(
                    "notifier_resumes_total", {"outcome": name}
                )
                for name in ("abandoned", "stream")
            }
            if any(outcome.values()):
                break
            await asyncio.sleep(0.01)
        # Stopped, not read to the end of the range for nobody.
        assert outcome == {"abandoned": 1.0, "stream": None}
        for _ in range(500):
            if not app.stream_replays.locked() and not app.hub.clients:
                break
            await asyncio.sleep(0.01)
        assert not app.stream_replays.locked()
        assert not app.hub.clients
