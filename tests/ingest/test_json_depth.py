"""Finding where a parsed JSON value nests deepest, and the gateway field it names."""

from __future__ import annotations

from typing import Any

from services.ingest.gateway_batch import check_batch
from services.ingest.json_depth import deepest
from shared.subjects import Subjects


def test_depth_and_path_of_the_first_deepest_container() -> None:
    assert deepest(1) == (0, ())
    assert deepest({}) == (1, ())
    assert deepest({"a": [1, {"b": []}], "c": []}) == (4, ("a", 1, "b"))
    assert deepest({"x": [[]], "y": [[]]}) == (3, ("x", 0))


def test_deeper_than_python_recursion_goes() -> None:
    value: Any = []
    for _ in range(5000):
        value = {"k": value}
    depth, path = deepest(value)
    assert depth == 5001
    assert path == ("k",) * 5000


def test_the_gateway_names_the_contract_field_not_the_whole_path() -> None:
    value: Any = 1
    for _ in range(300):
        value = {"a": [value]}
    event = {
        "type": "execution_started",
        "event_id": "e1",
        "occurred_at": "2026-02-05T10:00:00Z",
        "execution": {"id": "r1", "agent_name": "a"},
    }
    checked = check_batch(
        [{**event, "source": value}, {**event, "execution": {"id": "r1", "tool_calls": value}}],
        "acme",
        Subjects("fleet"),
    )
    assert [(e.index, e.field) for e in checked.errors] == [
        (0, "source"),
        (1, "execution.tool_calls"),
    ]
    assert checked.events == []
