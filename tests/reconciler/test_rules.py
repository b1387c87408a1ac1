"""Pure reconciliation rules, retry classes and the corrective events they produce."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from services.reconciler.corrections import component_events, execution_event
from services.reconciler.engines import EngineRun, EngineStep
from services.reconciler.rules import (
    Action,
    Holders,
    Kind,
    Lookup,
    Policy,
    Row,
    belongs,
    decide_orphan_runs,
    decide_row,
    orphan_target,
    reconcile,
    run_for,
    steps_refusal,
)
from shared.events import Event, EventType, RetryPolicy, Status
from shared.retries import classify_retry
from shared.subjects import Subjects
from shared.validation import validate

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
    fields: dict[str, object] = {
        "engine": "temporal",
        "external_id": "wf-1",
        "status": status,
        "started_at": NOW - timedelta(hours=1),
    }
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
    acme = Holders.of([row()])
    assert run_for(row(), [first, second], acme) is None
    assert run_for(row(), [second], acme) is second
    mine = run(Status.SUCCESS, execution_id="ex1")
    assert run_for(row(), [first, mine], acme) is mine
    # ex2 is the newest row under the id; ex1 is older, so an unnamed run is not ex1's.
    both = Holders.of([row(), row(id="ex2", age_s=60)])
    assert run_for(row(id="ex2", age_s=60), [first, mine], both) is first
    assert run_for(row(), [first], both) is None
    # A run that names no org, under a run id rows of two orgs carry: whose is it? Nobody's.
    two_orgs = Holders.of([row(), row(org="globex")])
    assert run_for(row(), [second], two_orgs) is None
    assert run_for(row(), [run(Status.SUCCESS, org="acme")], two_orgs) is not None


def test_a_run_id_reused_by_a_newer_execution_corrects_only_the_newest_row() -> None:
    """Yesterday's row and today's share the workflow id; the engine's latest run (naming no
    execution) is today's: yesterday's row must not take its status."""
    yesterday = row(Status.SUCCESS, id="yesterday", age_s=86_400)
    today = row(id="today", age_s=600)
    holders = Holders.of([yesterday, today])
    todays_run = run(Status.FAILED, started_at=NOW - timedelta(seconds=600), error="boom")
    assert run_for(yesterday, [todays_run], holders) is None
    d = decide_row(today, Lookup(todays_run), NOW, POLICY, holders)
    assert (d.kind, d.publish_status) == (Kind.STATUS_MISMATCH, Status.FAILED)
    # A stuck older open row whose lookup returns the newer execution's run: flagged.
    stuck = row(id="stuck", age_s=86_400)
    d = decide_row(stuck, Lookup(todays_run), NOW, POLICY, Holders.of([stuck, today]))
    assert (d.kind, d.action, d.publish_status) == (Kind.AMBIGUOUS_RUN, Action.FLAG, None)
    assert "'today'" in d.reason
    # A run that names its execution is that row's, however many rows share the id.
    named = run(Status.FAILED, execution_id="stuck")
    d = decide_row(stuck, Lookup(named), NOW, POLICY, Holders.of([stuck, today]))
    assert d.kind is Kind.STATUS_MISMATCH


def test_open_rows_of_two_orgs_under_one_run_id_are_flagged_unless_the_run_names_one() -> None:
    acme, globex = row(org="acme", id="a1"), row(org="globex", id="g1")
    holders = Holders.of([acme, globex])
    anonymous = run(Status.FAILED, error="boom")
    for mine in (acme, globex):
        d = decide_row(mine, Lookup(anonymous), NOW, POLICY, holders)
        assert (d.kind, d.action) == (Kind.AMBIGUOUS_RUN, Action.FLAG)
        assert "several orgs" in d.reason
    named = run(Status.FAILED, org="acme")
    assert decide_row(acme, Lookup(named), NOW, POLICY, holders).kind is Kind.STATUS_MISMATCH
    assert decide_row(globex, Lookup(named), NOW, POLICY, holders).kind is Kind.FOREIGN_RUN
    decisions = reconcile(
        [acme, globex],
        {k: Lookup(anonymous) for k in [("acme", "a1"), ("globex", "g1")]},
        [],
        [],
        NOW,
        POLICY,
    )
    assert [d.action for d in decisions] == [Action.FLAG, Action.FLAG]


def test_a_run_of_an_execution_that_has_a_row_is_no_orphan() -> None:
    """An earlier, failed run of execution X under another run id (an engine retry): creating
    it as an orphan would write `failed` into X's live row."""
    earlier = run(
        Status.FAILED,
        external_id="run-1",
        org="acme",
        agent_name="ruby",
        execution_id="X",
        started_at=NOW - timedelta(hours=1),
    )
    assert orphan_target(earlier, POLICY) == ("acme", "X")
    assert decide_orphan_runs([earlier], [], NOW, POLICY, existing={("acme", "X")}) == []
    assert [d.kind for d in decide_orphan_runs([earlier], [], NOW, POLICY)] == [Kind.ORPHAN_RUN]


