"""Dead-letter reasons read as the contract's words, without pydantic's "Value error, "."""

from __future__ import annotations

import orjson

from shared.subjects import Subjects
from shared.validation import Rejected, validate

SUBJECTS = Subjects("fleet")


def _completed(execution: dict[str, object]) -> bytes:
    return orjson.dumps(
        {
            "type": "execution_completed",
            "event_id": "e-1",
            "occurred_at": "2026-05-01T10:00:00Z",
            "org": "acme",
            "execution": {"id": "x-1", "agent_name": "bot", **execution},
        }
    )


def test_a_contradicting_status_is_named_without_the_value_error_prefix() -> None:
    subject = SUBJECTS.event("acme", "bot", "execution_completed")
    rejected = validate(SUBJECTS, subject, _completed({"status": "failed"}))
    assert isinstance(rejected, Rejected)
    assert rejected.reason == "schema"
    assert "execution.status 'failed' contradicts" in rejected.detail
    assert "Value error" not in rejected.detail


def test_other_messages_keep_their_wording() -> None:
    subject = SUBJECTS.event("acme", "bot", "execution_completed")
    rejected = validate(SUBJECTS, subject, _completed({"cost": -1}))
    assert isinstance(rejected, Rejected)
    assert rejected.detail.startswith("execution.cost: Input should be greater than or equal")
