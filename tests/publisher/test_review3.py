"""Review 3 (second pass) of the publisher SDK: an agent whose clock is outside the times
ingest accepts is refused at the call instead of publishing events that are dead-lettered,
and `SyncFleet.close()` ends the calls other threads are blocked in instead of leaving
them hanging."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.js import JetStreamContext

import shared.publisher
import shared.publisher.envelope
import shared.publisher.run
from shared.events import EventType
from shared.publisher import Fleet, InvalidEventError, SyncFleet, component_event, execution_event
from shared.subjects import Subjects
from tests.publisher.conftest import stream_messages

WRONG_CLOCKS = [datetime(1999, 12, 31, 23, 59, tzinfo=UTC), datetime(2300, 1, 1, tzinfo=UTC)]


def _assert_names_the_range(refused: InvalidEventError, field: str) -> None:
    assert refused.field == field
    assert refused.reason == "schema"
    assert "2000-01-01" in str(refused)
    assert "2199-12-31" in str(refused)


@pytest.mark.parametrize("moment", WRONG_CLOCKS)
def test_a_time_given_outside_the_accepted_range_is_refused_when_built(
    moment: datetime,
) -> None:
    """`execution_event(..., occurred_at=<1999>)` built an envelope ingest dead-letters
    (reason `schema`), and the light check on publish let it through: acked, then lost."""
    with pytest.raises(InvalidEventError) as refused:
        execution_event(
            EventType.EXECUTION_STARTED,
            org="acme",
            execution={"id": "r1", "agent_name": "writer"},
            occurred_at=moment,
        )
    _assert_names_the_range(refused.value, "occurred_at")
    with pytest.raises(InvalidEventError) as refused:
        component_event(
            EventType.COMPONENT_STARTED,
            org="acme",
            agent="writer",
            component={"execution_id": "r1", "node_id": "n", "started_at": moment},
        )
    _assert_names_the_range(refused.value, "component.started_at")


def test_times_inside_the_range_are_written_as_before() -> None:
    """The check takes what the contract takes: an offset, and a naive time (local time)."""
    event = execution_event(
        EventType.EXECUTION_STARTED,
        org="acme",
        execution={"id": "r1", "agent_name": "writer", "started_at": datetime(2026, 2, 5)},
        occurred_at=datetime(2026, 2, 5, 10, tzinfo=UTC),
    )
    assert event["occurred_at"] == "2026-02-05T10:00:00Z"
    assert event["execution"]["started_at"].startswith("2026-02-0")


@pytest.mark.parametrize("clock", WRONG_CLOCKS)
async def test_an_agent_whose_clock_is_wrong_is_refused_at_the_call(
    nats_url: str,
    streams: Subjects,
    js: JetStreamContext,
    org: str,
    monkeypatch: pytest.MonkeyPatch,
    clock: datetime,
) -> None:
    """The SDK stamps `occurred_at` with the machine's clock: set to 1999 or 2300, every
    event was acked by JetStream and dead-lettered by ingest, and the agent never knew.
    Entering the run now raises, naming the field, the range and the clock."""
    monkeypatch.setattr(shared.publisher.envelope, "now", lambda: clock)
    monkeypatch.setattr(shared.publisher.run, "now", lambda: clock)
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        with pytest.raises(InvalidEventError) as refused:
            async with fleet.execution("writer"):
                pass
        _assert_names_the_range(refused.value, "occurred_at")
        assert "clock" in str(refused.value)
        # Refused on entering, the run leaves nothing behind (no terminate subscription).
        assert not fleet.terminate.runs
    assert await stream_messages(js, streams.events_stream) == []


async def test_close_ends_a_call_another_thread_is_blocked_in(
    nats_url: str, subjects: Subjects, org: str, tmp_path: Path
) -> None:
    """A thread waiting in `flush()` (the spool cannot drain: no stream takes its subjects)
    while another closed the fleet waited for good: the loop stopped under it, so nothing
    would ever complete its call. It now ends promptly with a clear error."""
    outcome: list[BaseException | bool] = []

    def blocking() -> float:
        fleet = SyncFleet(nats_url, org=org, subjects=subjects, spool_dir=tmp_path).start()
        event = execution_event(
            EventType.EXECUTION_STARTED, org=org, execution={"id": "r1", "agent_name": "writer"}
        )
        assert fleet.publish(event) is False  # no stream: spooled
        assert fleet.fleet.spool is not None
        assert fleet.fleet.spool.pending == 1

        def flush() -> None:
            try:
                outcome.append(fleet.flush())
            except BaseException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=flush, daemon=True)
        waiter.start()
        # Only once the waiter is in flush() (its call is one close() must end): a close()
        # that came first refused the call with another message.
        deadline = time.monotonic() + 10
        while True:
            with fleet._lock:
                if fleet._calls:
                    break
            assert time.monotonic() < deadline, "the waiter never entered flush()"
            time.sleep(0.01)
        started = time.monotonic()
        fleet.close(drain_timeout=0.5)
        waiter.join(5)
        return time.monotonic() - started

    took = await asyncio.wait_for(asyncio.to_thread(blocking), 30)
    assert outcome, "the thread blocked in flush() still hangs after close()"
    assert took < 5
    [error] = outcome
    assert isinstance(error, shared.publisher.FleetClosedError), error
    assert "close()" in str(error)
    assert "flush" in str(error)


async def test_a_call_after_close_says_the_fleet_is_closed(
    nats_url: str, streams: Subjects, org: str
) -> None:
    """A call after `close()` failed with asyncio's 'Event loop is closed' (and a coroutine
    never awaited), which does not tell the agent what it did wrong; a second close raised
    the same."""

    def blocking() -> BaseException | None:
        fleet = SyncFleet(nats_url, org=org, subjects=streams).start()
        fleet.close()
        fleet.close()  # a second close does nothing
        try:
            fleet.publish(
                execution_event(
                    EventType.EXECUTION_STARTED,
                    org=org,
                    execution={"id": "r1", "agent_name": "writer"},
                )
            )
        except Exception as exc:
            return exc
        return None

    error = await asyncio.to_thread(blocking)
    assert isinstance(error, shared.publisher.FleetClosedError), error
    assert "SyncFleet is closed" in str(error)
