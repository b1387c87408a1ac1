"""An event without a usable `event_id` is refused before it is sent: its `Nats-Msg-Id`
would be `<org>:None` (or `<org>:5` for the number 5), shared with every other such event or
with a valid event of that id, and JetStream would drop all but the first as repeats."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js import JetStreamContext

from shared.events import EventType
from shared.publisher import Fleet, InvalidEventError, execution_event
from shared.subjects import Subjects
from tests.publisher.conftest import stream_messages


def started(org: str, run_id: str) -> dict[str, Any]:
    return execution_event(
        EventType.EXECUTION_STARTED, org=org, execution={"id": run_id, "agent_name": "a"}
    )


@pytest.mark.parametrize("strict", [False, True])
async def test_missing_or_non_text_event_id_is_refused_every_time(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str, strict: bool
) -> None:
    async with Fleet(nats_url, org=org, subjects=streams, strict=strict) as fleet:
        # The first event of a subject takes the checked path, later ones the fast path.
        assert await fleet.publish(started(org, "first")) is True
        for bad_id in (None, 5, ""):
            for _ in range(2):
                event = started(org, "bad")
                if bad_id is None:
                    del event["event_id"]
                else:
                    event["event_id"] = bad_id
                with pytest.raises(InvalidEventError) as refused:
                    await fleet.publish(event)
                assert refused.value.field == "event_id"
        # A valid event whose id equals the refused number's text is not dropped as a repeat.
        valid = started(org, "five")
        valid["event_id"] = "5"
        assert await fleet.publish(valid) is True
    messages = await stream_messages(js, streams.events_stream)
    assert [m[2]["execution"]["id"] for m in messages] == ["first", "five"]