def test_an_orphan_run_with_ids_no_event_may_carry_is_flagged() -> None:
    long_id = run(
        Status.SUCCESS,
        external_id="w" * 500,
        org="acme",
        agent_name="ruby",
        started_at=NOW - timedelta(hours=1),
    )
    (d,) = decide_orphan_runs([long_id], [], NOW, POLICY)
    assert (d.kind, d.action) == (Kind.ORPHAN_RUN_UNATTRIBUTED, Action.FLAG)
    assert "longer than 200" in d.reason


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


def test_step_correction_ids_of_ids_holding_colons_do_not_collide() -> None:
    """Execution "a" step "b:1" and execution "a:b" step "1" once both had the id
    reconcile:acme:a:b:1:1:component_completed, so ingest dropped the second as a duplicate."""
    done = Status.SUCCESS
    first = component_events("acme", "ruby", "a", [EngineStep("b:1", "x", 1, done)], NOW)
    second = component_events("acme", "ruby", "a:b", [EngineStep("1", "x", 1, done)], NOW)
    assert first[0].event_id != second[0].event_id
    assert first[0].event_id == "reconcile:acme:a:b%3A1:1:component_completed"
    # Ids without ":" or "%" keep the form corrections were published with before.
    plain = component_events("acme", "ruby", "ex1", [EngineStep("n1", "x", 2, done)], NOW)
    assert plain[0].event_id == "reconcile:acme:ex1:n1:2:component_completed"
    percent = component_events("acme", "ruby", "a%3Ab", [EngineStep("1", "x", 1, done)], NOW)
    assert percent[0].event_id not in {first[0].event_id, second[0].event_id}


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


def _ingest_accepts(event: Event) -> None:
    """What ingest's validator says of the event as published: it must take it."""
    subjects = Subjects("fleet")
    subject = subjects.event(event.org, event.agent, event.type)
    verdict = validate(subjects, subject, event.model_dump_json(exclude_none=True).encode())
    assert isinstance(verdict, Event), verdict


def test_corrections_fit_whatever_the_engine_reports() -> None:
    """Engine text has no limit, may hold NUL, and its times may be nonsense; the correction
    must still be an event ingest takes (else its row stays wrong on every pass)."""
    odd = run(
        Status.FAILED,
        started_at=datetime(1970, 1, 1, tzinfo=UTC),
        completed_at=datetime(1970, 1, 1, 0, 1, tzinfo=UTC),
        error="Traceback\x00" + "漢" * 70_000,
        error_type="E" * 300,
    )
    long_row = row(id="r" * 195)
    d = decide_row(long_row, Lookup(odd), NOW, POLICY)
    event = execution_event(d, NOW)
    assert event is not None
    assert event.execution is not None
    _ingest_accepts(event)
    assert len(event.event_id) <= 200
    assert execution_event(d, NOW) == event  # still deterministic
    assert event.execution.started_at is None  # 1970: unknown rather than refused
    assert event.execution.completed_at == NOW
    assert event.execution.error is not None
    assert "\x00" not in event.execution.error
    assert len(event.execution.error.encode()) <= 60_000
    assert event.execution.error_type == "E" * 200


def test_step_events_fit_or_leave_out_what_no_event_can_carry() -> None:
    deep: object = []
    for _ in range(300):
        deep = [deep]
    steps = [
        EngineStep(node_id="n" * 300, name="too long an id", attempt=1, status=Status.SUCCESS),
        EngineStep(
            node_id="step\x00one",
            name="x\x00" * 150,
            attempt=2,
            status=Status.FAILED,
            input={"k\x00": "v\x00"},
            output=deep,
            error="e\x00" * 40_000,
            error_type="T" * 300,
            started_at=datetime(1970, 1, 1, tzinfo=UTC),
        ),
    ]
    events = component_events("acme", "ruby", "ex1", steps, NOW)
    assert len(events) == 1  # the 300-char step id is left out, not the whole run
    (event,) = events
    _ingest_accepts(event)
    assert event.component is not None
    assert event.component.node_id == "step\ufffdone"
    assert event.component.input == {"k\ufffd": "v\ufffd"}
    assert event.component.started_at is None


