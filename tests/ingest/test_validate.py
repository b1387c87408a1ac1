"""Every kind of bad message gets a reason; good ones become events."""

from __future__ import annotations

import orjson
import pytest

from shared.events import MAX_LOG
from shared.subjects import Subjects
from shared.validation import Rejected, validate

S = Subjects("fleet")
SUBJECT = "fleet.events.acme.ruby-agent.execution_started"


def _good(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "type": "execution_started",
        "event_id": "e1",
        "occurred_at": "2026-02-05T10:00:00Z",
        "org": "acme",
        "execution": {"id": "abc", "agent_name": "ruby-agent", "triggered_by": "schedule"},
    }
    event.update(overrides)
    return event


def _reason(subject: str, data: bytes) -> str:
    result = validate(S, subject, data)
    assert isinstance(result, Rejected), result
    return result.reason


def test_a_good_event_passes() -> None:
    event = validate(S, SUBJECT, orjson.dumps(_good()))
    assert not isinstance(event, Rejected)
    assert event.execution is not None
    assert event.execution.triggered_by == "schedule"


@pytest.mark.parametrize(
    ("subject", "data", "reason"),
    [
        (SUBJECT, b"{not json", "not_json"),
        # A NUL escape in text that is no JSON at all: the body is not JSON first of all.
        (SUBJECT, b'{not json "\\u0000"', "not_json"),
        (SUBJECT, b"[1, 2]", "schema"),
        (SUBJECT, orjson.dumps(_good(occurred_at="yesterday")), "schema"),
        (SUBJECT, orjson.dumps(_good(execution={"id": 5})), "schema"),
        (SUBJECT, orjson.dumps(_good(type="execution_completed")), "schema"),
        (
            SUBJECT,
            orjson.dumps(
                _good(execution={"id": "a", "agent_name": "ruby-agent", "status": "failed"})
            ),
            "schema",
        ),
        (
            SUBJECT,
            orjson.dumps(_good(execution={"id": "a", "agent_name": "ruby-agent", "tokens_in": -1})),
            "schema",
        ),
        (SUBJECT, orjson.dumps(_good(unexpected_field=1)), "schema"),
        (
            SUBJECT,
            orjson.dumps(
                _good(execution={"id": "a", "agent_name": "ruby-agent", "message": "nul\u0000byte"})
            ),
            "schema",
        ),
        ("fleet.events.acme.ruby-agent.bogus_type", orjson.dumps(_good()), "unknown_type"),
        ("fleet.events.acme.execution_started", orjson.dumps(_good()), "bad_subject"),
        ("fleet.events.ac me.ruby-agent.execution_started", orjson.dumps(_good()), "bad_subject"),
        ("other.events.acme.ruby-agent.execution_started", orjson.dumps(_good()), "bad_subject"),
        (
            "fleet.events.evil.ruby-agent.execution_started",
            orjson.dumps(_good()),
            "tenant_mismatch",
        ),
        (
            "fleet.events.acme.other-agent.execution_started",
            orjson.dumps(_good()),
            "tenant_mismatch",
        ),
        (
            SUBJECT,
            orjson.dumps(
                _good(
                    execution={
                        "id": "a",
                        "agent_name": "ruby-agent",
                        "execution_log": "x" * (MAX_LOG + 1),
                    }
                )
            ),
            "too_large",
        ),
        (SUBJECT, b" " * (2 * 1024 * 1024), "too_large"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(subject: str, data: bytes, reason: str) -> None:
    assert _reason(subject, data) == reason


def test_component_events_take_their_agent_from_the_subject() -> None:
    data = orjson.dumps(
        {
            "type": "component_failed",
            "event_id": "c1",
            "occurred_at": "2026-02-05T10:00:00Z",
            "org": "acme",
            "component": {"execution_id": "abc", "node_id": "fetch", "attempt": 2},
        }
    )
    event = validate(S, "fleet.events.acme.ruby-agent.component_failed", data)
    assert not isinstance(event, Rejected)
    assert event.agent == "ruby-agent"
