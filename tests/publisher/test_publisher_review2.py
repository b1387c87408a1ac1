"""Review 2 of the publisher SDK: an exception whose text cannot be read still ends the
run and the step, and a step's input the event cannot carry does not fail the step."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from shared.publisher import Fleet, InvalidEventError, OutgoingEvent, Run, Spool
from shared.subjects import Subjects
from tests.publisher.conftest import stream_messages


class Unprintable(Exception):
    """An exception whose `__str__` raises (it reads an attribute never set)."""

    def __str__(self) -> str:
        raise AttributeError("detail")


def _bodies(messages: list[tuple[str, dict[str, str], dict[str, Any]]]) -> list[dict[str, Any]]:
    return [body for _, _, body in messages]


async def test_an_exception_whose_str_raises_still_fails_the_run_and_step(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    """`str(exc)` raised inside `__aexit__`: the AttributeError replaced the body's exception
    and neither `component_failed` nor `execution_failed` went out (rows left `running`)."""
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        with pytest.raises(Unprintable):
            async with fleet.execution("fragile") as run, run.component("step"):
                raise Unprintable
        bodies = _bodies(await stream_messages(js, streams.events_stream))
    assert [body["type"] for body in bodies] == [
        "execution_started",
        "component_started",
        "component_failed",
        "execution_failed",
    ]
    for body in bodies[2:]:
        part = body.get("component") or body["execution"]
        assert part["error_type"] == "Unprintable"
        assert part["error"]  # something readable, never empty


@pytest.mark.parametrize(
    ("value", "reason"),
    [({"document": "x" * 1_000_000}, "too_large"), ({"amount": Decimal("1.5")}, "not_json")],
)
async def test_a_step_input_the_event_cannot_carry_is_left_out_not_fatal(
    nats_url: str,
    streams: Subjects,
    js: JetStreamContext,
    org: str,
    value: dict[str, Any],
    reason: str,
) -> None:
    """A 1 MB document (or a Decimal) as a step's input made entering the step raise, so the
    step's body never ran and the run failed for what was only to be shown. Now it goes as
    `output` does: left out of the step's events, the body runs, the step ends `completed`,
    and leaving it raises `InvalidEventError` naming `component.input`."""
    ran = False

    async def summarize(run: Run) -> None:
        nonlocal ran
        async with run.component("summarize", input=value) as step:
            ran = True
            step.output = "short"

    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        async with fleet.execution("reader") as run:
            with pytest.raises(InvalidEventError) as refused:
                await summarize(run)
        bodies = _bodies(await stream_messages(js, streams.events_stream))
    assert ran
    assert refused.value.field == "component.input"
    assert refused.value.reason == reason
    assert [body["type"] for body in bodies] == [
        "execution_started",
        "component_started",
        "component_completed",
        "execution_completed",
    ]
    assert "input" not in bodies[1]["component"]
    assert bodies[2]["component"]["output"] == "short"


async def test_a_refused_input_is_left_out_of_component_failed_too(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        async with fleet.execution("reader") as run:
            with pytest.raises(RuntimeError, match="model down"):
                async with run.component("summarize", input={"b": b"raw"}):
                    raise RuntimeError("model down")
        bodies = _bodies(await stream_messages(js, streams.events_stream))
    assert [body["type"] for body in bodies][1:3] == ["component_started", "component_failed"]
    assert bodies[2]["component"]["error"] == "model down"


async def test_a_cancel_while_execution_started_is_acked_still_ends_the_run(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    """Cancelled (a timeout, Ctrl-C, a TaskGroup sibling) while `execution_started` waited for
    its ack: the event was out, entering raised CancelledError and nothing else was sent, so
    the row stayed `running` for good. Now `execution_cancelled` follows, once."""
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        entered = False

        async def agent() -> None:
            nonlocal entered
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # delivered at the first await of entering: the ack's
            async with fleet.execution("late"):
                entered = True

        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(agent())
        assert not entered
        bodies = _bodies(await stream_messages(js, streams.events_stream))
        assert not fleet.terminate.runs
    assert [body["type"] for body in bodies] == ["execution_started", "execution_cancelled"]
    assert bodies[1]["execution"]["error_type"] == "Cancelled"


async def test_one_step_object_entered_again_counts_the_next_attempt(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    """A retry loop around one `run.component(...)` object sent attempt 1 every time: ingest
    never moves a terminal status back, so attempt 1's `failed` hid the retry's success."""
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        async with fleet.execution("retrier") as run:
            step = run.component("charge", retry_policy="fixed", max_attempts=3)
            for attempt in range(3):
                try:
                    async with step:
                        if attempt < 2:
                            raise TimeoutError("gateway slow")
                        step.output = "charged"
                    break
                except TimeoutError:
                    continue
        bodies = _bodies(await stream_messages(js, streams.events_stream))
    steps = [(body["type"], body["component"]["attempt"]) for body in bodies[1:-1]]
    assert steps == [
        ("component_started", 1),
        ("component_failed", 1),
        ("component_started", 2),
        ("component_failed", 2),
        ("component_started", 3),
        ("component_completed", 3),
    ]


def test_a_damaged_negative_offset_does_not_hold_the_spool(tmp_path: Path) -> None:
    """An `offset` file reading `-7` made every read seek before the file's start (OSError):
    the drain failed on every pass and nothing spooled was ever sent again."""
    event = OutgoingEvent("fleet.events.o.a.execution_started", "o:e1", b'{"n":1}')
    spool = Spool(tmp_path)
    spool.open()
    spool.append(event)
    spool.close()
    (tmp_path / "offset").write_text("-7")
    again = Spool(tmp_path)
    again.open()
    try:
        assert again.pending == 1
        assert [e for _, e in again.read(10)] == [event]
    finally:
        again.close()
