"""The checked-in AsyncAPI and JSON Schema files: current, self-consistent, and truthful."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import pytest

from shared.events import EventType
from shared.publisher.contract_docs import SCHEMA_DIR, documents
from shared.publisher.envelope import component_event, execution_event


def test_checked_in_files_equal_freshly_generated_ones() -> None:
    stale = [
        name
        for name, content in documents().items()
        if not (SCHEMA_DIR / name).exists() or (SCHEMA_DIR / name).read_bytes() != content
    ]
    assert stale == [], "run: python -m shared.publisher.contract_docs"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_asyncapi_references_resolve() -> None:
    doc = orjson.loads((SCHEMA_DIR / "asyncapi.json").read_bytes())
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc["components"]["messages"]) >= {t.value for t in EventType}
    for ref in _refs(doc):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict), ref


def _schema(type_: EventType) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((SCHEMA_DIR / f"{type_.value}.schema.json").read_bytes())
    return data


@pytest.mark.parametrize("type_", list(EventType))
def test_client_events_satisfy_the_per_type_schema(type_: EventType) -> None:
    if type_.is_component:
        event = component_event(
            type_, org="acme", agent="ruby-agent",
            component={"execution_id": "r1", "node_id": "fetch", "attempt": 2,
                       "retry_policy": "fixed", "input": {"url": "x"}},
        )  # fmt: skip
    else:
        event = execution_event(
            type_, org="acme", execution={"id": "r1", "agent_name": "ruby-agent", "cost": 0.1}
        )
    jsonschema.validate(orjson.loads(orjson.dumps(event)), _schema(type_))
    other = EventType.EXECUTION_STARTED if type_.is_component else EventType.COMPONENT_STARTED
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(event, _schema(other))


def test_schema_refuses_what_ingest_refuses() -> None:
    schema = _schema(EventType.EXECUTION_STARTED)
    good = execution_event(
        EventType.EXECUTION_STARTED, org="acme", execution={"id": "r1", "agent_name": "a"}
    )
    jsonschema.validate(good, schema)
    for bad in (
        {**good, "org": "a.b"},
        {**good, "execution": {"id": "r1", "agent_name": "a", "cost": -1}},
        {**good, "execution": {"id": "r1", "agent_name": "a", "colour": "red"}},
        {k: v for k, v in good.items() if k != "event_id"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
