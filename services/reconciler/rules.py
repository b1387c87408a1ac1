"""Reconciliation rules: pure functions over (our rows, engine runs) → decisions with reasons.

The one rule that outranks the others: never fail a run the engine still reports running.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from services.reconciler.engines import EngineRun
from shared.events import MAX_ID, Status, is_valid_name


class Kind(StrEnum):
    OK = "ok"
    IN_GRACE = "in_grace"
    STATUS_MISMATCH = "status_mismatch"
    MISSING_EXTERNAL_ID = "missing_external_id"
    NOT_YET_VISIBLE = "not_yet_visible"
    ORPHAN_ROW = "orphan_row"
    ORPHAN_RUN = "orphan_run"
    ORPHAN_RUN_UNATTRIBUTED = "orphan_run_unattributed"
    TERMINAL_BUT_ENGINE_RUNNING = "terminal_but_engine_running"
    FOREIGN_RUN = "foreign_run"
    #: The run names no execution and more than one row could be its (a run id used in
    #: several orgs, or reused by a newer execution of the org): flagged, never guessed.
    AMBIGUOUS_RUN = "ambiguous_run"
    ENGINE_ERROR = "engine_error"


class Action(StrEnum):
    NONE = "none"  # nothing to do
    FLAG = "flag"  # reported and counted; a human decides
    PUBLISH = "publish"  # a corrective event makes our record true


@dataclass(frozen=True, slots=True)
class Row:
    """The columns of one of our executions that reconciliation reads."""

    org: str
    id: str
    agent_name: str
    status: Status
    engine: str | None
    external_id: str | None
    started_at: datetime | None
    first_seen_at: datetime
    completed_at: datetime | None = None
    #: When the event that set our status says it happened (its `occurred_at`, by the
    #: publisher's clock): a correction must be later to win over it (None: unknown).
    status_at: datetime | None = None
    #: The version of our status register: which event set it (None: unknown).
    status_version: str | None = None

    @property
    def since(self) -> datetime:
        return self.started_at or self.first_seen_at


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the engine said about one row's run: the run, not found (run None), or an error."""

    run: EngineRun | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    first_check_grace: timedelta = timedelta(seconds=60)
    orphan_grace: timedelta = timedelta(minutes=15)
    #: An engine run with no row is created only this long after it started: its row may
    #: be on its way (ingest lag) or still lack its external id (see the timeout below).
    orphan_run_grace: timedelta = timedelta(minutes=10)
    missing_external_id_timeout: timedelta = timedelta(minutes=10)
    fail_missing_external_id: bool = False
    orphan_org: str | None = None
    orphan_agent: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    kind: Kind
    action: Action
    reason: str
    org: str | None
    execution_id: str | None
    agent_name: str | None
    engine: str | None
    external_id: str | None
    our_status: Status | None = None
    #: When the event that set our status happened (see `Row.status_at`).
    our_status_at: datetime | None = None
    #: Which event set our status (see `Row.status_version`).
    our_status_version: str | None = None
    engine_status: Status | None = None
    #: The status a PUBLISH decision asserts.
    publish_status: Status | None = None
    run: EngineRun | None = None

    @property
    def is_mismatch(self) -> bool:
        return self.action is not Action.NONE


def _decision(row: Row, kind: Kind, action: Action, reason: str, **extra: object) -> Decision:
    return Decision(
        kind=kind,
        action=action,
        reason=reason,
        org=row.org,
        execution_id=row.id,
        agent_name=row.agent_name,
        engine=row.engine,
        external_id=row.external_id,
        our_status=row.status,
        our_status_at=row.status_at,
        our_status_version=row.status_version,
        **extra,  # type: ignore[arg-type]
    )


def _age(now: datetime, since: datetime) -> str:
    return f"{(now - since).total_seconds():.0f} s"


def belongs(run: EngineRun, row: Row) -> bool:
    """Whether an engine run can be this row's: the same engine and run id, and no org or
    execution id of the run's own that names another row (run ids are unique per org only,
    and an engine may reuse a workflow id for a later run)."""
    return (
        run.engine == row.engine
        and run.external_id == row.external_id
        and run.org in (None, row.org)
        and run.execution_id in (None, row.id)
    )


