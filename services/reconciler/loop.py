"""One reconciliation pass (fetch rows and runs, apply the rules, publish), and the leader loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import asyncpg
from cachetools import TTLCache
from pydantic import ValidationError

from services.reconciler import repo
from services.reconciler.breaker import Breaker
from services.reconciler.corrections import component_events, execution_event
from services.reconciler.engines import Engine, EngineError, EngineRun
from services.reconciler.leader import LeaderLock
from services.reconciler.metrics import ReconcilerMetrics
from services.reconciler.publish import EventPublisher
from services.reconciler.rules import (
    Action,
    Decision,
    Holders,
    Kind,
    Lookup,
    Policy,
    Row,
    RunKey,
    attributed,
    decide_row,
    needs_lookup,
    orphan_target,
    reconcile,
    run_for,
    steps_refusal,
)
from services.reconciler.settings import ReconcilerSettings
from shared.events import Event, Status
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def policy_from(settings: ReconcilerSettings) -> Policy:
    return Policy(
        first_check_grace=timedelta(seconds=settings.first_check_grace_seconds),
        orphan_grace=timedelta(seconds=settings.orphan_grace_seconds),
        orphan_run_grace=timedelta(seconds=settings.orphan_run_grace_seconds),
        missing_external_id_timeout=timedelta(seconds=settings.missing_external_id_timeout_seconds),
        fail_missing_external_id=settings.fail_missing_external_id,
        orphan_org=settings.orphan_org,
        orphan_agent=settings.orphan_agent,
    )


#: Unreadable runs of one listing reported one by one (the rest as a count).
LISTING_PROBLEMS_SHOWN = 20


def _listing_problem(engine: str, reason: str) -> Decision:
    """An engine's listing failed, whole or for some of its runs: flagged, the pass goes on."""
    return Decision(
        kind=Kind.ENGINE_ERROR,
        action=Action.FLAG,
        reason=reason,
        org=None,
        execution_id=None,
        agent_name=None,
        engine=engine,
        external_id=None,
    )


class LostLeadership(Exception):
    """The leader lock was lost during a pass: what it found is the new leader's to act on."""


@dataclass
class PassReport:
    decisions: list[Decision] = field(default_factory=list)
    checked: int = 0
    published: int = 0
    fixed: int = 0
    duration_s: float = 0.0
    engine_errors: list[str] = field(default_factory=list)
    #: Engines whose listing this pass failed or was read only in part.
    unlisted: set[str] = field(default_factory=set)

    @property
    def mismatches(self) -> list[Decision]:
        return [d for d in self.decisions if d.is_mismatch]


@dataclass(frozen=True, slots=True)
class SyncResult:
    ok: bool
    published: int = 0
    steps: int = 0
    error: str | None = None
    #: The error was the engine's (unreachable, timed out): counts towards its breaker.
    engine_failed: bool = False


