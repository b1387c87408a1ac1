"""Review of the HTTP gateway: two events of a batch with one `event_id` are compared by what
they mean, not their bytes (the same event with its keys reordered is a retry, answered as a
duplicate, not a conflict), and messages read without pydantic's "Value error, " prefix."""

from __future__ import annotations

from typing import Any

import orjson

from services.ingest.gateway_batch import check_batch
from shared.subjects import Subjects
from tests.publisher.conftest import gateway_app, make_api_key, stream_messages

SUBJECTS = Subjects("review3")
WHEN = "2026-02-05T10:00:00Z"


def _started(**execution: Any) -> dict[str, Any]:
    return {
        "type": "execution_started",
        "event_id": "e1",
        "occurred_at": WHEN,
        "execution": {"id": "r1", "agent_name": "bot"} | execution,
    }


def _reordered(value: Any) -> Any:
    """`value` with every object's keys in reverse order (the same JSON, other bytes)."""
    if isinstance(value, dict):
        return {k: _reordered(v) for k, v in reversed(value.items())}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def test_the_same_event_with_its_keys_reordered_is_a_retry_not_a_conflict() -> None:
    event = _started(tool_calls=[{"name": "search", "args": {"q": "x", "n": 3}}])
    again = _reordered(event)
    assert orjson.dumps(again) != orjson.dumps(event)
    checked = check_batch([event, again], "acme", SUBJECTS)
    assert checked.errors == []
    assert [o.event.event_id for o in checked.events] == ["e1", "e1"]


def test_events_that_mean_different_things_still_conflict() -> None:
    # Python's `==` holds 1 == 1.0 == True; stored as jsonb they are three different values.
    for other in (1.0, True):
        checked = check_batch(
            [_started(tool_calls=[{"n": 1}]), _started(tool_calls=[{"n": other}])],
            "acme",
            SUBJECTS,
        )
        assert [(e.index, e.field) for e in checked.errors] == [(1, "event_id")], other
        assert "event 0 has this event_id with other content" in checked.errors[0].message


def test_a_rule_of_the_whole_event_reads_without_pydantics_prefix() -> None:
    contradicting = _started(status="success")
    missing = {k: v for k, v in _started().items() if k != "execution"} | {"event_id": "e2"}
    checked = check_batch([contradicting, missing], "acme", SUBJECTS)
    messages = [(e.field, e.message) for e in checked.errors]
    assert [field for field, _ in messages] == ["execution.status", "execution"]
    assert all(not message.startswith("Value error") for _, message in messages), messages
    assert messages[0][1].startswith("execution.status 'success' contradicts")
    assert messages[1][1] == "execution_started needs an 'execution' object"


async def test_the_gateway_answers_202_for_a_reordered_repeat_and_stores_it_once(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    key = await make_api_key(database_url, org)
    event = _started(cost=0.5) | {"org": org}
    body = b"[" + orjson.dumps(event) + b",\n " + orjson.dumps(_reordered(event)) + b"]"
    async with gateway_app(nats_url, database_url, subjects) as (http, js):
        answer = await http.post(
            "/api/events",
            content=body,
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        assert answer.status_code == 202, answer.text
        assert answer.json() == {"accepted": 2, "duplicates": 1}
        stored = await stream_messages(js, subjects.events_stream)
        assert [m[2]["event_id"] for m in stored] == ["e1"]