RunKey = tuple[str, str]  # (engine, external id)
_NONE_SEEN: Mapping[RunKey, datetime] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Holders:
    """Which of our rows use each run id: the orgs (of all rows, and of open ones), and per
    org the newest row."""

    orgs: Mapping[RunKey, frozenset[str]]
    open_orgs: Mapping[RunKey, frozenset[str]]
    newest: Mapping[tuple[str, str, str], tuple[datetime, str]]  # (org, *key) -> (since, id)

    @classmethod
    def of(cls, rows: Iterable[Row]) -> Holders:
        orgs: defaultdict[RunKey, set[str]] = defaultdict(set)
        open_orgs: defaultdict[RunKey, set[str]] = defaultdict(set)
        newest: dict[tuple[str, str, str], tuple[datetime, str]] = {}
        for row in rows:
            if row.engine is None or row.external_id is None:
                continue
            key = (row.engine, row.external_id)
            orgs[key].add(row.org)
            if not row.status.is_terminal:
                open_orgs[key].add(row.org)
            at = (row.org, *key)
            newest[at] = max(newest.get(at, (row.since, row.id)), (row.since, row.id))
        return cls(
            {k: frozenset(v) for k, v in orgs.items()},
            {k: frozenset(v) for k, v in open_orgs.items()},
            newest,
        )


def unattributable(row: Row, run: EngineRun, holders: Holders) -> str | None:
    """Why a run that names no execution cannot be taken for this row's (None: it can).

    Run ids are unique per engine namespace, not per org, and engines reuse a workflow id
    for later runs. Such a run is not this row's when a newer row of the same org uses the
    id (the engine's latest run is that one's), nor, unless the run names this org, when
    rows of another org compete for it: for an open row, another org's open row (at most one
    of two running executions can be the engine's current run); for a finished row, any
    other org's row.
    """
    if run.execution_id is not None or row.engine is None or row.external_id is None:
        return None  # a run that names its execution is judged by `belongs`
    key = (row.engine, row.external_id)
    rivals = holders.orgs if row.status.is_terminal else holders.open_orgs
    if run.org is None and not rivals.get(key, frozenset()) <= {row.org}:
        return (
            f"{row.engine} run {row.external_id!r} names no org or execution and rows of "
            "several orgs use that run id"
        )
    newest = holders.newest.get((row.org, *key))
    if newest is not None and newest[1] != row.id:
        return (
            f"{row.engine} run id {row.external_id!r} is used by a newer execution "
            f"{newest[1]!r}, and the run names no execution"
        )
    return None


def run_for(row: Row, runs: Iterable[EngineRun], holders: Holders) -> EngineRun | None:
    """The one listed run that is this row's, or None when none or several could be."""
    candidates = [
        run
        for run in runs
        if belongs(run, row)
        and unattributable(row, run, holders) is None
        and not started_after_it_ended(row, run)
    ]
    named = [run for run in candidates if run.execution_id == row.id]
    if named:
        # Several runs that name this execution are its retries (an engine retry, cron,
        # continue-as-new): the newest one is where it stands now.
        return newest_run(named)
    return candidates[0] if len(candidates) == 1 else None


def newest_run(
    runs: Sequence[EngineRun], first_seen: Mapping[RunKey, datetime] = _NONE_SEEN
) -> EngineRun:
    """The run that started last (by its start, else when the reconciler first listed it);
    of runs that tie, the first listed."""

    def started(run: EngineRun) -> datetime:
        return run.started_at or first_seen.get((run.engine, run.external_id)) or _DAWN

    return max(runs, key=started)


_DAWN = datetime(1, 1, 1, tzinfo=UTC)
#: How far an engine's clock and an agent's may disagree.
CLOCK_SKEW = timedelta(seconds=30)


def started_after_it_ended(row: Row, run: EngineRun) -> bool:
    """A run that names no execution and started after this row's execution had ended: a
    later run under a reused id (its row on its way, without its run id, or of a team that
    does not report to us), never this row's to correct or to copy steps from."""
    return (
        run.execution_id is None
        and run.started_at is not None
        and row.completed_at is not None
        and run.started_at > row.completed_at + CLOCK_SKEW
    )


def steps_refusal(row: Row, run: EngineRun, holders: Holders) -> str | None:
    """Why the steps of `run` must not be written into `row` (None: they may).

    Steps carry a run's inputs and outputs, so a run is taken only when it is surely this
    row's: it names no other org or execution, no other row could be its (`unattributable`),
    and, when it names no execution, it did not start after this execution had ended (a
    later run under a reused workflow id, perhaps of an org that does not report to us).
    """
    if not belongs(run, row):
        return f"{row.engine} run {row.external_id!r} is another execution's"
    doubt = unattributable(row, run, holders)
    if doubt is not None:
        return doubt
    if started_after_it_ended(row, run):
        return (
            f"{row.engine} run {row.external_id!r} names no execution and started after this "
            "one ended (a later run under a reused id)"
        )
    return None


