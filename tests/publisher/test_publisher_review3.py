"""Review 3 of the publisher SDK: a ready-made event on a subject nothing can take is refused
instead of holding the spool for good, an `execution` that is not an object is refused as
invalid, and the sync facade links nested runs, gives `child()` runs it can enter and
refuses (rather than hangs on) a blocking call from its own event-loop thread."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.js import JetStreamContext

from shared.events import EventType
from shared.publisher import Fleet, InvalidEventError, OutgoingEvent, Spool, SyncFleet
from shared.publisher.cli import emit_main
from shared.publisher.envelope import dedupe_id, encode, execution_event
from shared.subjects import Subjects
from tests.publisher.conftest import stream_messages, wait_for_count


def _started(org: str, run_id: str, agent: str = "writer") -> dict[str, Any]:
    return execution_event(
        EventType.EXECUTION_STARTED, org=org, execution={"id": run_id, "agent_name": agent}
    )


def _ready_made(streams: Subjects, org: str, run_id: str) -> OutgoingEvent:
    event = _started(org, run_id)
    return OutgoingEvent(
        streams.event(org, "writer", "execution_started"),
        dedupe_id(org, event["event_id"]),
        encode(event),
    )


@pytest.mark.parametrize("subject", ["bad subject", "", "fleet..events", "x.events.o.a.nope"])
async def test_send_on_a_subject_nothing_takes_is_refused_not_spooled(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str, tmp_path: Path, subject: str
) -> None:
    """`send` took any subject: NATS refused `bad subject` (BadSubjectError) and JetStream
    answered no other (no stream), both taken as transient, so the event was spooled, sent
    again and again, and every later event queued behind it for good."""
    async with Fleet(nats_url, org=org, subjects=streams, spool_dir=tmp_path) as fleet:
        with pytest.raises(InvalidEventError) as refused:
            await fleet.send(OutgoingEvent(subject, f"{org}:odd", b'{"n":1}'))
        assert refused.value.field == "subject"
        assert fleet.spool is not None
        assert fleet.spool.pending == 0
        assert await fleet.send(_ready_made(streams, org, "after")) is True
    bodies = [body for _, _, body in await stream_messages(js, streams.events_stream)]
    assert [body["execution"]["id"] for body in bodies] == ["after"]


async def test_a_spooled_record_nats_cannot_carry_is_dropped_not_blocking(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str, tmp_path: Path
) -> None:
    """A spool left by the client before the fix, with a record whose subject holds a space
    ahead of a good one: BadSubjectError was transient, so the good one was never sent."""
    spool = Spool(tmp_path)
    spool.open()
    spool.append(OutgoingEvent("bad subject", f"{org}:odd", b'{"n":1}'))
    spool.append(_ready_made(streams, org, "behind"))
    spool.close()
    async with Fleet(nats_url, org=org, subjects=streams, spool_dir=tmp_path) as fleet:
        assert await fleet.flush(5)
        assert (fleet.stats.refused, fleet.stats.dropped) == (1, 1)
    bodies = [body for _, _, body in await stream_messages(js, streams.events_stream)]
    assert [body["execution"]["id"] for body in bodies] == ["behind"]


@pytest.mark.parametrize("execution", [[1], "abc", 5])
async def test_an_execution_that_is_not_an_object_is_refused_naming_it(
    nats_url: str, streams: Subjects, org: str, execution: Any
) -> None:
    """`{"execution": [1]}` raised AttributeError from `publish` (not the InvalidEventError
    it promises) and a traceback from `fleetwatch emit`."""
    event = {**_started(org, "r"), "execution": execution}
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        with pytest.raises(InvalidEventError) as refused:
            await fleet.publish(event)
    assert refused.value.field == "execution"


def test_emit_refuses_an_execution_that_is_not_an_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.ndjson"
    events.write_bytes(orjson.dumps({**_started("acme", "r"), "execution": "abc"}))
    assert emit_main(["--json", str(events), "--nats-url", "nats://127.0.0.1:1"]) == 2
    assert "execution must be a JSON object" in capsys.readouterr().err


async def test_sync_runs_nested_in_one_thread_link_to_their_parent(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    """The async client links a run begun inside another's body; the sync facade did not
    (a thread has no task), and `run.child(...)` gave an async `Run` that `with` refused."""

    def blocking() -> dict[str, str]:
        with SyncFleet(nats_url, org=org, subjects=streams) as fleet:
            with fleet.execution("planner") as outer:
                with fleet.execution("writer") as nested:
                    pass
                with outer.child("reviewer", triggered_by="mcp") as child:
                    pass
            with fleet.execution("later") as later:
                pass
            return {"outer": outer.id, "nested": nested.id, "child": child.id, "later": later.id}

    ids = await asyncio.to_thread(blocking)
    messages = await wait_for_count(js, streams.events_stream, 8)
    done = {
        body["execution"]["agent_name"]: body["execution"]
        for _, _, body in messages
        if body["type"] == "execution_completed"
    }
    assert done["writer"]["parent_execution_id"] == ids["outer"]
    assert done["writer"]["triggered_by"] == "agent"
    assert done["reviewer"]["parent_execution_id"] == ids["outer"]
    assert done["reviewer"]["triggered_by"] == "mcp"
    assert "parent_execution_id" not in done["planner"]
    assert "parent_execution_id" not in done["later"]


async def test_a_blocking_call_from_the_loop_thread_raises_instead_of_hanging(
    nats_url: str, streams: Subjects, org: str
) -> None:
    """An `on_terminate` callback (run in the facade's loop thread) that called
    `run.progress()` or `fleet.publish()` waited for the loop it blocked: the agent, its
    terminate answers and its spool's drain hung for good."""

    def blocking() -> tuple[list[BaseException], str]:
        fleet = SyncFleet(nats_url, org=org, subjects=streams).start()
        errors: list[BaseException] = []

        def on_loop() -> None:
            try:
                fleet.publish(_started(org, "from-callback"))
            except RuntimeError as exc:
                errors.append(exc)

        fleet._loop.call_soon_threadsafe(on_loop)
        alive = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "alive"), fleet._loop)
        try:
            answer = alive.result(3)
        except TimeoutError:
            return errors, "hung"  # the loop thread is stuck: nothing can close the fleet
        fleet.close()
        return errors, answer

    errors, answer = await asyncio.to_thread(blocking)
    assert answer == "alive"
    assert len(errors) == 1
    assert "event-loop thread" in str(errors[0])
