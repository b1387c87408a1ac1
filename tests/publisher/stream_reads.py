"""Reading back what the publisher stored on the events stream, as ingest would read it."""

from __future__ import annotations

from nats.js import JetStreamContext

from shared.events import Event
from shared.subjects import Subjects
from shared.validation import validate


async def stored(js: JetStreamContext, subjects: Subjects) -> list[Event]:
    """Every stored message as ingest's own validator reads it (fails on a dead letter)."""
    events = []
    info = await js.stream_info(subjects.events_stream)
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.events_stream, seq)
        assert msg.subject is not None
        verdict = validate(subjects, msg.subject, msg.data or b"")
        assert isinstance(verdict, Event), verdict
        events.append(verdict)
    return events
