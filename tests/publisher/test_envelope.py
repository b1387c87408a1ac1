"""Pure: whatever a run is given, the events it builds are valid contract events."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.events import MAX_LOG, MAX_TEXT, Event
from shared.publisher import Fleet
from shared.publisher.checks import checked
from shared.publisher.envelope import OutgoingEvent, dedupe_id, iso, new_event_id
from shared.publisher.fit import fit_text


class CapturingFleet(Fleet):
    """Records envelopes instead of sending them (the network is not under test here)."""

    def __init__(self) -> None:
        super().__init__(org="acme")
        self.sent: list[dict[str, Any]] = []

    async def publish(self, event: dict[str, Any]) -> bool:
        self.prepare(event)  # the real check: raises what the real publish raises
        self.sent.append(event)
        return True

    async def send(self, event: OutgoingEvent) -> bool:
        raise AssertionError("not used")


# Long texts of 1-, 2- and 3-byte characters around the limit, and text with NUL.
texts = (
    st.text(max_size=300)
    | st.integers(MAX_TEXT // 3 - 2, MAX_TEXT + 20).map(lambda n: "é漢a"[n % 3] * n)
    | st.text(alphabet="a\x00\n", max_size=50)
)


@settings(max_examples=60, deadline=None)
@given(
    message=st.none() | texts,
    response=st.none() | texts,
    error=texts,
    cost=st.none() | st.floats(min_value=0, max_value=1e6),
    tokens=st.none() | st.integers(min_value=0, max_value=10**9),
    tool_calls=st.none() | st.lists(st.text(max_size=20), max_size=5),
    fail=st.booleans(),
)
def test_any_run_publishes_valid_events(
    message: str | None,
    response: str | None,
    error: str,
    cost: float | None,
    tokens: int | None,
    tool_calls: list[str] | None,
    fail: bool,
) -> None:
    fleet = CapturingFleet()

    async def go() -> None:
        try:
            async with fleet.execution("a-1", message=message, triggered_by="weird") as run:
                async with run.component("s", input={"q": message}) as step:
                    step.output = [1, "x"]
                run.set(response=response, cost=cost, tokens_in=tokens, tool_calls=tool_calls)
                run.execution_log = "l" * (MAX_LOG + 5)
                if fail:
                    raise ValueError(error)
        except ValueError:
            pass

    asyncio.run(go())
    # What ingest gets: these exact envelopes, checked by its own validator as bytes.
    for event in fleet.sent:
        checked(fleet.subjects, event)
    events = [Event.model_validate(e) for e in fleet.sent]
    assert [e.type.value for e in events] == [
        "execution_started",
        "component_started",
        "component_completed",
        "execution_failed" if fail else "execution_completed",
    ]
    last = events[-1].execution
    assert last is not None
    assert len(last.execution_log or "") == MAX_LOG
    if fail:
        assert last.error == fit_text(error or "ValueError", MAX_TEXT)
    assert len({e.event_id for e in events}) == 4


def test_times_are_rfc3339_utc_with_z() -> None:
    assert iso(datetime(2026, 2, 5, 10, 0, tzinfo=UTC)) == "2026-02-05T10:00:00Z"
    plus_two = timezone(timedelta(hours=2))
    assert iso(datetime(2026, 2, 5, 12, 0, 0, 5, tzinfo=plus_two)) == "2026-02-05T10:00:00.000005Z"


def test_event_ids_are_unique() -> None:
    ids = {new_event_id() for _ in range(10_000)}
    assert len(ids) == 10_000


def test_dedupe_ids_stay_distinct_through_a_nats_header() -> None:
    """A header value loses surrounding whitespace and CR/LF; ids it would merge are hashed,
    everything else is `<org>:<event_id>` as before."""
    assert dedupe_id("acme", "e1") == "acme:e1"
    assert dedupe_id("acme", "a b") == "acme:a b"
    assert dedupe_id("acme", "漢字") == "acme:漢字"
    odd = ["e1 ", " e1", "a\nb", "a\r\nb", "a\tb", "x\x00", "x\u2003"]
    ids = [dedupe_id("acme", event_id) for event_id in odd]
    assert len(set(ids)) == len(odd)
    for value in ids:
        assert value.startswith("acme:sha256:")
        assert value == value.strip()
        assert value.isprintable()
    assert dedupe_id("acme", "e1 ") == dedupe_id("acme", "e1 ")  # deterministic


def test_an_id_spelled_like_a_hashed_one_is_not_taken_for_it() -> None:
    """`job-1\\t` goes out hashed, as `acme:sha256:<hex>`; the printable id `sha256:<hex>`
    went out as it was, the same Msg-Id, and JetStream dropped whichever came second."""
    hashed = "job-1\t"
    spelled = "sha256:" + hashlib.sha256(hashed.encode()).hexdigest()
    assert dedupe_id("acme", hashed) != dedupe_id("acme", spelled)
    assert dedupe_id("acme", spelled).startswith("acme:sha256:")
    # Every other id keeps the Msg-Id it had, so events in flight still deduplicate.
    for event_id in ["e1", "sha256", "sha256-x", "SHA256:ab", "x:sha256:ab", "a b"]:
        assert dedupe_id("acme", event_id) == f"acme:{event_id}"
