"""Pure reconciliation rules, retry classes and the corrective events they produce."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.reconciler.corrections import component_events, execution_event
from services.reconciler.engines import EngineRun, EngineStep
from services.reconciler.rules import (
    Action,
    Kind,
    Lookup,
    Policy,
    Row,
    belongs,
    decide_orphan_runs,
    decide_row,
    reconcile,
    run_for,
)
from shared.events import EventType, RetryPolicy, Status
from shared.retries import classify_retry

NOW = datetime(2026, 2, 5, 12, 0, tzinfo=UTC)
POLICY = Policy(
    first_check_grace=timedelta(seconds=60),
    orphan_grace=timedelta(minutes=15),
    missing_external_id_timeout=timedelta(minutes=10),
)


def row(status: Status = Status.RUNNING, age_s: float = 3600, **kw: object) -> Row:
    fields: dict[str, object] = {
        "org": "acme",
        "id": "ex1",
        "agent_name": "ruby",
        "status": status,
        "engine": "temporal",
        "external_id": "wf-1",
        "started_at": NOW - timedelta(seconds=age_s),
        "first_seen_at": NOW - timedelta(seconds=age_s),
    }
    fields.update(kw)
    return Row(**fields)  # type: ignore[arg-type]


def run(status: Status, **kw: object) -> EngineRun:
    fields: dict[str, object] = {"engine": "temporal", "external_id": "wf-1", "status": status}
    fields.update(kw)
    return EngineRun(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine_status", [Status.SUCCESS, Status.FAILED, Status.CANCELLED])
def test_running_row_finished_in_engine_publishes_the_engine_status(engine_status: Status) -> None:
    d = decide_row(row(), Lookup(run(engine_status)), NOW, POLICY)
    assert (d.kind, d.action, d.publish_status) == (
        Kind.STATUS_MISMATCH,
        Action.PUBLISH,
        engine_status,
    )
    assert "engine says" in d.reason


def test_engine_still_running_is_never_failed() -> None:
    d = decide_row(row(age_s=10 * 86400), Lookup(run(Status.RUNNING)), NOW, POLICY)
    assert (d.kind, d.action) == (Kind.OK, Action.NONE)


def test_engine_behind_us_is_left_alone() -> None:
    d = decide_row(row(), Lookup(run(Status.PENDING)), NOW, POLICY)
    assert d.action is Action.NONE


def test_wrong_terminal_status_is_corrected() -> None:
    d = decide_row(row(Status.SUCCESS), Lookup(run(Status.FAILED)), NOW, POLICY)
    assert (d.action, d.publish_status) == (Action.PUBLISH, Status.FAILED)


def test_terminal_row_but_engine_running_is_only_flagged() -> None:
    d = decide_row(row(Status.FAILED), Lookup(run(Status.RUNNING)), NOW, POLICY)
    assert (d.kind, d.action) == (Kind.TERMINAL_BUT_ENGINE_RUNNING, Action.FLAG)


def test_young_rows_are_not_checked() -> None:
    d = decide_row(row(age_s=10), Lookup(None), NOW, POLICY)
    assert (d.kind, d.action) == (Kind.IN_GRACE, Action.NONE)


def test_not_found_is_not_yet_visible_then_an_orphan() -> None:
    young = decide_row(row(age_s=120), Lookup(None), NOW, POLICY)
    old = decide_row(row(age_s=3600), Lookup(None), NOW, POLICY)
    assert (young.kind, young.action) == (Kind.NOT_YET_VISIBLE, Action.NONE)
    assert (old.kind, old.action) == (Kind.ORPHAN_ROW, Action.FLAG)
    assert "wf-1" in old.reason


def test_engine_error_is_flagged_with_its_message() -> None:
    d = decide_row(row(), Lookup(None, error="http: HTTP 500 (after 3 attempts)"), NOW, POLICY)
    assert (d.kind, d.action) == (Kind.ENGINE_ERROR, Action.FLAG)
    assert "HTTP 500" in d.reason


def test_missing_external_id_is_flagged_or_failed_when_configured() -> None:
    r = row(external_id=None, age_s=3600)
    flagged = decide_row(r, None, NOW, POLICY)
    assert (flagged.kind, flagged.action) == (Kind.MISSING_EXTERNAL_ID, Action.FLAG)
    failing = decide_row(r, None, NOW, Policy(fail_missing_external_id=True))
    assert (failing.action, failing.publish_status) == (Action.PUBLISH, Status.FAILED)
    young = decide_row(row(external_id=None, age_s=30), None, NOW, POLICY)
    assert young.action is Action.NONE


def test_orphan_runs_are_created_when_attributable() -> None:
    runs = [
        run(Status.SUCCESS, external_id="a", org="acme", agent_name="ruby"),
        run(Status.RUNNING, external_id="b"),
        run(Status.RUNNING, external_id="known", org="acme", agent_name="ruby"),
    ]
    decisions = decide_orphan_runs(runs, [row(external_id="known")], NOW, POLICY)
    assert [(d.kind, d.action) for d in decisions] == [
        (Kind.ORPHAN_RUN, Action.PUBLISH),
        (Kind.ORPHAN_RUN_UNATTRIBUTED, Action.FLAG),
    ]
    assert decisions[0].execution_id == "temporal-a"
    fallback = decide_orphan_runs(runs[1:2], [], NOW, Policy(orphan_org="o", orphan_agent="g"))
    assert fallback[0].action is Action.PUBLISH


def test_a_young_run_is_no_orphan_yet() -> None:
    """Its row may be on its way, or still lack the external id: no duplicate is created."""
    grace = timedelta(minutes=10)
    young = run(
        Status.RUNNING,
        external_id="y",
        org="acme",
        agent_name="ruby",
        started_at=NOW - grace + timedelta(seconds=1),
    )
    old = run(
        Status.RUNNING, external_id="o", org="acme", agent_name="ruby", started_at=NOW - grace
    )
    policy = Policy(orphan_run_grace=grace)
    assert [d.external_id for d in decide_orphan_runs([young, old], [], NOW, policy)] == ["o"]


def test_a_run_is_matched_to_rows_of_its_own_org_and_execution_only() -> None:
    acme, globex = row(org="acme"), row(org="globex", id="g1")
    named = run(Status.FAILED, org="acme")
    assert belongs(named, acme)
    assert not belongs(named, globex)
    anonymous = run(Status.FAILED)
    assert belongs(anonymous, acme)
    assert belongs(anonymous, globex)
    assert not belongs(run(Status.FAILED, execution_id="other"), acme)
    # Another org's row with the same run id does not make the run known there...
    orphan = run(Status.SUCCESS, org="globex", agent_name="g", started_at=NOW - timedelta(hours=1))
    assert [d.kind for d in decide_orphan_runs([orphan], [acme], NOW, POLICY)] == [Kind.ORPHAN_RUN]
    # ...and an open row whose run id the engine gives to another org's run is flagged, not fixed.
    d = decide_row(globex, Lookup(named), NOW, POLICY)
    assert (d.kind, d.action, d.publish_status) == (Kind.FOREIGN_RUN, Action.FLAG, None)


def test_a_reused_run_id_picks_the_run_that_names_the_row_or_none() -> None:
    """Two runs of one workflow id: never guess which is whose."""
    first = run(Status.FAILED, started_at=NOW - timedelta(hours=2))
    second = run(Status.SUCCESS, started_at=NOW - timedelta(hours=1))
    acme = {"acme"}
    assert run_for(row(), [first, second], acme) is None
    assert run_for(row(), [second], acme) is second
    mine = run(Status.SUCCESS, execution_id="ex1")
    assert run_for(row(), [first, mine], acme) is mine
    assert run_for(row(id="ex2"), [first, mine], acme) is first
    # A run that names no org, under a run id rows of two orgs carry: whose is it? Nobody's.
    assert run_for(row(), [second], {"acme", "globex"}) is None
    assert run_for(row(), [run(Status.SUCCESS, org="acme")], {"acme", "globex"}) is not None


def test_reconcile_gives_one_decision_per_row_and_orphan() -> None:
    rows = [row(), row(id="ex2", external_id="wf-2")]
    lookups = {("acme", "ex1"): Lookup(run(Status.SUCCESS)), ("acme", "ex2"): Lookup(None)}
    orphan = run(Status.RUNNING, external_id="wf-9", org="acme", agent_name="ruby")
    decisions = reconcile(rows, lookups, [orphan], [], NOW, POLICY)
    assert [d.kind for d in decisions] == [Kind.STATUS_MISMATCH, Kind.ORPHAN_ROW, Kind.ORPHAN_RUN]
    assert all(d.reason for d in decisions)


def test_correction_event_is_deterministic_and_later_than_the_row() -> None:
    finished = NOW - timedelta(minutes=5)
    d = decide_row(
        row(),
        Lookup(run(Status.FAILED, completed_at=finished, error="boom", error_type="ValueError")),
        NOW,
        POLICY,
    )
    event = execution_event(d, NOW)
    assert event is not None
    assert event.type is EventType.EXECUTION_FAILED
    assert event.event_id == "reconcile:acme:ex1:failed"
    assert event.occurred_at == NOW
    assert event.execution is not None
    assert (event.execution.error, event.execution.completed_at) == ("boom", finished)
    assert event.execution.external_id == "wf-1"
    assert execution_event(decide_row(row(), Lookup(run(Status.RUNNING)), NOW, POLICY), NOW) is None


def test_component_events_carry_attempts_and_retry_policy() -> None:
    steps = [
        EngineStep("1", "charge", 2, Status.FAILED, RetryPolicy.FIXED, 3, error="declined"),
        EngineStep("1", "charge", 3, Status.FAILED, RetryPolicy.FIXED, 3, error="declined"),
        EngineStep("2", "mail", 1, Status.SUCCESS, RetryPolicy.NONE, 1, output={"ok": True}),
    ]
    events = component_events("acme", "ruby", "ex1", steps, NOW)
    assert [e.type for e in events] == [
        EventType.COMPONENT_FAILED,
        EventType.COMPONENT_FAILED,
        EventType.COMPONENT_COMPLETED,
    ]
    assert len({e.event_id for e in events}) == 3
    assert events[2].component is not None
    assert events[2].component.output == {"ok": True}
    assert [s.retry_class for s in steps] == ["expected", "expected", None]


@pytest.mark.parametrize(
    ("policy", "attempt", "max_attempts", "expected"),
    [
        (RetryPolicy.FIXED, 1, 3, None),
        (RetryPolicy.FIXED, 3, 3, "expected"),
        (RetryPolicy.FIXED, 4, 3, "unexpected"),
        (RetryPolicy.EXPONENTIAL, 9, 0, "expected"),
        (RetryPolicy.FOREVER, 50, None, "expected"),
        (RetryPolicy.NONE, 2, 1, "unexpected"),
        (None, 2, None, "unexpected"),
    ],
)
def test_retry_classes(
    policy: RetryPolicy | None, attempt: int, max_attempts: int | None, expected: str | None
) -> None:
    assert classify_retry(policy, attempt, max_attempts) == expected


async def test_an_unreadable_memo_leaves_the_run_unattributed() -> None:
    """Another team's workflow whose memo this converter cannot decode stops no pass."""
    from services.reconciler.engines.temporal import MEMO_AGENT, MEMO_ORG, _our_memo

    class Listed:
        id = "theirs"

        async def memo_value(self, key: str, default: object = None) -> object:
            if key == MEMO_ORG:
                raise KeyError("Unknown payload encoding binary/encrypted")
            return "ruby" if key == MEMO_AGENT else default

    memo = await _our_memo(Listed())  # type: ignore[arg-type]
    assert memo[MEMO_ORG] is None
    assert memo[MEMO_AGENT] == "ruby"
