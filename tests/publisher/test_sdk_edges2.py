"""Two rough edges of the publisher SDK: a `SyncFleet` whose `start()` failed answered every
later call with an unrelated error (and refused a retry of `start()`); and an `occurred_at`
written as text in a hand-built event was checked only with `strict=True`, so without it an
unreadable or out-of-range time was published (acknowledged) and then dead-lettered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext

import shared.publisher
from shared.events import EventType
from shared.publisher import Fleet, FleetClosedError, InvalidEventError, SyncFleet
from shared.publisher.envelope import execution_event
from shared.subjects import Subjects
from shared.validation import Rejected, validate
from tests.publisher.conftest import OwnNats, make_streams, stream_messages


def _started(org: str, run_id: str, occurred_at: Any = None) -> dict[str, Any]:
    event = execution_event(
        EventType.EXECUTION_STARTED, org=org, execution={"id": run_id, "agent_name": "writer"}
    )
    if occurred_at is not None:
        event["occurred_at"] = occurred_at  # as a hand-built dict (or JSON from elsewhere) has it
    return event


# -- SyncFleet after a failed start() --------------------------------------------------------


def _assert_refused_for_failed_start(error: FleetClosedError, cause: BaseException) -> None:
    assert isinstance(error, shared.publisher.FleetNotStartedError)
    assert "failed to start" in str(error)
    assert "start() again" in str(error)
    assert error.__cause__ is cause


async def test_calls_after_a_failed_start_say_so_and_a_retry_of_start_works(
    own_nats: OwnNats, subjects: Subjects, js: JetStreamContext, org: str
) -> None:
    """With NATS down, `start()` raised and then every call failed with an AssertionError
    (`fleet` property), or with "Event loop is closed" once past it, and `start()` again with
    "threads can only be started once". Now: FleetNotStartedError (a FleetClosedError) naming
    the failed start as its cause, and a retry of `start()` once NATS answers just works."""
    own_nats.stop()
    fleet = SyncFleet(own_nats.url, org=org, subjects=subjects, connect_timeout=0.5)

    def before_nats_is_back() -> BaseException:
        with pytest.raises(Exception) as failed:
            fleet.start()
        cause = failed.value
        assert not isinstance(cause, FleetClosedError)  # the connect error itself
        calls: list[Callable[[], object]] = [
            lambda: fleet.publish(_started(org, "r0")),
            lambda: fleet.flush(1),
            lambda: fleet.execution("writer"),
            lambda: fleet.fleet,
        ]
        for call in calls:
            with pytest.raises(FleetClosedError) as refused:
                call()
            _assert_refused_for_failed_start(refused.value, cause)
        return cause

    await asyncio.wait_for(asyncio.to_thread(before_nats_is_back), 30)

    own_nats.start()
    await make_streams(own_nats.url, subjects)

    def after_nats_is_back() -> None:
        assert fleet.start() is fleet
        try:
            with pytest.raises(RuntimeError, match="already started"):
                fleet.start()
            assert fleet.publish(_started(org, "r1")) is True
            with fleet.execution("writer", id="r2") as run:
                run.response = "done"
        finally:
            fleet.close()
        with pytest.raises(FleetClosedError, match="closed"):
            fleet.start()

    await asyncio.wait_for(asyncio.to_thread(after_nats_is_back), 30)
    nc = await nats.connect(own_nats.url)
    try:
        messages = await stream_messages(nc.jetstream(), subjects.events_stream)
    finally:
        await nc.close()
    ids = [body["execution"]["id"] for _, _, body in messages]
    assert ids == ["r1", "r2", "r2"]


async def test_a_failed_start_with_a_locked_spool_can_be_retried_once_it_is_free(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str, tmp_path: Path
) -> None:
    """The other way a start fails: the spool is held by another fleet. Calls are refused
    with the lock error as cause; the retry once it is released starts and publishes."""
    holder = SyncFleet(nats_url, org=org, subjects=streams, spool_dir=tmp_path)
    fleet = SyncFleet(nats_url, org=org, subjects=streams, spool_dir=tmp_path)

    def blocking() -> None:
        holder.start()
        with pytest.raises(shared.publisher.SpoolLockedError) as locked:
            fleet.start()
        with pytest.raises(FleetClosedError) as refused:
            fleet.publish(_started(org, "r1"))
        _assert_refused_for_failed_start(refused.value, locked.value)
        holder.close()
        fleet.start()
        try:
            assert fleet.publish(_started(org, "r1")) is True
        finally:
            fleet.close()

    await asyncio.wait_for(asyncio.to_thread(blocking), 30)
    messages = await stream_messages(js, streams.events_stream)
    assert [body["execution"]["id"] for _, _, body in messages] == ["r1"]


def test_a_call_before_start_says_it_is_not_started(nats_url: str, org: str) -> None:
    fleet = SyncFleet(nats_url, org=org)
    with pytest.raises(FleetClosedError, match="not started") as refused:
        fleet.publish(_started(org, "r1"))
    assert isinstance(refused.value, shared.publisher.FleetNotStartedError)
    assert refused.value.__cause__ is None
    fleet.close()


# -- occurred_at given as text -----------------------------------------------------------------

REFUSED_TIMES = [
    ("1999-12-31T23:59:59Z", "outside the times ingest accepts"),
    ("2300-01-01T00:00:00Z", "outside the times ingest accepts"),
    ("2199-12-31T00:00:01Z", "outside the times ingest accepts"),  # LATEST is midnight
    ("2000-01-01T00:30:00+01:00", "outside the times ingest accepts"),  # 1999 in UTC
    ("2026-01-31T12:00:00", "without a zone"),
    ("2026-01-31", "without a zone"),
    ("yesterday", "no RFC 3339 time"),
    ("20260131T120000Z", "no RFC 3339 time"),  # ISO 8601 basic form: fromisoformat takes it
    ("2026-02-30T12:00:00Z", "no RFC 3339 time"),
    ("", "no RFC 3339 time"),
]

#: Forms ingest accepts beside the SDK's own `...Z`: they must still be published.
ACCEPTED_TIMES = [
    "2026-01-31T12:00:00+01:00",
    "2026-01-31 12:00:00z",
    "2026-01-31t12:00:00,5+0100",
    "2026-01-31T12:00Z",
    "2199-12-31T00:00:00Z",
    "2000-01-01T00:00:00Z",
    "1769860800",  # a Unix time as text, which ingest's parser takes
]


@pytest.mark.parametrize("after_a_good_one", [False, True], ids=["first", "cached-subject"])
@pytest.mark.parametrize(("moment", "says"), REFUSED_TIMES)
async def test_an_occurred_at_ingest_would_dead_letter_is_refused_without_strict(
    nats_url: str,
    streams: Subjects,
    js: JetStreamContext,
    org: str,
    tmp_path: Path,
    moment: str,
    says: str,
    after_a_good_one: bool,
) -> None:
    """Without `strict`, the text was sent as it was: acked by JetStream, dead-lettered by
    ingest (reason `schema`). Both paths of `publish` refuse it: the first event of a subject
    (`prepare`) and one whose subject is cached (the hot path)."""
    async with Fleet(nats_url, org=org, subjects=streams, spool_dir=tmp_path) as fleet:
        if after_a_good_one:
            assert await fleet.publish(_started(org, "good")) is True
        event = _started(org, "bad", moment)
        with pytest.raises(InvalidEventError) as refused:
            await fleet.publish(event)
        assert refused.value.field == "occurred_at"
        assert refused.value.reason == "schema"
        assert refused.value.event_id == event["event_id"]
        assert says in str(refused.value)
        assert repr(moment) in str(refused.value)
        assert fleet.spool is not None
        assert fleet.spool.pending == 0
    messages = await stream_messages(js, streams.events_stream)
    assert [body["execution"]["id"] for _, _, body in messages] == (
        ["good"] if after_a_good_one else []
    )


@pytest.mark.parametrize("after_a_good_one", [False, True], ids=["first", "cached-subject"])
async def test_occurred_at_forms_ingest_accepts_are_published(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str, after_a_good_one: bool
) -> None:
    """The check refuses nothing ingest takes: each form is published, and ingest's own
    validator accepts the stored bytes on their subject."""
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        if after_a_good_one:
            assert await fleet.publish(_started(org, "good")) is True
        for index, moment in enumerate(ACCEPTED_TIMES):
            assert await fleet.publish(_started(org, f"r{index}", moment)) is True
    messages = await stream_messages(js, streams.events_stream)
    expected = [f"r{index}" for index in range(len(ACCEPTED_TIMES))]
    assert [body["execution"]["id"] for _, _, body in messages][-len(expected) :] == expected
    for index, moment in enumerate(ACCEPTED_TIMES):
        stored = await js.get_msg(streams.events_stream, len(messages) - len(expected) + index + 1)
        assert stored.subject is not None
        assert stored.data is not None
        verdict = validate(streams, stored.subject, stored.data)
        assert not isinstance(verdict, Rejected), (moment, verdict)
