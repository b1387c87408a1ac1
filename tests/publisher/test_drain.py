"""The spool's drain outlives whatever fails inside it, and `close()` always lets go of the
connection and the spool's lock."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js import JetStreamContext

from shared.publisher import Fleet, OutgoingEvent, Spool
from shared.subjects import Subjects
from tests.publisher.conftest import completed, left_by_an_older_client, stream_messages


async def stored_runs(js: JetStreamContext, streams: Subjects) -> list[str]:
    messages = await stream_messages(js, streams.events_stream)
    return [m[2]["execution"]["id"] for m in messages]


async def test_an_on_overflow_that_raises_does_not_end_the_drain(
    nats_url: str,
    streams: Subjects,
    js: JetStreamContext,
    org: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The callback ran in the drain task, unguarded: its exception ended the task for good,
    so nothing spooled was sent again, `flush()` waited in vain, and `close()` raised it,
    leaving the connection open and the spool locked."""
    left_by_an_older_client(tmp_path / "spool", streams, org)

    def on_overflow(event: OutgoingEvent) -> None:
        raise RuntimeError("alerting backend down")

    fleet = Fleet(
        nats_url, org=org, subjects=streams, spool_dir=tmp_path / "spool", on_overflow=on_overflow
    )
    await fleet.start()
    try:
        assert await fleet.flush(10)
        assert fleet.stats.dropped == 1
        assert await fleet.publish(completed(org, "after")) is True
    finally:
        await fleet.close()
    assert not fleet.connected
    assert "on_overflow raised" in caplog.text
    assert await stored_runs(js, streams) == ["next", "after"]
    again = Spool(tmp_path / "spool")
    again.open()  # the lock was let go
    again.close()


async def test_a_spool_error_is_logged_and_retried(
    nats_url: str,
    streams: Subjects,
    js: JetStreamContext,
    org: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An OSError from the spool (a disk hiccup) ended the drain task: the spool was never
    sent again, and `close()` raised the error, leaving the connection and lock held."""
    left_by_an_older_client(tmp_path / "spool", streams, org)
    fleet = Fleet(nats_url, org=org, subjects=streams, spool_dir=tmp_path / "spool")
    assert fleet.spool is not None
    read = fleet.spool.read
    failures = [OSError(5, "Input/output error")] * 2

    def flaky_read(limit: int) -> list[tuple[int, OutgoingEvent]]:
        if failures:
            raise failures.pop()
        return read(limit)

    fleet.spool.read = flaky_read  # type: ignore[method-assign]
    await fleet.start()
    try:
        assert await fleet.flush(10)
        assert failures == []
    finally:
        await fleet.close()
    assert not fleet.connected
    assert caplog.text.count("re-sending the spool failed") == 2
    assert await stored_runs(js, streams) == ["next"]
    again = Spool(tmp_path / "spool")
    again.open()
    again.close()
