"""The stream sequence read from a reply subject agrees with nats-py's own parser."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from services.ingest.consumer import _stream_seq

REPLIES = [
    "$JS.ACK.FLEET_EVENTS.ingest.1.4711.12.1700000000000000000.3",
    "$JS.ACK.hub.ACCHASH.FLEET_EVENTS.ingest.2.99.7.1700000000000000000.0",
    "$JS.ACK._.ACCHASH.FLEET_EVENTS.ingest.1.123456789.5.1700000000000000000.0.rnd",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_matches_nats_metadata(reply: str) -> None:
    msg = Msg(_client=None, subject="x", reply=reply)  # type: ignore[arg-type]
    assert _stream_seq(msg) == msg.metadata.sequence.stream


@pytest.mark.parametrize("reply", ["", "_INBOX.abc", "$JS.ACK.too.short", "$JS.ACK.S.c.1.x.2.3.4"])
def test_not_a_jetstream_reply(reply: str) -> None:
    assert _stream_seq(Msg(_client=None, subject="x", reply=reply)) is None  # type: ignore[arg-type]
