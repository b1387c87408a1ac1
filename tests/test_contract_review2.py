"""The checked-in JSON Schemas refuse what ingest dead-letters and take what it takes; the
subject builder and parser agree; every refusal has a DLQ reason of DESIGN.md."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, get_args

import jsonschema
import orjson
import pytest

from shared.events import DlqReason, EventType
from shared.publisher.contract_docs import SCHEMA_DIR, main
from shared.subjects import SubjectError, Subjects
from shared.validation import Rejected, validate

S = Subjects("fleet")


def _schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((SCHEMA_DIR / f"{name}.schema.json").read_bytes())
    return data


def _execution(type_: str = "execution_started", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "abc", "agent_name": "ruby-agent", **fields.pop("execution", {})}
    return {
        "type": type_,
        "event_id": "e1",
        "occurred_at": "2026-02-05T10:00:00Z",
        "org": "acme",
        "execution": body,
        **fields,
    }


def _component(type_: str = "component_started", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"execution_id": "abc", "node_id": "n", **fields.pop("component", {})}
    return {
        "type": type_,
        "event_id": "e1",
        "occurred_at": "2026-02-05T10:00:00Z",
        "org": "acme",
        "component": body,
        **fields,
    }


def _ingest(doc: dict[str, Any]) -> Rejected | None:
    subject = S.event("acme", "ruby-agent", doc["type"])
    result = validate(S, subject, orjson.dumps(doc))
    return result if isinstance(result, Rejected) else None


def _schemas_accept(doc: dict[str, Any]) -> list[bool]:
    out = []
    for schema in (_schema("event"), _schema(doc["type"])):
        try:
            jsonschema.validate(doc, schema)
        except jsonschema.ValidationError:
            out.append(False)
        else:
            out.append(True)
    return out


DEAD_LETTERED = {
    "naive occurred_at": _execution(occurred_at="2026-02-05T10:00:00"),
    "occurred_at before 2000": _execution(occurred_at="1999-06-01T10:00:00Z"),
    "occurred_at after 2199": _execution(occurred_at="2200-06-01T10:00:00Z"),
    "date-only occurred_at": _execution(occurred_at="2026-02-05"),
    "naive started_at": _execution(execution={"started_at": "2026-02-05T10:00:00"}),
    "component started_at in 1970": _component(component={"started_at": "1970-01-01T00:00:00Z"}),
    "execution type with component body": {
        **_component(),
        "type": "execution_started",
    },
    "component type with execution body": {**_execution(), "type": "component_failed"},
    "both bodies": {**_execution(), "component": {"execution_id": "abc", "node_id": "n"}},
    "no body": {k: v for k, v in _execution().items() if k != "execution"},
    "null component": _component() | {"component": None},
    "status contradicts type": _execution("execution_completed", execution={"status": "failed"}),
    "queued says running": _execution("execution_queued", execution={"status": "running"}),
}


@pytest.mark.parametrize("doc", list(DEAD_LETTERED.values()), ids=list(DEAD_LETTERED))
def test_schemas_refuse_what_ingest_dead_letters(doc: dict[str, Any]) -> None:
    rejected = _ingest(doc)
    assert rejected is not None
    assert rejected.reason == "schema"
    assert _schemas_accept(doc) == [False, False]


ACCEPTED = {
    "plain": _execution(),
    "lower-case t and z": _execution(occurred_at="2026-02-05t10:00:00z"),
    "space separator": _execution(occurred_at="2026-02-05 10:00:00Z"),
    "offset without colon": _execution(occurred_at="2026-02-05T10:00:00+0100"),
    "negative offset": _execution(occurred_at="2026-02-05T10:00:00-05:00"),
    "nanoseconds (Go RFC3339Nano)": _execution(occurred_at="2026-02-05T10:00:00.123456789Z"),
    "no seconds": _execution(occurred_at="2026-02-05T10:00Z"),
    "first and last years": _execution(
        occurred_at="2000-01-01T00:00:00Z", execution={"started_at": "2199-01-01T00:00:00Z"}
    ),
    "status agrees": _execution("execution_failed", execution={"status": "failed"}),
    "status null": _execution("execution_completed", execution={"status": None}),
    "component naming its agent": _component("component_failed", agent_name="ruby-agent"),
}


@pytest.mark.parametrize("doc", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_schemas_accept_what_ingest_accepts(doc: dict[str, Any]) -> None:
    assert _ingest(doc) is None
    assert _schemas_accept(doc) == [True, True]


def test_the_envelope_schema_takes_the_other_body_as_null() -> None:
    # The per-type schemas leave the other body out altogether (stricter than ingest).
    for doc in (
        _component("component_completed") | {"execution": None},
        _execution("execution_progress") | {"component": None},
    ):
        assert _ingest(doc) is None
        assert _schemas_accept(doc)[0]


def test_an_out_of_range_occurred_at_is_named_as_the_field() -> None:
    rejected = _ingest(_execution(occurred_at="1999-06-01T10:00:00Z"))
    assert rejected is not None
    assert rejected.detail.startswith("occurred_at: "), rejected.detail


def test_asyncapi_payloads_carry_the_same_rules() -> None:
    doc = orjson.loads((SCHEMA_DIR / "asyncapi.json").read_bytes())
    schemas = doc["components"]["schemas"]
    started = schemas["execution_started"]
    assert started["properties"]["occurred_at"]["pattern"]
    assert any("if" in rule for rule in started["allOf"])


def test_the_staleness_check_fails_on_an_edited_copy(tmp_path: Path) -> None:
    out = tmp_path / "schema"
    shutil.copytree(SCHEMA_DIR, out)
    assert main(["--check", "--out", str(out)]) == 0
    path = out / "event.schema.json"
    schema = orjson.loads(path.read_bytes())
    schema["title"] = "edited by hand"
    path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    assert main(["--check", "--out", str(out)]) == 1


VALID_NAMES = ["a", "0", "-", "_", "ruby-agent", "Acme_Corp-2", "x" * 64]
INVALID_NAMES = ["", "a.b", "*", ">", "a*", "a>", "a b", "ä", "x" * 65, "acme\n", "a\tb", "a/b"]


@pytest.mark.parametrize("type_", list(EventType))
@pytest.mark.parametrize("name", VALID_NAMES)
def test_subject_round_trip(name: str, type_: EventType) -> None:
    for org, agent in ((name, "agent"), ("org", name), (name, name)):
        parsed = S.parse_event(S.event(org, agent, type_))
        assert (parsed.org, parsed.agent, parsed.type) == (org, agent, type_)
    assert Subjects("my-prefix").parse_event(f"my-prefix.events.{name}.{name}.{type_}").org == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_subject_builder_and_parser_refuse_invalid_tokens(name: str) -> None:
    with pytest.raises(SubjectError):
        S.event(name, "agent", EventType.EXECUTION_STARTED)
    with pytest.raises(SubjectError):
        S.event("org", name, EventType.EXECUTION_STARTED)
    for subject in (
        f"fleet.events.{name}.agent.execution_started",
        f"fleet.events.org.{name}.execution_started",
    ):
        with pytest.raises(SubjectError):
            S.parse_event(subject)
        result = validate(S, subject, orjson.dumps(_execution()))
        assert isinstance(result, Rejected)
        assert result.reason == "bad_subject"
    with pytest.raises(ValueError):
        Subjects(name)


def test_every_refusal_reason_is_a_dlq_reason() -> None:
    good = orjson.dumps(_execution())
    subject = "fleet.events.acme.ruby-agent.execution_started"
    cases = [
        (subject, b"{nope"),
        (subject, b"\xff"),
        (subject, b"x" * 1_000_000),
        (subject, orjson.dumps(_execution(execution={"message": "a\u0000b"}))),
        (subject, orjson.dumps(_execution(source="s" * 201))),
        (subject, orjson.dumps(_execution(occurred_at="2026-02-05T10:00:00"))),
        ("fleet.events.acme.ruby-agent.nonsense", good),
        ("fleet.events.acme.ruby-agent", good),
        ("fleet.events.evil.ruby-agent.execution_started", good),
    ]
    seen = set()
    for subj, data in cases:
        result = validate(S, subj, data)
        assert isinstance(result, Rejected), subj
        assert result.detail
        seen.add(result.reason)
    # Each of validate's reasons, and only reasons of the DLQ's documented list.
    assert seen == set(get_args(DlqReason)) - {"agent_mismatch", "db_rejected"}
