"""The demo fleet: plans that look like a real fleet, and a short live run on real NATS."""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest
from nats.js import JetStreamContext

from shared.events import Event
from shared.publisher.client import Fleet
from shared.publisher.demo import main, run_demo
from shared.publisher.demo_fleet import DEMO_ORGS, fleet, plan_run
from shared.publisher.demo_history import history_events
from shared.subjects import Subjects
from shared.validation import Rejected, validate
from tests.publisher.conftest import stream_messages


def test_fleet_spans_orgs_projects_and_tens_of_agents() -> None:
    agents = fleet()
    assert len(agents) >= 20
    assert {a.org for a in agents} == set(DEMO_ORGS)
    assert len({(a.org, a.project) for a in agents}) >= 6
    assert any(a.project is None for a in agents)  # standalone agents exist too


def test_plans_cover_the_shapes_a_dashboard_needs() -> None:
    rng = random.Random(7)
    agents = fleet()
    by_name = {(a.org, a.name): a for a in agents}
    outcomes: Counter[str] = Counter()
    triggers: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    events: list[Event] = []
    for i in range(400):
        plan = plan_run(rng, rng.choice(agents), by_name)
        outcomes[plan.outcome] += 1
        triggers[plan.triggered_by] += 1
        for step in plan.steps:
            if len(step.attempts) > 1:
                expected = step.max_attempts is None or len(step.attempts) <= step.max_attempts
                retries["expected" if expected else "unexpected"] += 1
        raw = history_events(plan, datetime(2026, 2, 5, 10, tzinfo=UTC), f"run-{i}")
        events += [Event.model_validate(e) for e in raw]
    assert set(outcomes) == {"success", "failed", "stuck"}
    assert {"schedule", "manual", "mcp", "agent"} <= set(triggers) | {
        e.execution.triggered_by for e in events if e.execution
    }
    assert retries["expected"] > 0
    assert retries["unexpected"] > 0
    children = [e for e in events if e.execution and e.execution.parent_execution_id]
    assert children
    failed = [e for e in events if e.type == "execution_failed"]
    assert failed
    assert all(e.execution and e.execution.error_type for e in failed)
    assert any(e.execution and e.execution.tool_calls for e in events)


async def test_live_demo_publishes_what_ingest_accepts(
    nats_url: str, streams: Subjects, js: JetStreamContext
) -> None:
    stats = await run_demo(
        nats_url, streams, rate=40, duration=1.5, stop=None, seed=3, speed=30,
        backfill_runs=20, grace=3,
    )  # fmt: skip
    assert stats.errors == 0
    assert stats.runs > 20
    messages = await stream_messages(js, streams.events_stream)
    types: Counter[str] = Counter()
    for subject, headers, body in messages:
        result = validate(streams, subject, orjson.dumps(body))
        assert not isinstance(result, Rejected), result
        assert headers["Nats-Msg-Id"] == f"{result.org}:{result.event_id}"
        types[result.type.value] += 1
    assert types["execution_started"] >= stats.backfilled + 20
    assert types["execution_completed"] > 0
    assert types["execution_failed"] + types["component_failed"] > 0
    assert types["component_started"] > 0
    assert {m[2]["org"] for m in messages} == set(DEMO_ORGS)


async def test_duration_0_publishes_the_backfill_and_exits(
    nats_url: str, streams: Subjects, js: JetStreamContext, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--duration 0` is the one-shot backfill (`--rate 0` alone runs until Ctrl-C)."""
    argv = ["--duration", "0", "--rate", "0", "--backfill-runs", "6", "--seed", "1"]
    argv += ["--nats-url", nats_url, "--prefix", streams.prefix]
    assert await asyncio.wait_for(asyncio.to_thread(main, argv), 60) == 0
    said = re.search(r"demo: 0 live runs, (\d+) backfilled, 0 errors", capsys.readouterr().out)
    assert said is not None
    messages = await stream_messages(js, streams.events_stream)
    started = [m for m in messages if m[0].endswith("execution_started")]
    # Chains among the runs start child runs too: at least the runs asked for, all counted.
    assert len(started) == int(said.group(1)) >= 6


def test_speed_must_be_positive(nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`--speed 0` divided run durations by zero: ZeroDivisionError once NATS answered."""
    prefix = f"t{uuid.uuid4().hex[:10]}"  # no streams: nothing is stored
    with pytest.raises(SystemExit) as exited:
        main(["--speed", "0", "--backfill-runs", "1", "--nats-url", nats_url, "--prefix", prefix])
    assert exited.value.code == 2
    assert "--speed: must be a positive number, not '0'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="speed must be a positive number"):
        asyncio.run(run_demo(nats_url, Subjects(prefix), rate=50, duration=1, stop=None, speed=0))


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--rate", "-1", "must be a number from 0 (history only) to 1000"),
        ("--rate", "nan", "must be a number from 0 (history only) to 1000"),
        ("--rate", "inf", "must be a number from 0 (history only) to 1000"),
        ("--duration", "-5", "must be a number of seconds, 0 or more"),
        ("--duration", "nan", "must be a number of seconds, 0 or more"),
        ("--speed", "inf", "must be a positive number"),
        ("--backfill-runs", "-3", "must be 0 or more"),
        ("--backfill-runs", "lots", "not a whole number"),
        ("--backfill-hours", "0", "must be a positive number"),
        ("--backfill-hours", "-24", "must be a positive number"),
        ("--orgs", "acme,bad org", "'bad org' is not a valid name"),
        ("--orgs", "acme,a.b", "'a.b' is not a valid name"),
        ("--orgs", " , ", "give at least one name"),
    ],
)
def test_refuses_what_it_cannot_run(
    nats_url: str, capsys: pytest.CaptureFixture[str], flag: str, value: str, says: str
) -> None:
    """A negative rate raised from `expovariate` once NATS answered, a negative duration or
    backfill ran nothing and said nothing, and an org the contract refuses had every event
    dead-lettered: each is now a usage error naming the flag, before anything connects."""
    prefix = f"t{uuid.uuid4().hex[:10]}"  # no streams: nothing is stored
    # Were the value taken, the demo would run for a second and return.
    bounded = [] if flag == "--duration" else ["--duration", "1"]
    with pytest.raises(SystemExit) as exited:
        main([*bounded, flag, value, "--nats-url", nats_url, "--prefix", prefix])
    assert exited.value.code == 2
    assert f"{flag}: {says}" in capsys.readouterr().err


async def test_fleets_started_before_one_that_fails_are_closed(
    nats_url: str, streams: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fleets were started outside the `try` whose `finally` closes them: when one org's
    start failed, the connections of the orgs started before it were left open."""
    closed: list[str] = []
    start, close = Fleet.start, Fleet.close

    async def failing_start(self: Fleet) -> Fleet:
        if self.org == "initech":
            raise OSError("connection refused")
        return await start(self)

    async def recorded_close(self: Fleet, drain_timeout: float = 5.0) -> None:
        closed.append(self.org)
        await close(self, drain_timeout)

    monkeypatch.setattr(Fleet, "start", failing_start)
    monkeypatch.setattr(Fleet, "close", recorded_close)
    with pytest.raises(OSError, match="connection refused"):
        await run_demo(
            nats_url, streams, rate=1, duration=1, stop=None, orgs=["acme", "globex", "initech"]
        )
    assert closed == ["acme", "globex"]
