"""At startup, read the stream's most recent events back into memory for cheap resumes.

After a restart every client reconnects at once with `resume_from`. With an empty ring each of
them would replay through its own ephemeral JetStream consumer, and a hundred consumer
creations at once can stall the NATS server (and every publisher sharing it) for seconds, long
enough for those requests to time out and the clients to reconnect and ask again. With the ring
filled from the stream first, those resumes are served from memory.
"""

from __future__ import annotations

import logging
import time

from nats.js import JetStreamContext

from services.notifier.stream import StreamBounds, read_range
from services.notifier.summary import Outgoing, build_outgoing, decode
from services.notifier.triggers import TriggerMemory
from shared.subjects import Subjects

log = logging.getLogger(__name__)


async def read_recent(
    js: JetStreamContext,
    subjects: Subjects,
    found: StreamBounds,
    size: int,
    triggers: TriggerMemory,
) -> tuple[int, list[Outgoing]]:
    """`(floor, events)`: every valid event of the last `size` sequences up to `found.last_seq`,
    all with seq > `floor`. `(last_seq, [])` when there are none or the range cannot be read to
    its end (the ring then starts empty, as it would without this step).
    """
    last = found.last_seq
    first = max(found.first_seq, last - size + 1, 1)
    if first > last:
        return last, []
    started = time.monotonic()
    events: list[Outgoing] = []
    seen = first - 1
    try:
        async for msg in read_range(js, subjects, first, last):
            seq = msg.metadata.sequence.stream
            event = decode(subjects, msg.subject, msg.data)
            if event is not None:
                events.append(triggers.enrich(build_outgoing(seq, event)))
            seen = seq
    except Exception:
        log.exception("reading recent events back failed; resumes will read the stream")
        return last, []
    if seen < last:
        log.warning("recent events read up to %d of %d; resumes will read the stream", seen, last)
        return last, []
    log.info(
        "read %d recent events (seq %d..%d) in %.2fs",
        len(events),
        first,
        last,
        time.monotonic() - started,
    )
    return first - 1, events
