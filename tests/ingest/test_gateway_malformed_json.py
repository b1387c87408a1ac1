"""A pretty-printed JSON body with a syntax error is one error about the body, located in it;
only a body whose lines are JSON values of their own is read as NDJSON sent as JSON."""

from __future__ import annotations

import orjson

from services.ingest.gateway_body import FieldError, split_body

EVENT = {
    "type": "execution_started",
    "event_id": "e1",
    "occurred_at": "2026-01-01T00:00:00Z",
    "execution": {"id": "r1", "agent_name": "bot", "tool_calls": ["grep", "ls"]},
}


def _pretty_with_trailing_comma(value: object) -> bytes:
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2)
    # The commonest hand-made mistake: a comma after the last member.
    return text[: text.rindex(b"}")] + b",\n}"


def test_a_pretty_printed_event_with_a_syntax_error_is_one_body_error() -> None:
    body = _pretty_with_trailing_comma(EVENT)
    items, errors = split_body(body, "application/json", 1000)
    assert items == []
    assert [(e.index, e.field) for e in errors] == [(0, "body")]
    # orjson's position in the whole body, not in one of its lines.
    comma_line = body[: body.rindex(b",")].count(b"\n") + 1
    assert f"line {comma_line} " in errors[0].message


def test_a_long_pretty_printed_body_with_a_syntax_error_is_not_too_many_events() -> None:
    body = _pretty_with_trailing_comma({**EVENT, "source": "x"} | {"pad": list(range(1500))})
    items, errors = split_body(body, "application/json", 1000)
    assert items == []
    assert [(e.index, e.field) for e in errors] == [(0, "body")]


def test_ndjson_sent_as_json_is_still_read_line_by_line() -> None:
    body = orjson.dumps(EVENT) + b"\nnot json\n" + orjson.dumps(EVENT) + b"\n"
    items, errors = split_body(body, "application/json", 1000)
    assert len(items) == 3
    assert errors == [FieldError(1, "event", errors[0].message)]
    assert errors[0].message.startswith("not JSON")
