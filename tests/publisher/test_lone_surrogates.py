"""Text holding a lone surrogate (Python's `json.loads` makes one from a JSON string cut in
the middle of an escaped emoji, `"\\ud83d"`) cannot be encoded as UTF-8. A run that captured
such text used to raise on leaving, its last event unsent and its row left `running`; it now
publishes the text with U+FFFD in place of each lone surrogate, as it does for NUL."""

from __future__ import annotations

import json

import pytest
from nats.js import JetStreamContext

from shared.publisher import Fleet
from shared.publisher.fit import NUL_REPLACEMENT
from shared.subjects import Subjects
from tests.publisher.stream_reads import stored

HALF_EMOJI = json.loads('"half an emoji: \\ud83d"')


@pytest.mark.parametrize("repeat", [1, 20_000])  # short text, and text long enough to be cut
async def test_a_run_capturing_a_lone_surrogate_still_ends(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str, repeat: int
) -> None:
    text = HALF_EMOJI * repeat
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        async with fleet.execution("a", id="in-message", message=text) as run:
            run.response = text
            run.execution_log = text
            run.tool_calls = [{"said": HALF_EMOJI}]
        async with run.component("step", input={"q": HALF_EMOJI}) as step:
            step.output = {HALF_EMOJI: HALF_EMOJI}
    events = await stored(js, streams)
    assert [e.type.value for e in events] == [
        "execution_started",
        "execution_completed",
        "component_started",
        "component_completed",
    ]
    last = events[1].execution
    assert last is not None
    assert last.response is not None
    assert last.message is not None
    assert last.response.startswith("half an emoji: " + NUL_REPLACEMENT)
    assert last.message.startswith("half an emoji: " + NUL_REPLACEMENT)
    assert last.tool_calls == [{"said": "half an emoji: " + NUL_REPLACEMENT}]
    step_done = events[3].component
    assert step_done is not None
    replaced = "half an emoji: " + NUL_REPLACEMENT
    assert step_done.output == {replaced: replaced}