def test_steps_come_only_from_a_run_that_is_surely_the_rows() -> None:
    done = row(Status.SUCCESS, completed_at=NOW - timedelta(minutes=50))
    alone = Holders.of([done])
    # A run that names no execution and began after ours ended: a later run under the id.
    later = run(Status.RUNNING, started_at=NOW - timedelta(minutes=10))
    assert "started after this one ended" in (steps_refusal(done, later, alone) or "")
    assert steps_refusal(done, run(Status.SUCCESS), alone) is None
    # One that names our execution is ours, whenever it started (a retry).
    assert steps_refusal(done, replace_run(later, execution_id="ex1"), alone) is None
    # Another org's row uses the run id and the run names no org: whose steps is unknown.
    rival = Holders.of([done, row(Status.SUCCESS, org="globex", id="gx")])
    assert "several orgs" in (steps_refusal(done, run(Status.SUCCESS), rival) or "")
    assert steps_refusal(done, run(Status.SUCCESS, org="globex"), alone) is not None


def replace_run(found: EngineRun, **changes: object) -> EngineRun:
    return dataclasses.replace(found, **changes)  # type: ignore[arg-type]


def test_retries_of_one_execution_create_it_once_from_the_newest_run() -> None:
    named = {"org": "acme", "agent_name": "ruby", "execution_id": "X"}
    first = run(Status.FAILED, started_at=NOW - timedelta(hours=2), **named)
    retry = run(Status.RUNNING, started_at=NOW - timedelta(minutes=30), **named)
    for runs in ([first, retry], [retry, first]):
        (decision,) = decide_orphan_runs(runs, [], NOW, POLICY)
        assert (decision.execution_id, decision.publish_status) == ("X", Status.RUNNING)
    # Once it has a row, the newest of the runs naming it says where it stands.
    done = row(Status.FAILED, id="X")
    finished = run(Status.SUCCESS, started_at=NOW - timedelta(minutes=30), **named)
    assert run_for(done, [first, finished], Holders.of([done])) is finished


def test_a_run_without_a_start_time_is_timed_from_when_it_was_first_listed() -> None:
    queued = run(Status.PENDING, started_at=None, org="acme", agent_name="ruby")
    key = (queued.engine, queued.external_id)
    assert decide_orphan_runs([queued], [], NOW, POLICY) == []
    recent = {key: NOW - timedelta(minutes=5)}
    assert decide_orphan_runs([queued], [], NOW, POLICY, first_seen=recent) == []
    long_ago = {key: NOW - timedelta(hours=1)}
    (decision,) = decide_orphan_runs([queued], [], NOW, POLICY, first_seen=long_ago)
    assert decision.kind is Kind.ORPHAN_RUN


def test_an_orphan_id_with_control_characters_is_flagged_not_created() -> None:
    odd = run(Status.SUCCESS, external_id="job\x001", org="acme", agent_name="ruby")
    named = dataclasses.replace(odd, execution_id="fine")  # the event carries the run id too
    for found in (odd, named):
        (decision,) = decide_orphan_runs([found], [], NOW, POLICY)
        assert (decision.kind, decision.action) == (Kind.ORPHAN_RUN_UNATTRIBUTED, Action.FLAG)
        assert "control characters" in decision.reason


def test_a_row_lacking_its_run_id_is_not_failed_while_the_engine_lists_a_run_naming_it() -> None:
    failing = dataclasses.replace(POLICY, fail_missing_external_id=True)
    lost = row(external_id=None)
    (alone,) = reconcile([lost], {}, [], [], NOW, failing)
    assert (alone.kind, alone.action) == (Kind.MISSING_EXTERNAL_ID, Action.PUBLISH)
    listed = run(Status.RUNNING, external_id="wf-9", org="acme", execution_id="ex1")
    spared = reconcile([lost], {}, [listed], [], NOW, failing)[0]
    assert (spared.kind, spared.action) == (Kind.MISSING_EXTERNAL_ID, Action.FLAG)
    assert "lists run 'wf-9' (running)" in spared.reason
    assert spared.publish_status is None
