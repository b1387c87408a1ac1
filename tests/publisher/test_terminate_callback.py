"""The terminate answer does not wait for the agent's `on_terminate` callback (docs: the
process "answers ... and then calls" it): an async callback that takes longer than the
requester waits (the query service, 3 s), or one that raises, left the request unanswered,
so the operator was told the agent is unreachable while the run was being stopped."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.js import JetStreamContext

from shared.publisher import Fleet
from shared.subjects import Subjects
from tests.publisher.conftest import ask_terminate, stream_messages


async def test_a_slow_async_callback_does_not_delay_the_answer(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    called = asyncio.Event()
    release = asyncio.Event()

    async def on_terminate(reason: str | None) -> None:
        called.set()
        await release.wait()  # a graceful stop that takes its time

    async with (
        Fleet(nats_url, org=org, subjects=streams) as fleet,
        fleet.execution("slow-stop", on_terminate=on_terminate) as run,
    ):
        reply = await ask_terminate(fleet, streams, org, "slow-stop", run.id, timeout=1)
        assert b'"accepted":true' in reply
        await asyncio.wait_for(called.wait(), 3)
        release.set()
    last = (await stream_messages(js, streams.events_stream))[-1][2]
    assert last["type"] == "execution_cancelled"


async def test_a_callback_that_raises_is_logged_and_the_request_answered(
    nats_url: str, streams: Subjects, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    def on_terminate(reason: str | None) -> None:
        raise RuntimeError("cleanup failed")

    with caplog.at_level(logging.ERROR, "fleetwatch.publisher"):
        async with (
            Fleet(nats_url, org=org, subjects=streams) as fleet,
            fleet.execution("bad-stop", on_terminate=on_terminate) as run,
        ):
            reply = await ask_terminate(fleet, streams, org, "bad-stop", run.id, timeout=2)
            assert b'"accepted":true' in reply
            assert run.terminate_requested
    assert any("cleanup failed" in (r.exc_text or "") for r in caplog.records)
