"""Events that can never be stored are refused up front or dropped from the spool, so one of
them never blocks the events behind it; what a run captures always fits."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from shared.events import MAX_LOG
from shared.publisher import Fleet, InvalidEventError, OutgoingEvent
from shared.publisher.fit import NUL_REPLACEMENT
from shared.subjects import Subjects
from tests.publisher.conftest import (
    OwnNats,
    completed,
    left_by_an_older_client,
    stream_messages,
)
from tests.publisher.stream_reads import stored

Messages = list[tuple[str, dict[str, str], dict[str, Any]]]


def run_id_of(event: OutgoingEvent) -> str:
    return str(orjson.loads(event.payload)["execution"]["id"])


async def test_a_log_of_wide_characters_is_cut_to_fit_and_nothing_is_spooled(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str, tmp_path: Path
) -> None:
    # 400k characters (under MAX_LOG) of a 3-byte character: 1.2 MB, over NATS' max_payload.
    log = "漢" * 400_000
    async with Fleet(nats_url, org=org, subjects=streams, spool_dir=tmp_path / "spool") as fleet:
        async with fleet.execution("writer", id="big") as run:
            run.execution_log = log
        for i in range(3):
            async with fleet.execution("writer", id=f"small-{i}") as run:
                run.response = "ok"
        assert await fleet.flush(5)
        assert (fleet.stats.spooled, fleet.stats.dropped, fleet.stats.published) == (0, 0, 8)
    events = await stored(js, streams)
    assert len(events) == 8
    big = events[1].execution
    assert big is not None
    assert big.id == "big"
    assert big.execution_log == log[: MAX_LOG // 3]
    assert len(big.execution_log.encode()) <= MAX_LOG


async def test_run_replaces_nul_in_what_it_captures(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    async with (
        Fleet(nats_url, org=org, subjects=streams) as fleet,
        fleet.execution("gamma", id="nul-run", message="sum\x00marise") as run,
    ):
        async with run.component("tool", input={"q\x00": ["a\x00"]}) as step:
            step.output = "out\x00"
        run.response = "model output with a stray \x00 byte"
        run.tool_calls = [{"name": "grep", "args": "\x00"}]
    events = await stored(js, streams)
    assert [e.type.value for e in events] == [
        "execution_started",
        "component_started",
        "component_completed",
        "execution_completed",
    ]
    done = events[-1].execution
    assert done is not None
    assert done.message == f"sum{NUL_REPLACEMENT}marise"
    assert done.response == f"model output with a stray {NUL_REPLACEMENT} byte"
    assert done.tool_calls == [{"name": "grep", "args": NUL_REPLACEMENT}]
    step_done = events[2].component
    assert step_done is not None
    assert step_done.input == {f"q{NUL_REPLACEMENT}": [f"a{NUL_REPLACEMENT}"]}
    assert step_done.output == f"out{NUL_REPLACEMENT}"


@pytest.mark.parametrize(("spooled", "strict"), [(False, False), (True, False), (False, True)])
async def test_events_ingest_would_dead_letter_are_refused_naming_the_field(
    nats_url: str,
    streams: Subjects,
    js: JetStreamContext,
    org: str,
    tmp_path: Path,
    spooled: bool,
    strict: bool,
) -> None:
    """NUL, size and names always; a value out of range with `strict` (else ingest refuses
    it, from the dead-letter stream, as before)."""
    spool_dir = tmp_path / "spool" if spooled else None
    fleet_ = Fleet(nats_url, org=org, subjects=streams, spool_dir=spool_dir, strict=strict)
    async with fleet_ as fleet:
        with pytest.raises(InvalidEventError) as nul:
            await fleet.publish(completed(org, "nul-run", response="a\x00b"))
        assert nul.value.field == "execution.response"
        assert "NUL" in str(nul.value)
        # 475k "é" are under MAX_LOG characters, and 950 KB (> 900 KiB) as published.
        with pytest.raises(InvalidEventError) as big:
            await fleet.publish(completed(org, "big-run", execution_log="é" * 475_000))
        assert (big.value.field, big.value.reason) == ("event", "too_large")
        if strict:
            with pytest.raises(InvalidEventError) as cost:
                await fleet.publish(completed(org, "neg", cost=-3))
            assert cost.value.field == "execution.cost"
        with pytest.raises(InvalidEventError) as name:
            await fleet.publish(completed(org, "x") | {"org": "not an org"})
        assert name.value.field == "org"
        assert isinstance(name.value, ValueError)
        assert await fleet.publish(completed(org, "fine")) is True
        assert fleet.spool is None or fleet.spool.pending == 0
        assert fleet.stats.spooled == fleet.stats.dropped == 0
    assert [e.execution.id for e in await stored(js, streams) if e.execution] == ["fine"]


async def small_stream(nats_url: str, subjects: Subjects, max_msg_size: int) -> None:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().add_stream(
            StreamConfig(
                name=subjects.events_stream,
                subjects=[subjects.all_events],
                max_msg_size=max_msg_size,
                duplicate_window=120,
            )
        )
    finally:
        await nc.close()


async def test_an_event_jetstream_refuses_for_good_is_raised_not_spooled(
    nats_url: str, subjects: Subjects, js: JetStreamContext, org: str, tmp_path: Path
) -> None:
    await small_stream(nats_url, subjects, max_msg_size=4096)
    fleet = Fleet(nats_url, org=org, subjects=subjects, spool_dir=tmp_path / "spool")
    async with fleet:
        with pytest.raises(InvalidEventError) as refused:
            await fleet.publish(completed(org, "big", response="x" * 8000))
        assert refused.value.reason == "refused"
        assert "BadRequestError" in refused.value.detail
        assert fleet.spool is not None
        assert fleet.spool.pending == 0
        assert await fleet.publish(completed(org, "after")) is True
    assert [e.execution.id for e in await stored(js, subjects) if e.execution] == ["after"]


async def test_spooled_event_jetstream_refuses_is_dropped_and_the_rest_drain(
    own_nats: OwnNats,
    subjects: Subjects,
    org: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await small_stream(own_nats.url, subjects, max_msg_size=4096)
    dropped: list[OutgoingEvent] = []
    fleet = Fleet(
        own_nats.url, org=org, subjects=subjects, spool_dir=tmp_path / "spool",
        ack_timeout=0.5, on_overflow=dropped.append,
    )  # fmt: skip
    await fleet.start()
    try:
        own_nats.stop()
        # Valid for ingest (under 900 KiB), so spooled while NATS is away; over this stream's
        # max_msg_size, so JetStream answers "bad request" when the spool re-sends it.
        assert await fleet.publish(completed(org, "big", response="x" * 8000)) is False
        for i in range(3):
            assert await fleet.publish(completed(org, f"small-{i}")) is False
        own_nats.start()
        with caplog.at_level(logging.ERROR, "fleetwatch.publisher"):
            assert await fleet.flush(15)
        assert (fleet.stats.dropped, fleet.stats.refused, fleet.stats.resent) == (1, 1, 3)
        assert [run_id_of(e) for e in dropped] == ["big"]
        assert any("refuses it for good" in r.message for r in caplog.records)
    finally:
        await fleet.close()
    nc = await nats.connect(own_nats.url)
    try:
        ids = [e.execution.id for e in await stored(nc.jetstream(), subjects) if e.execution]
    finally:
        await nc.close()
    assert ids == ["small-0", "small-1", "small-2"]


async def test_a_spool_poisoned_by_an_older_client_drains_after_upgrade(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str, tmp_path: Path
) -> None:
    # An older client spooled a 1.2 MB event (over NATS' max_payload) ahead of good ones.
    left_by_an_older_client(tmp_path / "spool", streams, org, after=("next-1", "next-2"))
    dropped: list[OutgoingEvent] = []
    fleet = Fleet(
        nats_url, org=org, subjects=streams, spool_dir=tmp_path / "spool",
        on_overflow=dropped.append,
    )  # fmt: skip
    async with fleet:
        assert await fleet.flush(10)
        assert fleet.spool is not None
        assert fleet.spool.pending == 0
        assert (fleet.stats.dropped, fleet.stats.refused, fleet.stats.resent) == (1, 1, 2)
        assert [run_id_of(e) for e in dropped] == ["poison"]
    messages: Messages = await stream_messages(js, streams.events_stream)
    assert [m[2]["execution"]["id"] for m in messages] == ["next-1", "next-2"]


class Answer:
    """What an LLM SDK returns: the text is `answer.text`, not the answer."""

    text = "hello"


async def test_text_fields_refuse_what_is_not_text_where_it_is_set(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    """`run.response = 42` was taken as set: leaving the run then raised TypeError before
    its last event was built (the row stayed `running`), and a dict went out as a response
    ingest dead-letters. Now the assignment raises, inside the body, so the run ends
    `execution_failed` naming the field, as any exception in the body does."""
    values: list[Any] = [42, 0.5, {"text": "hi"}, Answer()]
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        for i, value in enumerate(values):
            with pytest.raises(TypeError, match=r"Run\.response = .* refused: text \(str\)"):
                async with fleet.execution("writer", id=f"r{i}") as run:
                    run.response = value
            assert run.response is None
        with pytest.raises(TypeError, match=r"Run\.message = 7 refused"):
            fleet.execution("writer", message=7)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"Run\.execution_log"):
            run.set(cost=1.0, execution_log=b"bytes")
        assert run.cost is None  # all or none
    last = {e.execution.id: e for e in await stored(js, streams) if e.execution}
    assert set(last) == {f"r{i}" for i in range(len(values))}
    for event in last.values():
        assert event.type == "execution_failed"
        assert event.execution is not None
        assert event.execution.error_type == "TypeError"
        assert event.execution.error is not None
        assert event.execution.error.startswith("Run.response = ")


async def test_a_run_whose_tool_calls_cannot_be_published_still_ends(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    """`tool_calls` are not checked as they are set; a last event they made unpublishable (an
    SDK object in them, or a megabyte of them) was refused and nothing else was sent, so the
    row stayed `running`. It now goes out without them, and the code hears of it."""
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        with pytest.raises(InvalidEventError, match="went out without tool_calls") as refused:
            async with fleet.execution("writer", id="sdk-object") as run:
                run.tool_calls = [Answer()]
        assert refused.value.field == "execution.tool_calls"

        async def failing_with_a_megabyte_of_tool_calls() -> None:
            async with fleet.execution("writer", id="too-big") as run:
                run.tool_calls = ["x" * 1000] * 1000
                raise KeyError("missing")

        # The body's own exception goes on; the refusal is only logged then.
        with pytest.raises(KeyError, match="missing"):
            await failing_with_a_megabyte_of_tool_calls()
    last = {e.execution.id: e for e in await stored(js, streams) if e.execution}
    assert last["sdk-object"].type == "execution_completed"
    assert last["too-big"].type == "execution_failed"
    for event in last.values():
        assert event.execution is not None
        assert event.execution.tool_calls is None


async def test_a_step_whose_output_cannot_be_published_still_ends(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    """A step's `output` is not checked as it is set either: an output its event cannot carry
    left the step `running` for good. The step now ends without it, and the code hears of it
    (here its run then fails, naming the output)."""
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:

        async def a_step_answering_an_sdk_object() -> None:
            async with (
                fleet.execution("writer", id="with-step") as run,
                run.component("summarize") as step,
            ):
                step.output = Answer()

        with pytest.raises(InvalidEventError, match="went out without its output") as refused:
            await a_step_answering_an_sdk_object()
        assert refused.value.field == "component.output"
    events = await stored(js, streams)
    steps = [e for e in events if e.component is not None]
    assert [e.type for e in steps] == ["component_started", "component_completed"]
    assert steps[-1].component is not None
    assert steps[-1].component.output is None
    (last,) = [e for e in events if e.execution is not None and e.type != "execution_started"]
    assert last.type == "execution_failed"
