"""How a run ends when its body leaves by `sys.exit()` or an async generator is closed early:
`sys.exit(0)` in a run was `execution_failed` with error "0", and a generator closed before
its end (its consumer stopped) was a failure too, not a stop."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest
from nats.js import JetStreamContext

from shared.publisher import Fleet
from shared.subjects import Subjects
from tests.publisher.conftest import stream_messages


async def _ends(js: JetStreamContext, streams: Subjects) -> list[tuple[str, dict[str, Any]]]:
    messages = await stream_messages(js, streams.events_stream)
    return [
        (body["type"], body.get("execution") or body.get("component") or {})
        for _, _, body in messages
        if not body["type"].endswith("_started")
    ]


async def _exit_in_a_step(fleet: Fleet, code: int | None) -> None:
    async with fleet.execution("cron") as run, run.component("last") as step:
        step.output = {"rows": 3}
        raise SystemExit(code)


@pytest.mark.parametrize("code", [None, 0])
async def test_a_clean_sys_exit_completes_the_run_and_its_step(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str, code: int | None
) -> None:
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        with pytest.raises(SystemExit):
            await _exit_in_a_step(fleet, code)
        ends = await _ends(js, streams)
    assert [t for t, _ in ends] == ["component_completed", "execution_completed"]
    assert ends[0][1]["output"] == {"rows": 3}


async def test_an_exit_with_a_status_or_message_still_fails_the_run(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        with pytest.raises(SystemExit):
            async with fleet.execution("cron"):
                raise SystemExit("stopped by operator")
        ends = await _ends(js, streams)
    assert [(t, body["error"]) for t, body in ends] == [("execution_failed", "stopped by operator")]


async def test_a_generator_closed_before_its_end_cancels_its_run(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:

        async def pages() -> AsyncGenerator[int, None]:
            async with fleet.execution("pager"):
                for page in range(10):
                    yield page

        stream = pages()
        assert await anext(stream) == 0
        await stream.aclose()  # the consumer stopped after one page
        ends = await _ends(js, streams)
    assert [t for t, _ in ends] == ["execution_cancelled"]