def claimed_runs(runs: Sequence[EngineRun], stored: Iterable[Row]) -> set[int]:
    """Indexes of the `runs` that one of the `stored` rows may be about (not orphans)."""
    by_key: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    for index, run in enumerate(runs):
        by_key[(run.engine, run.external_id)].append(index)
    claimed: set[int] = set()
    for row in stored:
        if row.engine is None or row.external_id is None:
            continue
        claimed.update(
            i for i in by_key.get((row.engine, row.external_id), ()) if belongs(runs[i], row)
        )
    return claimed


def needs_lookup(row: Row, now: datetime, policy: Policy) -> bool:
    """Whether the row's run should be fetched from its engine at all this time."""
    return row.external_id is not None and now - row.since >= policy.first_check_grace


def decide_row(
    row: Row,
    lookup: Lookup | None,
    now: datetime,
    policy: Policy,
    holders: Holders | None = None,
) -> Decision:
    """Compare one of our rows with what its engine reports (lookup None: not checked).

    With `holders` (every row using the run ids involved), a run that names no execution
    and could be another row's is flagged instead of applied (see `unattributable`).
    """
    if row.external_id is None:
        return decide_missing_external_id(row, now, policy)
    if lookup is None or now - row.since < policy.first_check_grace:
        return _decision(
            row,
            Kind.IN_GRACE,
            Action.NONE,
            f"started {_age(now, row.since)} ago, first check after "
            f"{policy.first_check_grace.total_seconds():.0f} s",
        )
    if lookup.error is not None:
        return _decision(row, Kind.ENGINE_ERROR, Action.FLAG, f"engine error: {lookup.error}")
    run = lookup.run
    if run is None:
        if now - row.since < policy.orphan_grace:
            return _decision(
                row,
                Kind.NOT_YET_VISIBLE,
                Action.NONE,
                f"engine has no run {row.external_id!r} yet ({_age(now, row.since)} old, "
                f"orphan after {policy.orphan_grace.total_seconds():.0f} s)",
            )
        return _decision(
            row,
            Kind.ORPHAN_ROW,
            Action.FLAG,
            f"engine has no run {row.external_id!r} {_age(now, row.since)} after it started",
        )
    if not belongs(run, row):
        return _decision(
            row,
            Kind.FOREIGN_RUN,
            Action.FLAG,
            f"{row.engine} run {row.external_id!r} belongs to "
            f"{run.org or row.org}/{run.execution_id or '?'}, not to this execution",
            engine_status=run.status,
        )
    doubt = None if holders is None else unattributable(row, run, holders)
    if doubt is not None:
        return _decision(row, Kind.AMBIGUOUS_RUN, Action.FLAG, doubt, engine_status=run.status)
    extra = {"engine_status": run.status, "run": run}
    if run.status == row.status:
        return _decision(row, Kind.OK, Action.NONE, f"both {row.status.value}", **extra)
    if row.status.is_terminal:
        if run.status.is_terminal:
            return _decision(
                row,
                Kind.STATUS_MISMATCH,
                Action.PUBLISH,
                f"we say {row.status.value}, engine says {run.status.value}",
                publish_status=run.status,
                **extra,
            )
        return _decision(
            row,
            Kind.TERMINAL_BUT_ENGINE_RUNNING,
            Action.FLAG,
            f"we say {row.status.value}, engine still reports {run.status.value}",
            **extra,
        )
    if run.status.rank > row.status.rank:
        return _decision(
            row,
            Kind.STATUS_MISMATCH,
            Action.PUBLISH,
            f"we say {row.status.value}, engine says {run.status.value}",
            publish_status=run.status,
            **extra,
        )
    # The engine is behind us (we say running, it says queued): it is not finished, so leave it.
    return _decision(
        row,
        Kind.OK,
        Action.NONE,
        f"we say {row.status.value}, engine says {run.status.value}: still in progress",
        **extra,
    )


