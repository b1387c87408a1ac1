"""Review of the HTTP gateway: an event refused by a rule of the whole event (its `type`
without the body it needs, with the other body, or an `execution.status` contradicting it)
names that field, not "event", so that a client can point at what to fix."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.ingest.apikeys import create_key
from services.ingest.gateway_batch import check_batch
from shared.db import connect
from shared.subjects import Subjects
from tests.publisher.conftest import gateway_app

SUBJECTS = Subjects("review")
WHEN = "2026-02-05T10:00:00Z"
EXECUTION = {"id": "r1", "agent_name": "bot"}
COMPONENT = {"execution_id": "r1", "node_id": "n1"}


def _execution(type_: str = "execution_started", **fields: Any) -> dict[str, Any]:
    return {"type": type_, "event_id": "e1", "occurred_at": WHEN, "execution": dict(EXECUTION)} | (
        fields
    )


def _component(**fields: Any) -> dict[str, Any]:
    event = {"type": "component_started", "event_id": "c1", "occurred_at": WHEN}
    return event | {"agent_name": "bot", "component": dict(COMPONENT)} | fields


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({k: v for k, v in _execution().items() if k != "execution"}, "execution"),
        (_execution(execution=None), "execution"),
        (_execution(component=COMPONENT), "component"),
        ({k: v for k, v in _component().items() if k != "component"}, "component"),
        (_component(execution=EXECUTION), "execution"),
        (
            _execution("execution_started", execution={**EXECUTION, "status": "success"}),
            "execution.status",
        ),
        (
            _execution("execution_failed", execution={**EXECUTION, "status": "running"}),
            "execution.status",
        ),
    ],
    ids=[
        "execution-missing",
        "execution-null",
        "component-on-execution-event",
        "component-missing",
        "execution-on-component-event",
        "status-contradicts-started",
        "status-contradicts-failed",
    ],
)
def test_a_rule_of_the_whole_event_names_its_field(event: dict[str, Any], field: str) -> None:
    checked = check_batch([event], "acme", SUBJECTS)
    assert checked.events == []
    assert [(e.index, e.field) for e in checked.errors] == [(0, field)], checked.errors


def test_a_valid_event_passes_and_the_rule_names_the_right_index() -> None:
    good = _execution("execution_completed", execution={**EXECUTION, "status": "success"})
    bad = _component(execution=EXECUTION, event_id="c2")
    checked = check_batch([good, bad], "acme", SUBJECTS)
    assert [(e.index, e.field) for e in checked.errors] == [(1, "execution")]


async def test_the_gateway_answers_422_naming_the_field(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    conn = await connect(database_url)
    try:
        key = (await create_key(conn, org, "review")).key
    finally:
        await conn.close()
    body = orjson.dumps([_execution(), {k: v for k, v in _component().items() if k != "component"}])
    async with gateway_app(nats_url, database_url, subjects) as (http, js):
        answer = await http.post(
            "/api/events",
            content=body,
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        assert answer.status_code == 422, answer.text
        errors = answer.json()["errors"]
        assert [(e["index"], e["field"]) for e in errors] == [(1, "component")]
        assert "needs a 'component' object" in errors[0]["message"]
        info = await js.stream_info(subjects.events_stream)
        assert info.state.messages == 0  # refused whole: nothing published
