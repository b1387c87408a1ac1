"""A correction's `Nats-Msg-Id` cannot be made by another org's publisher.

Correction ids are deterministic (`reconcile:<org>:<execution>:<status>`). Sent as the
Msg-Id `<org>:<event_id>`, another org's publisher with direct NATS access could publish that
Msg-Id first, on its own subject, and JetStream would drop the real correction as its
duplicate for the window, pass after pass. The reconciler keys its Msg-Ids instead.
"""

from __future__ import annotations

from datetime import UTC, datetime

import nats
import orjson

from services.reconciler.corrections import correction_event_id
from services.reconciler.publish import EventPublisher
from shared.events import Event
from shared.publisher.envelope import MSG_ID_HEADER, dedupe_id
from shared.settings import CommonSettings
from shared.streams import ensure_streams
from shared.subjects import Subjects


def correction(org: str, execution_id: str) -> Event:
    return Event.model_validate(
        {
            "type": "execution_failed",
            "event_id": correction_event_id(org, execution_id, "failed"),
            "occurred_at": datetime.now(UTC),
            "org": org,
            "source": "reconciler",
            "execution": {"id": execution_id, "agent_name": "billing", "error": "engine: gone"},
        }
    )


def test_the_msg_id_is_keyed_stable_and_not_the_id() -> None:
    event = correction("victim", "run-1")
    one, other = EventPublisher(None, Subjects("fleet")), EventPublisher(None, Subjects("fleet"))  # type: ignore[arg-type]
    assert one.msg_id(event) == one.msg_id(event)
    assert one.msg_id(event) != other.msg_id(event)
    assert one.msg_id(event).startswith("victim:reconcile-mac:")
    assert event.event_id not in one.msg_id(event)
    assert one.msg_id(event) != one.msg_id(correction("victim", "run-2"))
    # The org is part of what is keyed: another org's same id is another Msg-Id.
    assert (
        one.msg_id(event).split(":", 1)[1]
        != one.msg_id(correction("other", "run-1")).split(":", 1)[1]
    )


async def test_another_orgs_publisher_cannot_drop_a_correction(
    nats_url: str, subjects: Subjects
) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, CommonSettings(subject_prefix=subjects.prefix))
        real = correction("victim", "run-1")
        # The attacker, on its own org's subject, sends the Msg-Id the id alone would make.
        forged = await js.publish(
            subjects.event("attacker", "mallory", "execution_completed"),
            b"{}",
            headers={MSG_ID_HEADER: dedupe_id("victim", real.event_id)},
        )
        assert not forged.duplicate
        publisher = EventPublisher(js, subjects)
        assert await publisher.publish(real) is True
        # Its own repeats are still dropped by JetStream.
        assert await publisher.publish(real) is False
        info = await js.stream_info(subjects.events_stream)
        assert info.state.messages == 2
        stored = await js.get_msg(subjects.events_stream, info.state.last_seq)
        assert orjson.loads(stored.data or b"{}")["event_id"] == real.event_id
        assert stored.subject == subjects.event("victim", "billing", "execution_failed")
    finally:
        await nc.close()
