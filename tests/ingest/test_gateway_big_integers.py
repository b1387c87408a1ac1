"""An integer past 64 bits in a JSON field is refused by the gateway (422 naming the field),
as ingest refuses it over NATS; orjson reads such a literal as a float, so the gateway used to
publish a rounded number and answer 202."""

from __future__ import annotations

import orjson
import pytest

from services.ingest.gateway_batch import check_batch
from services.ingest.gateway_body import split_body
from shared.subjects import Subjects
from shared.validation import Rejected, validate

SUBJECTS = Subjects("t")
ORG = "acme"


def event(tool_calls: bytes, event_id: str = "e1") -> bytes:
    head = orjson.dumps(
        {
            "type": "execution_started",
            "event_id": event_id,
            "occurred_at": "2026-01-01T00:00:00Z",
            "org": ORG,
            "execution": {"id": "r1", "agent_name": "bot", "tool_calls": []},
        }
    )
    return head.replace(b'"tool_calls":[]', b'"tool_calls":' + tool_calls)


def verdict(body: bytes, content_type: str = "application/json") -> list[tuple[int, str]]:
    items, errors = split_body(body, content_type, 1000)
    checked = check_batch(items, ORG, SUBJECTS)
    return [(e.index, e.field) for e in [*errors, *checked.errors, *checked.foreign]]


@pytest.mark.parametrize(
    "number",
    [b"18446744073709551616", b"-9223372036854775809", b"123456789012345678901234567890"],
)
def test_an_integer_past_64_bits_is_refused_naming_its_field(number: bytes) -> None:
    body = event(b'[{"args":{"n":%s}}]' % number)
    # What ingest does with the same event published over NATS.
    assert isinstance(validate(SUBJECTS, "t.events.acme.bot.execution_started", body), Rejected)
    assert verdict(body) == [(0, "execution.tool_calls.0.args.n")]
    array = b"[" + event(b"[1]", "e0") + b"," + body + b"]"
    assert verdict(array) == [(1, "execution.tool_calls.0.args.n")]
    ndjson = event(b"[1]", "e0") + b"\n" + body + b"\n"
    assert verdict(ndjson, "application/x-ndjson") == [(1, "execution.tool_calls.0.args.n")]


@pytest.mark.parametrize(
    "tool_calls",
    [
        b"[18446744073709551615, -9223372036854775808]",  # the 64-bit bounds themselves
        b'["123456789012345678901234567890"]',  # long digits in a string are text
        b"[1.8446744073709552e19, 12345678901234567890.5]",  # floats stay floats
    ],
)
def test_numbers_within_64_bits_and_digits_in_strings_pass(tool_calls: bytes) -> None:
    body = event(tool_calls)
    assert not isinstance(validate(SUBJECTS, "t.events.acme.bot.execution_started", body), Rejected)
    assert verdict(body) == []
    items, _ = split_body(body, "application/json", 1000)
    checked = check_batch(items, ORG, SUBJECTS)
    # Published as sent: the same numbers, not rounded ones.
    assert orjson.loads(checked.events[0].payload) == orjson.loads(body)