def decide_missing_external_id(row: Row, now: datetime, policy: Policy) -> Decision:
    """A row that names an engine but no run id (the engine call failed, or never came back)."""
    age = now - row.since
    if row.status.is_terminal or age < policy.missing_external_id_timeout:
        return _decision(
            row,
            Kind.IN_GRACE,
            Action.NONE,
            f"no external id yet, {_age(now, row.since)} old",
        )
    reason = (
        f"{row.status.value} for {_age(now, row.since)} with no {row.engine} run id "
        f"(timeout {policy.missing_external_id_timeout.total_seconds():.0f} s)"
    )
    if policy.fail_missing_external_id:
        return _decision(
            row, Kind.MISSING_EXTERNAL_ID, Action.PUBLISH, reason, publish_status=Status.FAILED
        )
    return _decision(row, Kind.MISSING_EXTERNAL_ID, Action.FLAG, reason)


def attributed(run: EngineRun, policy: Policy) -> tuple[str | None, str | None]:
    """The org and agent a run is attributed to: its own, else `ORPHAN_ORG` / `ORPHAN_AGENT`."""
    return run.org or policy.orphan_org, run.agent_name or policy.orphan_agent


def orphan_target(run: EngineRun, policy: Policy) -> tuple[str, str] | None:
    """The (org, execution id) an orphan run's row would get; None when it names no org."""
    org = attributed(run, policy)[0]
    return None if org is None else (org, orphan_execution_id(run))


def decide_orphan_runs(
    runs: Sequence[EngineRun],
    stored: Iterable[Row],
    now: datetime,
    policy: Policy,
    existing: Collection[tuple[str, str]] = (),
    first_seen: Mapping[RunKey, datetime] = _NONE_SEEN,
) -> list[Decision]:
    """Engine runs no stored row may be about: create them when attributable and old enough.

    `stored` are our rows with the runs' external ids (of any org: a run that names no org
    is no orphan while any row may be its). `existing` are the (org, execution id) pairs of
    `orphan_target`s that have a row already: such a run is another run of a known execution
    (an engine retry, a reused id), not an orphan, and writing it would overwrite that row.
    `first_seen` holds when the reconciler first listed each run, the age of a run whose
    engine gives no start time (unknown: it is not old enough yet).
    """
    decisions = []
    claimed = claimed_runs(runs, stored)
    # Runs that would create the same execution (retries of one workflow id, which share
    # its memo or its `<engine>-<id>` fallback): only the newest is where it stands now;
    # creating each would publish contradicting statuses for one execution.
    by_target: defaultdict[tuple[str, str], list[EngineRun]] = defaultdict(list)
    for index, run in enumerate(runs):
        target = orphan_target(run, policy)
        if index not in claimed and target is not None:
            by_target[target].append(run)
    newest = {target: newest_run(group, first_seen) for target, group in by_target.items()}
    for index, run in enumerate(runs):
        target = orphan_target(run, policy)
        if index in claimed or target in existing:
            continue
        if target is not None and newest[target] is not run:
            continue
        # A run the engine gives no start time is timed from when we first listed it.
        started = run.started_at or first_seen.get((run.engine, run.external_id)) or now
        if now - started < policy.orphan_run_grace:
            continue
        org, agent = attributed(run, policy)
        too_long = max(len(run.external_id), len(orphan_execution_id(run))) > MAX_ID
        # The event carries both ids; ingest refuses control characters (NUL) in either.
        ids = run.external_id + orphan_execution_id(run)
        unprintable = not ids.isprintable()
        base = {
            "engine": run.engine,
            "external_id": run.external_id,
            "engine_status": run.status,
            "run": run,
        }
        if (
            org is None
            or agent is None
            or not is_valid_name(org)
            or not is_valid_name(agent)
            or too_long
            or unprintable
        ):
            what = (
                f"ids longer than {MAX_ID}"
                if too_long
                else "an id with control characters"
                if unprintable
                else "no valid org and agent"
            )
            decisions.append(
                Decision(
                    kind=Kind.ORPHAN_RUN_UNATTRIBUTED,
                    action=Action.FLAG,
                    reason=f"{run.engine} run {run.external_id[:MAX_ID]!r} has no row and "
                    f"names {what}",
                    org=org,
                    execution_id=None,
                    agent_name=agent,
                    **base,  # type: ignore[arg-type]
                )
            )
            continue
        decisions.append(
            Decision(
                kind=Kind.ORPHAN_RUN,
                action=Action.PUBLISH,
                reason=f"{run.engine} run {run.external_id!r} ({run.status.value}) has no row",
                org=org,
                execution_id=orphan_execution_id(run),
                agent_name=agent,
                publish_status=run.status,
                **base,  # type: ignore[arg-type]
            )
        )
    return decisions