class Reconciler:
    """Holds the pool, engines and publisher; `run_pass` is one pass, `run` the leader loop."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        engines: Mapping[str, Engine],
        publisher: EventPublisher | None,
        policy: Policy,
        *,
        metrics: ReconcilerMetrics | None = None,
        concurrency: int = 64,
        breaker_threshold: int = 10,
        engine_pass_timeout_s: float = 120.0,
        lookback: timedelta = timedelta(hours=1),
        component_window: timedelta = timedelta(hours=1),
        component_engines: Sequence[str] = (),
        on_demand_ttl: timedelta = timedelta(seconds=10),
    ) -> None:
        self.pool = pool
        self.engines = dict(engines)
        self.publisher = publisher
        self.policy = policy
        self.metrics = metrics or ReconcilerMetrics()
        #: Lookups at once, per engine (a slow engine does not take the others' turns).
        self._limits = {name: asyncio.Semaphore(concurrency) for name in self.engines}
        self.breaker_threshold = breaker_threshold
        self.engine_pass_timeout_s = engine_pass_timeout_s
        self.lookback = lookback
        self.component_window = component_window
        self.component_engines = tuple(component_engines)
        #: The lock `run` leads by: whether we lead is asked of it, not remembered from the
        #: last pass, so a lease lost between passes stops the claim at once.
        self._lock: LeaderLock | None = None
        self.metrics.leader.set_function(lambda: 1.0 if self.is_leader else 0.0)
        # Runs synced in the background, by the row version synced: a sync that published
        # only duplicates writes no step, so without this the same run would be fetched again.
        self._synced: TTLCache[tuple[str, str], datetime] = TTLCache(
            maxsize=100_000, ttl=max(component_window.total_seconds(), 1.0)
        )
        # On-demand answers, for a short while: every view of a run's detail page asks while
        # it shows no steps, and a run with none (or an engine erring) would be fetched each time.
        self._on_demand: TTLCache[tuple[str, str], SyncResult] = TTLCache(
            maxsize=10_000, ttl=max(on_demand_ttl.total_seconds(), 0.001)
        )
        # When each open row was last asked of its engine (monotonic): rows an engine had no
        # time for within its limit go first next pass, so none is left unchecked for good.
        self._checked_at: dict[tuple[str, str], float] = {}
        # When each listed run was first seen: the age of a run its engine gives no start.
        self._first_listed: TTLCache[RunKey, datetime] = TTLCache(
            maxsize=100_000, ttl=max(2 * lookback.total_seconds(), 1.0)
        )

    @property
    def is_leader(self) -> bool:
        """Whether this replica holds the leader lock now (`reconciler_leader`, `/readyz`)."""
        return self._lock is not None and self._lock.held

    async def _lookup(self, row: Row, breaker: Breaker) -> Lookup | None:
        """What the engine says of the row's run; None when the breaker kept it from asking."""
        engine = self.engines[row.engine or ""]
        assert row.external_id is not None
        async with self._limits[row.engine or ""]:
            if breaker.open:
                return None
            try:
                found = Lookup(run=await engine.get_run(row.external_id))
            except EngineError as exc:
                self.metrics.engine_errors.labels(engine.name).inc()
                found = Lookup(run=None, error=str(exc))
            except Exception as exc:  # an adapter bug must not stop the pass
                self.metrics.engine_errors.labels(engine.name).inc()
                log.exception("engine %s failed on %s", engine.name, row.external_id)
                found = Lookup(run=None, error=f"{type(exc).__name__}: {exc}")
            breaker.record(found.error)
            return found

    async def _lookups(
        self, rows: Sequence[Row], now: datetime, progress: Progress | None
    ) -> dict[tuple[str, str], Lookup]:
        """Each engine's rows on their own (own concurrency, breaker and time limit), so one
        engine that does not answer delays the others' corrections by at most the limit."""
        todo = [r for r in rows if needs_lookup(r, now, self.policy)]
        by_engine: defaultdict[str, list[Row]] = defaultdict(list)
        # Least lately asked first (never asked: first of all); ties keep their order.
        never = float("-inf")
        for row in sorted(todo, key=lambda r: self._checked_at.get((r.org, r.id), never)):
            by_engine[row.engine or ""].append(row)
        found: dict[tuple[str, str], Lookup] = {}
        done = 0

        async def one(row: Row, breaker: Breaker) -> None:
            nonlocal done
            lookup = await self._lookup(row, breaker)
            if lookup is None:
                lookup = Lookup(run=None, error=breaker.reason(row.engine or ""))
            else:  # asked: an answer, not-found or the engine's error
                self.metrics.runs_checked.labels(row.engine or "").inc()
                self._checked_at[(row.org, row.id)] = time.monotonic()
            found[(row.org, row.id)] = lookup
            done += 1
            if progress is not None:
                progress(done, len(todo))

        async def engine_pass(name: str, engine_rows: list[Row]) -> None:
            breaker = Breaker(self.breaker_threshold)
            try:
                async with asyncio.timeout(self.engine_pass_timeout_s):
                    await asyncio.gather(*(one(row, breaker) for row in engine_rows))
            except TimeoutError:
                late = f"not checked: {name} took over {self.engine_pass_timeout_s:g} s this pass"
                for row in engine_rows:
                    found.setdefault((row.org, row.id), Lookup(run=None, error=late))

        await asyncio.gather(*(engine_pass(n, rs) for n, rs in by_engine.items()))
        return found

    async def _listed(
        self, engines: Sequence[str], now: datetime, report: PassReport
    ) -> list[EngineRun]:
        """Every engine's listing, side by side and each within `engine_pass_timeout_s` (run
        beside the lookups), so a silent engine's listing holds up no other engine either."""
        found = await asyncio.gather(*(self._listed_one(name, now, report) for name in engines))
        return [run for runs in found for run in runs]

    async def _listed_one(self, name: str, now: datetime, report: PassReport) -> list[EngineRun]:
        limit = asyncio.timeout(self.engine_pass_timeout_s)
        try:
            async with limit:
                listed = await self.engines[name].list_runs(now - self.lookback, now)
        except Exception as exc:  # an adapter bug must not stop the pass either
            error = str(exc)
            if limit.expired():
                error = f"{name}: no listing within {self.engine_pass_timeout_s:g} s this pass"
            elif not isinstance(exc, EngineError):
                log.exception("engine %s failed to list runs", name)
            self.metrics.engine_errors.labels(name).inc()
            report.unlisted.add(name)
            report.engine_errors.append(error)
            report.decisions.append(_listing_problem(name, f"listing runs failed: {error}"))
            return []
        problems = list(getattr(self.engines[name], "listing_problems", ()))
        for problem in problems[:LISTING_PROBLEMS_SHOWN]:
            report.decisions.append(_listing_problem(name, f"listing runs: {problem}"))
        if len(problems) > LISTING_PROBLEMS_SHOWN:
            more = f"and {len(problems) - LISTING_PROBLEMS_SHOWN} more unreadable runs"
            report.decisions.append(_listing_problem(name, f"listing runs: {more}"))
        if problems:
            report.unlisted.add(name)
            self.metrics.engine_errors.labels(name).inc(len(problems))
            # A listing read only in part (cut at its page limit, a cursor gone or looping,
            # runs that cannot be read) may hide orphans: not a clean pass (the CLI exits 1).
            report.engine_errors += [f"{name}: listing runs: {p}" for p in problems]
        return listed

    async def _with_error(self, decision: Decision) -> Decision:
        """A finished row corrected from the listing to failed or cancelled (or an orphan run's
        row created so), with the error the engine gives for that run. A listing may carry
        none (Temporal's has statuses and times only), and such a correction is sent once:
        without this the row would say failed with no reason for good. The run is looked up
        on its own (as a row's is, within the engine's time limit); the answer is used only
        when it is the listed run (same start and status: an id reused meanwhile names another
        run). Failing that, the correction goes as listed."""
        run = decision.run
        if (
            decision.action is not Action.PUBLISH
            or decision.publish_status not in (Status.FAILED, Status.CANCELLED)
            or run is None
            or run.error is not None
            or run.engine not in self.engines
        ):
            return decision
        try:
            async with asyncio.timeout(self.engine_pass_timeout_s), self._limits[run.engine]:
                found = await self.engines[run.engine].get_run(run.external_id)
        except Exception as exc:  # the correction goes without the error text
            self.metrics.engine_errors.labels(run.engine).inc()
            log.warning("no error text for %s run %r: %r", run.engine, run.external_id, exc)
            return decision
        if (
            found is None
            or found.error is None
            or (found.status, found.started_at) != (run.status, run.started_at)
            or found.execution_id not in (None, run.execution_id)
            or found.org not in (None, run.org)
        ):
            return decision
        detailed = replace(run, error=found.error, error_type=found.error_type or run.error_type)
        return replace(decision, run=detailed)

    async def run_pass(
        self, filters: repo.Filters | None = None, *, fix: bool, progress: Progress | None = None
    ) -> PassReport:
        """Compare rows with engines and, when `fix`, publish the corrections."""
        filters = filters or repo.Filters()
        started = time.perf_counter()
        now = datetime.now(UTC)
        report = PassReport()
        engines = [n for n in self.engines if filters.engine in (None, n)]
        async with self.pool.acquire() as conn:
            rows = await repo.open_rows(conn, engines, filters)
        if filters == repo.Filters():  # forget rows that are no longer open
            open_now = {(r.org, r.id) for r in rows}
            self._checked_at = {k: t for k, t in self._checked_at.items() if k in open_now}
        # Listings run beside the lookups: each engine costs the pass at most its time limit.
        listing = asyncio.create_task(self._listed(engines, now, report))
        try:
            lookups = await self._lookups(rows, now, progress)
        except BaseException:
            await cancel_and_wait(listing)
            raise
        report.checked = len(lookups)
        report.engine_errors += [lk.error for lk in lookups.values() if lk.error]
        everything = await listing
        # Narrowed by whom a run is attributed to (`ORPHAN_ORG` / `ORPHAN_AGENT` for a run
        # that names no org or agent), as its orphan's row would be.
        listed = [
            run
            for run in everything
            if filters.org in (None, (who := attributed(run, self.policy))[0])
            and filters.agent in (None, who[1])
        ]
        for run in everything:
            self._first_listed.setdefault((run.engine, run.external_id), now)
        open_keys = {(r.org, r.id) for r in rows}
        # Finished rows are matched against the whole listing: `--org` / `--agent` narrow the
        # rows and the orphans, but a run that names no org or agent may be a row's all the same.
        runs_by_key: defaultdict[tuple[str, str], list[EngineRun]] = defaultdict(list)
        for run in everything:
            runs_by_key[(run.engine, run.external_id)].append(run)
        # Rows of every org using the run ids in play (listed or looked up): a run that names
        # no org is nobody's orphan while one may be its, and a run that names no execution
        # is no row's while several may be its (`Holders`).
        stored: list[Row] = []
        targets = [t for run in listed if (t := orphan_target(run, self.policy)) is not None]
        async with self.pool.acquire() as conn:
            for name in engines:
                ids = {run.external_id for run in everything if run.engine == name}
                ids |= {r.external_id for r in rows if r.engine == name and r.external_id}
                stored += await repo.rows_by_external_ids(conn, name, sorted(ids))
            existing = await repo.existing_executions(conn, targets)
        holders = Holders.of([*rows, *stored])
        extra: list[Decision] = []
        for row in stored:
            # Finished rows are checked against the listing (no engine call per row; only a
            # failed or cancelled correction whose listed run has no error looks it up once,
            # see `_with_error`).
            if (row.org, row.id) in open_keys or not row.status.is_terminal:
                continue
            if filters.org not in (None, row.org) or filters.agent not in (None, row.agent_name):
                continue
            key = (row.engine or "", row.external_id or "")
            found = run_for(row, runs_by_key[key], holders)
            if found is None:  # not this row's run, or several that could be
                continue
            decision = decide_row(row, Lookup(run=found), now, self.policy)
            if decision.kind is not Kind.TERMINAL_BUT_ENGINE_RUNNING:
                extra.append(decision)
        decided = reconcile(
            rows,
            lookups,
            listed,
            stored,
            now,
            self.policy,
            existing,
            self._first_listed,
            sparing=everything,
            unlisted=report.unlisted,
            listed_since=now - self.lookback,
            unlisting={n for n, e in self.engines.items() if not e.lists_runs},
        )
        # An orphan run's row is created from the listing, once, as a finished row is
        # corrected: it too gets the engine's error (`_with_error`).
        orphans = [i for i, d in enumerate(decided) if d.kind is Kind.ORPHAN_RUN]
        filled = await asyncio.gather(*(self._with_error(decided[i]) for i in orphans))
        for i, decision in zip(orphans, filled, strict=True):
            decided[i] = decision
        extra = list(await asyncio.gather(*(self._with_error(d) for d in extra)))
        report.decisions += decided + extra
        by_kind = Counter(decision.kind.value for decision in report.mismatches)
        self.metrics.mismatches_last_pass.clear()
        for kind, count in by_kind.items():
            self.metrics.mismatches_found.labels(kind).inc(count)
            self.metrics.mismatches_last_pass.labels(kind).set(count)
        if fix:
            await self._publish(report, now)
        report.duration_s = time.perf_counter() - started
        return report

    async def _publish(self, report: PassReport, now: datetime) -> None:
        if self.publisher is None:
            raise RuntimeError("fix mode needs a publisher")
        events: list[Event] = []
        kinds: list[str] = []
        for decision in report.decisions:
            if decision.action is not Action.PUBLISH:
                continue
            try:
                event = execution_event(decision, now)
            except ValidationError as exc:  # one row's odd data must not stop the others
                self.metrics.corrections_invalid.labels(decision.kind.value).inc()
                log.error(
                    "no correction for %s/%s (%s): %s",
                    decision.org,
                    decision.execution_id,
                    decision.reason,
                    exc,
                )
                continue
            if event is not None:
                events.append(event)
                kinds.append(decision.kind.value)
        await self._still_leading("publishing corrections")
        fresh = await self.publisher.publish_each(events)
        # A correction JetStream already holds (an earlier pass sent it) is not fixed again.
        for kind, new in zip(kinds, fresh, strict=True):
            if new:
                self.metrics.mismatches_fixed.labels(kind).inc()
        report.published = sum(fresh)
        report.fixed = len(events)

    async def _still_leading(self, what: str) -> None:
        """Raise `LostLeadership` unless the lock `run` leads by is still ours (asked of
        Postgres now): a pass may outlive its lease (a slow engine, a paused process), and
        another replica may be acting on the same rows by the time it would publish."""
        if self._lock is not None and not await self._lock.confirm():
            raise LostLeadership(f"leader lock lost before {what}")

    async def sync_components(self, org: str, execution_id: str, trigger: str) -> SyncResult:
        """Publish one execution's steps from its engine's history (cache-aside fill).

        On demand, the same execution is fetched at most once per `on_demand_ttl`; a repeat
        within it gets the first answer (with nothing published again)."""
        if trigger != "on_demand":
            return await self._sync_components(org, execution_id, trigger)
        key = (org, execution_id)
        cached = self._on_demand.get(key)
        if cached is not None:
            self.metrics.on_demand_cached.inc()
            return replace(cached, published=0)
        result = await self._sync_components(org, execution_id, trigger)
        self._on_demand[key] = result
        return result

    async def _sync_components(self, org: str, execution_id: str, trigger: str) -> SyncResult:
        async with self.pool.acquire() as conn:
            row = await repo.row_by_id(conn, org, execution_id)
        if row is None:
            return SyncResult(ok=False, error="execution not found")
        if row.engine not in self.component_engines or row.external_id is None:
            return SyncResult(ok=False, error=f"engine {row.engine!r} keeps no step history")
        try:
            run = await self.engines[row.engine].get_run(row.external_id, with_steps=True)
        except EngineError as exc:
            self.metrics.engine_errors.labels(row.engine).inc()
            return SyncResult(ok=False, error=str(exc), engine_failed=True)
        if run is None:
            return SyncResult(ok=False, error=f"{row.engine} has no run {row.external_id!r}")
        # Rows of every org using the run id: a run that names no execution may be theirs.
        async with self.pool.acquire() as conn:
            others = await repo.rows_by_external_ids(conn, row.engine, [row.external_id])
        refusal = steps_refusal(row, run, Holders.of([row, *others]))
        if refusal is not None:
            return SyncResult(ok=False, error=refusal)
        events = component_events(
            org, row.agent_name, execution_id, list(run.steps), datetime.now(UTC)
        )
        if self.publisher is None:
            return SyncResult(ok=True, steps=len(events))
        published = await self.publisher.publish_all(events)
        self.metrics.components_synced.labels(trigger).inc(len(events))
        return SyncResult(ok=True, published=published, steps=len(events))

    async def sync_recent_components(self) -> int:
        """Background cache fill: steps of recently finished runs, missing or stale.

        Bounded like the lookups of a pass: each engine gets `engine_pass_timeout_s` and a
        breaker, so an engine that does not answer delays the next pass (and the other
        engines' corrections) by at most that, not by one timeout per run."""
        since = datetime.now(UTC) - self.component_window
        total = 0
        for name in self.component_engines:
            breaker = Breaker(self.breaker_threshold)
            try:
                async with asyncio.timeout(self.engine_pass_timeout_s):
                    total += await self._sync_engine_steps(name, since, breaker)
            except TimeoutError:
                log.warning(
                    "step sync of %s stopped after %g s; the rest waits for the next pass",
                    name,
                    self.engine_pass_timeout_s,
                )
        return total

    async def _sync_engine_steps(self, name: str, since: datetime, breaker: Breaker) -> int:
        total = 0
        after: tuple[datetime, str, str] | None = None
        while not breaker.open:
            await self._still_leading("syncing steps")
            async with self.pool.acquire() as conn:
                page = await repo.finished_with_stale_steps(conn, name, since, after=after)
            for row, version in page:
                key = (row.org, row.id)
                if self._synced.get(key) == version:
                    continue  # synced at this version (it has no steps to write)
                if breaker.open:
                    log.warning("step sync of %s stopped: %s", name, breaker.reason(name))
                    return total
                try:
                    result = await self.sync_components(row.org, row.id, "background")
                except Exception:  # one run's odd history must not stop the others
                    log.exception("syncing the steps of %s/%s failed", row.org, row.id)
                    continue
                breaker.record(result.error if result.engine_failed else None)
                if result.ok:
                    self._synced[key] = version
                total += result.steps
            if len(page) < repo.STALE_PAGE:
                break
            last_row, last_version = page[-1]
            after = (last_version, last_row.org, last_row.id)
        return total

    async def run(
        self,
        leader: LeaderLock,
        interval: float,
        *,
        fix: bool,
        stop: asyncio.Event,
        on_pass: Callable[[PassReport], None] | None = None,
    ) -> None:
        """Until `stop`: as the leader, run a pass every `interval` seconds; else keep trying."""
        self._lock = leader
        while not stop.is_set():
            try:
                leading = await leader.try_acquire()
                if not leading:  # what it found as leader is another's to report now
                    self.metrics.mismatches_last_pass.clear()
                if leading:
                    with self.metrics.loop_duration.time():
                        report = await self.run_pass(fix=fix)
                        if fix:
                            await self.sync_recent_components()
                    self.metrics.loops.labels("ok").inc()
                    self.metrics.last_pass.set_to_current_time()
                    log.info(
                        "pass: %d checked, %d mismatches, %d published in %.2f s",
                        report.checked,
                        len(report.mismatches),
                        report.published,
                        report.duration_s,
                    )
                    if on_pass is not None:
                        on_pass(report)
            except asyncio.CancelledError:
                raise
            except LostLeadership as exc:
                self.metrics.loops.labels("lost_leadership").inc()
                log.warning("pass abandoned: %s; another replica leads now", exc)
            except Exception:
                self.metrics.loops.labels("error").inc()
                log.exception("reconciliation pass failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
        await leader.release()
        self._lock = None
