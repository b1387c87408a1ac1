"""Publishing corrective events to JetStream, deduplicated by their deterministic ids.

A correction's `event_id` is deterministic and readable (`reconcile:<org>:<execution>:...`,
services/reconciler/corrections.py), so ingest drops a repeat by its id. Its `Nats-Msg-Id` is
not derived from the id alone: JetStream drops a repeated Msg-Id across the whole stream and
NATS permissions cannot restrict a header, so a publisher of another org with direct NATS
access could send `<org>:reconcile:<org>:<execution>:failed` first and have every correction
of that run dropped as its duplicate, pass after pass (docs/publishing.md). The Msg-Id is an
HMAC of the org and id under a key this process draws at start: the same correction keeps one
Msg-Id for the process's life (JetStream still drops its repeats), and nobody else can make it.
After a restart a correction may enter the stream again; ingest drops it by its event_id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from nats.js import JetStreamContext

from shared.events import Event
from shared.publisher.envelope import MSG_ID_HEADER
from shared.subjects import Subjects

CHUNK = 256
#: Marks a keyed Msg-Id: `<org>:reconcile-mac:<hex>`.
_KEYED = "reconcile-mac:"


class EventPublisher:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._subjects = subjects
        self._key = secrets.token_bytes(32)

    def msg_id(self, event: Event) -> str:
        """The `Nats-Msg-Id` of a correction: its org, then an HMAC of its org and id."""
        mac = hmac.new(
            self._key, f"{event.org}\x00{event.event_id}".encode(), hashlib.sha256
        ).hexdigest()
        return f"{event.org}:{_KEYED}{mac[:40]}"

    async def publish(self, event: Event) -> bool:
        """Publish one event; False when JetStream reports it a duplicate."""
        ack = await self._js.publish(
            self._subjects.event(event.org, event.agent, event.type),
            event.model_dump_json(exclude_none=True).encode(),
            headers={MSG_ID_HEADER: self.msg_id(event)},
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
