"""Hypothesis-generated events, valid and broken, published into a running `fleetwatch ingest`:
it never crashes, every broken message lands in the DLQ with a `Fleet-Dlq-Reason` (the one its
breakage calls for), every valid one is stored (its event id in the events table), and no
message is both or neither.

The corpus is drawn from Hypothesis strategies (a fixed seed per run is printed on failure via
the message list); valid events use the whole of Unicode (minus NUL and surrogates, which the
contract cannot carry), backslash sequences that look like escapes, extreme numbers and nested
JSON in the free-form fields. Broken ones: garbage bytes, JSON that is not an event, wrong
types, missing fields, bad subjects, NUL in strings, oversized strings and payloads, and
events whose subject names another tenant.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js import JetStreamContext

from shared.db import connect
from shared.events import MAX_EVENT_BYTES, MAX_TEXT, EventType, RetryPolicy
from shared.subjects import Subjects
from tests.checks import wait_for_count
from tests.procs import running

pytestmark = pytest.mark.e2e

EXAMPLES = 250
NAME = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
# Everything Unicode has except NUL (Postgres text cannot hold it) and lone surrogates (not
# encodable as UTF-8); backslash runs and fake escapes are drawn on purpose.
TEXT = st.lists(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
    | st.sampled_from(["\\", "\\u0000", "\\\\u0000", "\\n", '"', "'", "%", "\u2028", "🙂"]),
    max_size=60,
).map("".join)
JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)
TIME = st.datetimes(
    min_value=datetime(2001, 1, 1),
    max_value=datetime(2198, 1, 1),
    timezones=st.just(UTC),
).map(lambda d: d.isoformat())
COUNT = st.integers(min_value=0, max_value=2**62)
EXECUTION_TYPES = [t for t in EventType if not t.is_component]
COMPONENT_TYPES = [t for t in EventType if t.is_component]


@dataclass
class Message:
    kind: str
    subject: str
    data: bytes
    #: Set for valid events: the id that must be stored.
    event_id: str | None = None
    #: Set for broken ones: the DLQ reasons its breakage allows.
    reasons: frozenset[str] = frozenset()


@st.composite
def valid_event(draw: st.DrawFn, org: str, serial: int) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(EXECUTION_TYPES + COMPONENT_TYPES))
    agent = draw(NAME)
    event: dict[str, Any] = {
        "type": kind.value,
        "event_id": f"fz{serial}-" + draw(st.text(min_size=1, max_size=40)).replace("\x00", ""),
        "occurred_at": draw(TIME),
        "org": org,
    }
    if draw(st.booleans()):
        event["source"] = draw(TEXT)
    ident = st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
        min_size=1,
        max_size=200,
    )
    if kind.is_component:
        # Execution ids are the message's own: an execution belongs to the agent that first
        # reported it, so a shared id under another agent is (rightly) an agent_mismatch.
        component: dict[str, Any] = {
            "execution_id": f"x{serial}-" + draw(ident),
            "node_id": draw(ident),
        }
        optional = {
            "name": TEXT,
            "attempt": st.integers(min_value=1, max_value=1_000_000),
            "retry_policy": st.sampled_from([p.value for p in RetryPolicy]),
            "max_attempts": st.integers(min_value=0, max_value=1_000_000),
            "input": JSON,
            "output": JSON,
            "error": TEXT,
            "started_at": TIME,
        }
        for field, strategy in optional.items():
            if draw(st.booleans()):
                component[field] = draw(strategy)
        event["component"] = component
    else:
        execution: dict[str, Any] = {"id": f"x{serial}-" + draw(ident), "agent_name": agent}
        optional = {
            "project": ident,
            "workflow": ident,
            "triggered_by": st.text(
                st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                min_size=1,
                max_size=64,
            ),
            "message": TEXT,
            "response": TEXT,
            "error": TEXT,
            "started_at": TIME,
            "completed_at": TIME,
            "duration_ms": COUNT,
            "tokens_in": COUNT,
            "tokens_out": COUNT,
            "cost": st.floats(min_value=0, max_value=1e12),
            "tool_calls": st.lists(JSON, max_size=3),
            "execution_log": TEXT,
        }
        for field, strategy in optional.items():
            if draw(st.booleans()):
                execution[field] = draw(strategy)
        event["execution"] = execution
    return agent, event


@st.composite
def message(draw: st.DrawFn, subjects: Subjects, org: str, serial: int) -> Message:
    agent, event = draw(valid_event(org, serial))
    subject = subjects.event(org, agent, event["type"])
    body = event.get("execution") or event.get("component")
    assert body is not None
    breakage = draw(
        st.sampled_from(
            [
                "valid",
                "valid",
                "valid",
                "garbage",
                "not_an_object",
                "wrong_type",
                "missing",
                "bad_subject",
                "unknown_type",
                "nul",
                "huge_string",
                "huge_payload",
                "tenant",
                "type_mismatch",
                "big_int",
            ]
        )
    )
    schema = frozenset({"schema"})
    if breakage == "valid":
        return Message("valid", subject, orjson.dumps(event), event_id=event["event_id"])
    if breakage == "garbage":
        data = b"\xff" + draw(st.binary(max_size=300))  # never valid UTF-8, so never JSON
        return Message(breakage, subject, data, reasons=frozenset({"not_json"}))
    if breakage == "not_an_object":
        data = orjson.dumps(draw(JSON_LEAF | st.lists(JSON_LEAF, max_size=3)))
        return Message(breakage, subject, data, reasons=schema)
    if breakage == "wrong_type":
        field, bad = draw(
            st.sampled_from(
                [
                    ("occurred_at", "yesterday"),
                    ("occurred_at", 12),
                    ("org", 5),
                    ("event_id", ["x"]),
                    ("event_id", ""),
                    ("type", None),
                ]
            )
        )
        event[field] = bad
        return Message(breakage, subject, orjson.dumps(event), reasons=schema)
    if breakage == "missing":
        field = draw(st.sampled_from(["event_id", "occurred_at", "org", "type", "body"]))
        if field == "body":
            event.pop("execution", None)
            event.pop("component", None)
        else:
            event.pop(field)
        return Message(breakage, subject, orjson.dumps(event), reasons=schema)
    if breakage == "bad_subject":
        prefix = subjects.prefix
        subject = draw(
            st.sampled_from(
                [
                    f"{prefix}.events.{org}.{agent}",
                    f"{prefix}.events.{org}.{agent}.x.{event['type']}",
                    f"{prefix}.events.{org}.ag$nt.{event['type']}",
                    f"{prefix}.events.{'o' * 65}.{agent}.{event['type']}",
                ]
            )
        )
        return Message(breakage, subject, orjson.dumps(event), reasons=frozenset({"bad_subject"}))
    if breakage == "unknown_type":
        subject = f"{subjects.prefix}.events.{org}.{agent}.execution_exploded"
        return Message(breakage, subject, orjson.dumps(event), reasons=frozenset({"unknown_type"}))
    if breakage == "nul":
        key = "error" if "execution" in event else "name"
        body[key] = draw(TEXT) + "\x00" + draw(TEXT)
        return Message(breakage, subject, orjson.dumps(event), reasons=schema)
    if breakage == "huge_string":
        key = "message" if "execution" in event else "error"
        body[key] = "m" * (MAX_TEXT + 1)
        return Message(breakage, subject, orjson.dumps(event), reasons=frozenset({"too_large"}))
    if breakage == "huge_payload":
        data = orjson.dumps(event)[:-1] + b',"pad":"' + b"p" * MAX_EVENT_BYTES + b'"}'
        return Message(breakage, subject, data, reasons=frozenset({"too_large"}))
    if breakage == "tenant":
        subject = subjects.event(f"{org}-other", agent, event["type"])
        return Message(
            breakage, subject, orjson.dumps(event), reasons=frozenset({"tenant_mismatch"})
        )
    if breakage == "big_int":
        # Valid JSON, but past what jsonb (via orjson) stores: the database refuses the batch,
        # ingest splits it down to this one message and dead-letters it.
        key = "tool_calls" if "execution" in event else "input"
        body[key] = [draw(st.integers(min_value=2**64, max_value=2**200))]
        unstorable = frozenset({"schema", "db_rejected"})
        return Message(breakage, subject, _dumps_big(event), reasons=unstorable)
    assert breakage == "type_mismatch"
    same_family = [t for t in EventType if t.is_component == ("component" in event)]
    other = next(t for t in same_family if t.value != event["type"])
    subject = subjects.event(org, agent, other)
    return Message(breakage, subject, orjson.dumps(event), reasons=schema)


def _dumps_big(event: dict[str, Any]) -> bytes:
    """JSON with integers past 64 bits (orjson refuses to write them; the json module does)."""
    return json.dumps(event, ensure_ascii=False).encode()


def draw_corpus(subjects: Subjects, org: str) -> list[Message]:
    corpus: list[Message] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def collect(data: st.DataObject) -> None:
        corpus.append(data.draw(message(subjects, org, len(corpus))))

    collect()
    return corpus


async def _dlq(js: JetStreamContext, subjects: Subjects, expected: int) -> list[Any]:
    sub = await js.pull_subscribe(subjects.all_dlq, stream=subjects.dlq_stream)
    got: list[Any] = []
    deadline = time.monotonic() + 30
    while len(got) < expected and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            got += await sub.fetch(min(200, expected - len(got) + 10), timeout=1)
    with contextlib.suppress(TimeoutError):  # anything beyond what we expect is a finding
        got += await sub.fetch(50, timeout=0.5)
    for m in got:
        await m.ack()
    return got


async def test_generated_events_valid_stored_broken_dead_lettered(
    nats_url: str,
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    fresh_database_url: str,
) -> None:
    corpus = draw_corpus(subjects, org)
    kinds = Counter(m.kind for m in corpus)
    assert kinds["valid"] >= EXAMPLES // 8, kinds
    assert len(kinds) >= 10, kinds
    env = {**service_env, "DATABASE_URL": fresh_database_url}
    nc = await nats.connect(nats_url)
    conn = await connect(fresh_database_url)
    try:
        js = nc.jetstream()
        async with running("ingest", env) as ingest:
            for i, m in enumerate(corpus):
                await js.publish(m.subject, m.data, headers={"Nats-Msg-Id": f"{org}-{i}"})
            valid = [m for m in corpus if m.event_id is not None]
            broken = [m for m in corpus if m.event_id is None]
            ids = sorted({m.event_id for m in valid if m.event_id})
            stored_count = await wait_for_count(
                conn,
                "SELECT count(*) FROM events WHERE org = $1 AND event_id = ANY($2::text[])",
                (org, ids),
                len(ids),
                timeout=60,
            )
            got = await _dlq(js, subjects, len(broken))
            assert ingest.process.poll() is None, "ingest died:\n" + ingest.log()[-3000:]
            stored = {
                r["event_id"]
                for r in await conn.fetch("SELECT event_id FROM events WHERE org = $1", org)
            }
    finally:
        await conn.close()
        await nc.close()

    lost = [m for m in valid if m.event_id not in stored]
    assert not lost, (
        f"{len(lost)} of {len(valid)} valid events not stored ({stored_count} counted):\n"
        + "\n".join(repr(m.data[:300]) for m in lost[:5])
    )
    assert stored <= set(ids), "stored something that was never a valid event"
    # Every DLQ entry names its reason; match them to the broken messages as multisets.
    seen: Counter[tuple[str, bytes]] = Counter()
    reasons: dict[tuple[str, bytes], list[str]] = {}
    for m in got:
        assert m.headers, m
        assert m.headers.get("Fleet-Dlq-Reason"), m.headers
        key = (m.headers["Fleet-Original-Subject"], m.data)
        seen[key] += 1
        reasons.setdefault(key, []).append(m.headers["Fleet-Dlq-Reason"])
    wanted = Counter((m.subject, m.data) for m in broken)
    missing = wanted - seen
    extra = seen - wanted
    assert not missing, f"{sum(missing.values())} broken messages not in the DLQ: " + repr(
        [(s, d[:200]) for s, d in list(missing)[:5]]
    )
    assert not extra, f"DLQ holds unexpected messages: {[(s, d[:200]) for s, d in list(extra)[:5]]}"
    wrong = [
        (m.kind, reasons[(m.subject, m.data)], sorted(m.reasons), m.data[:200])
        for m in broken
        if not set(reasons[(m.subject, m.data)]) <= m.reasons
    ]
    assert not wrong, f"DLQ reasons differ from the breakage: {wrong[:5]}"
    print(f"\ningest fuzz: {dict(kinds)}; {len(stored)} stored, {len(got)} dead-lettered")