def orphan_execution_id(run: EngineRun) -> str:
    """The id an orphan run's execution gets: the one the engine names, else engine-external id."""
    return run.execution_id or f"{run.engine}-{run.external_id}"


def reconcile(
    rows: Iterable[Row],
    lookups: Mapping[tuple[str, str], Lookup],
    listed: Sequence[EngineRun],
    stored: Sequence[Row],
    now: datetime,
    policy: Policy,
    existing: Collection[tuple[str, str]] = (),
    first_seen: Mapping[RunKey, datetime] = _NONE_SEEN,
    sparing: Sequence[EngineRun] | None = None,
    unlisted: Collection[str] = (),
    listed_since: datetime | None = None,
    unlisting: Collection[str] = (),
) -> list[Decision]:
    """Every decision of one pass: one per row, then one per engine run we have no row for.

    `stored` are our rows (of every org) using the run ids of `rows` and `listed`. `sparing`
    is the whole listing when `listed` was narrowed to one org or agent: a run that names
    neither may still be a row's (default: `listed`). `unlisted` are the engines whose
    listing failed or was read only in part this pass. `listed_since` is where the listing's
    window starts (runs started since then; None: no limit); `unlisting` are the engines
    that list nothing at all (no window there: nothing is ever spared by a listing).
    """
    rows = list(rows)
    holders = Holders.of([*rows, *stored])
    spare_from = listed if sparing is None else sparing
    decisions = [
        _spare_listed(
            decide_row(row, lookups.get((row.org, row.id)), now, policy, holders),
            spare_from,
            unlisted,
            _before_window(row, None if row.engine in unlisting else listed_since),
        )
        for row in rows
    ]
    decisions += decide_orphan_runs(listed, stored, now, policy, existing, first_seen)
    return decisions


#: How long before a row's own start its engine run may have started (the agent's clock and
#: the engine's differ; an agent may start the run before reporting its execution).
LISTING_MARGIN = timedelta(minutes=5)


def _before_window(row: Row, listed_since: datetime | None) -> datetime | None:
    """The listing's start, when `row` began too close to it (or before) for the listing to
    hold every run that may be the row's; else None."""
    if listed_since is None or row.since - LISTING_MARGIN >= listed_since:
        return None
    return listed_since


def _spare_listed(
    decision: Decision,
    listed: Sequence[EngineRun],
    unlisted: Collection[str] = (),
    before_window: datetime | None = None,
) -> Decision:
    """A row about to be failed for lacking its run id, while the engine lists a run that
    names it (the event carrying the id was lost): flagged with that run, never failed.
    Nor is it failed while its engine's listing could not be read whole (`unlisted`): the run
    naming it may be in the part that was not read; nor when it started before the listing's
    window (`before_window`, less a margin): the run naming it, still running maybe, started
    before the window and is not listed (it runs longer than `LOOKBACK_SECONDS`).

    A run that names the execution but no org may be this row's (most engines know no org):
    it spares the row too, whoever `ORPHAN_ORG` names. Flagging is safe; failing a run the
    engine may still be running is not."""
    if decision.kind is not Kind.MISSING_EXTERNAL_ID or decision.action is not Action.PUBLISH:
        return decision
    if decision.engine in unlisted:
        return replace(
            decision,
            action=Action.FLAG,
            publish_status=None,
            reason=f"{decision.reason}; not failed: {decision.engine}'s listing could not be "
            "read whole this pass, and a run naming this execution may be in it",
        )
    for run in listed:
        if run.execution_id == decision.execution_id and run.org in (None, decision.org):
            return replace(
                decision,
                action=Action.FLAG,
                publish_status=None,
                reason=f"{decision.reason}; not failed: {run.engine} lists run "
                f"{run.external_id!r} ({run.status.value}) naming this execution",
                run=run,
                engine_status=run.status,
            )
    if before_window is not None:
        return replace(
            decision,
            action=Action.FLAG,
            publish_status=None,
            reason=f"{decision.reason}; not failed: it started before {decision.engine}'s "
            f"listing window (from {before_window.isoformat(timespec='seconds')}, less "
            f"{LISTING_MARGIN.total_seconds():.0f} s), so a run naming it, still running "
            "maybe, would not be listed",
        )
    return decision
