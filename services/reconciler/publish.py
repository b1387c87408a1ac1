"""Publishing corrective events to JetStream, deduplicated by their deterministic ids."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.js import JetStreamContext

from shared.events import Event
from shared.publisher.envelope import MSG_ID_HEADER, dedupe_id
from shared.subjects import Subjects

CHUNK = 256


class EventPublisher:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._subjects = subjects

    async def publish(self, event: Event) -> bool:
        """Publish one event; False when JetStream reports it a duplicate."""
        ack = await self._js.publish(
            self._subjects.event(event.org, event.agent, event.type),
            event.model_dump_json(exclude_none=True).encode(),
            headers={MSG_ID_HEADER: dedupe_id(event.org, event.event_id)},
        )
        return not ack.duplicate

    async def publish_all(self, events: Sequence[Event]) -> int:
        """Publish in pipelined chunks; the number that were new to the stream."""
        return sum(await self.publish_each(events))

    async def publish_each(self, events: Sequence[Event]) -> list[bool]:
        """Publish in pipelined chunks; for each event, whether it was new to the stream."""
        fresh: list[bool] = []
        for start in range(0, len(events), CHUNK):
            fresh += await asyncio.gather(*(self.publish(e) for e in events[start : start + CHUNK]))
        return fresh
