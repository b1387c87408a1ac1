"""Metrics of the fleet itself (executions, cost, durations), with bounded label cardinality.

Ingest calls `FleetMetrics.observe(events, finished)` after each commit: the batch's events and
the executions that turned terminal in it (each counted once, with its merged trigger and cost).
Counters are per process: with several ingest replicas, sum them in PromQL (`sum by (...)`).

Cardinality bound (documented in docs/deploy.md): at most `max_orgs` distinct `org` values
and at most `max_agents` distinct (org, agent) pairs per process; later arrivals are folded
into `org="other"` / `agent="other"`. `status` has 3 values (terminal statuses) and `trigger`
7 (the known triggers plus "other"). So `fleetwatch_executions_total` holds at most
(max_agents + max_orgs) x 3 x 7 series, and the duration histogram (labelled by org and
agent only) (max_agents + max_orgs) x (buckets + 2).
"""

from __future__ import annotations

from collections import Counter as CounterOf
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.ingest.bulk_observe import observe_all
from services.ingest.merge import Finished
from shared.events import Event, EventType, trigger_group

OTHER = "other"
DEFAULT_MAX_ORGS = 50
DEFAULT_MAX_AGENTS = 200
DEFAULT_STUCK_AFTER_S = 3600.0

#: Execution durations, seconds: from a second to a working day.
DURATION_BUCKETS: tuple[float, ...] = (
    1,
    5,
    15,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    7200,
    21600,
    86400,
)
#: Cost of one execution, in the fleet's currency unit (dollars by convention).
COST_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 50)

#: Running executions per org, and how many have run longer than the stuck threshold.
#: `$1` is the threshold in seconds. Read-only; any replica may run it.
RUNNING_SQL = """
SELECT org,
       count(*) AS running,
       count(*) FILTER (WHERE sort_at < now() - make_interval(secs => $1)) AS stuck,
       coalesce(extract(epoch FROM now() - min(sort_at)), 0)::float8 AS oldest_age_s
FROM executions
WHERE status = 'running'
GROUP BY org
"""


class LabelCap:
    """Keeps the first `limit` distinct values seen; maps every later one to "other"."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        return OTHER

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True, slots=True)
class RunningRow:
    """One row of `RUNNING_SQL`."""

    org: str
    running: int
    stuck: int
    oldest_age_s: float


class FleetMetrics:
    """Fleet counters and histograms registered on one registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        max_orgs: int = DEFAULT_MAX_ORGS,
        max_agents: int = DEFAULT_MAX_AGENTS,
        stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
    ) -> None:
        self.stuck_after_s = stuck_after_s
        self._orgs = LabelCap(max_orgs)
        self._agents = LabelCap(max_agents)
        self.executions = Counter(
            "fleetwatch_executions_total",
            "Executions that reached a terminal status, by org, agent, status and trigger "
            "group (agent capped per process).",
            ["org", "agent", "status", "trigger"],
            registry=registry,
        )
        self.started = Counter(
            "fleetwatch_executions_started_total",
            "Executions seen starting (execution_started events), by org and agent.",
            ["org", "agent"],
            registry=registry,
        )
        self.cost = Counter(
            "fleetwatch_execution_cost_total",
            "Cost reported by terminal events, summed, by org and agent.",
            ["org", "agent"],
            registry=registry,
        )
        self.cost_per_execution = Histogram(
            "fleetwatch_execution_cost_per_run",
            "Cost of one execution, by org.",
            ["org"],
            buckets=COST_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "fleetwatch_execution_duration_seconds",
            "Duration of finished executions (duration_ms, else completed_at - started_at).",
            ["org", "agent"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.running = Gauge(
            "fleetwatch_executions_running",
            "Executions now in status running, by org (from the database).",
            ["org"],
            registry=registry,
        )
        self.stuck = Gauge(
            "fleetwatch_executions_stuck",
            "Executions running longer than the stuck threshold, by org (from the database).",
            ["org"],
            registry=registry,
        )
        self.oldest_running_age = Gauge(
            "fleetwatch_executions_running_oldest_age_seconds",
            "Age of the oldest running execution, by org (from the database).",
            ["org"],
            registry=registry,
        )
        self.stuck_threshold = Gauge(
            "fleetwatch_executions_stuck_threshold_seconds",
            "Running longer than this counts as stuck.",
            registry=registry,
        )
        self.stuck_threshold.set(stuck_after_s)
        self.label_overflow = Counter(
            "fleetwatch_fleet_metrics_label_overflow_total",
            "Observations folded into 'other' because a label cap was reached, by label.",
            ["label"],
            registry=registry,
        )

    def labels_for(self, org: str, agent: str) -> tuple[str, str]:
        """The (org, agent) label pair after the caps (one observation of it counted)."""
        pair, folded = self._cap(org, agent)
        if folded is not None:
            self.label_overflow.labels(folded).inc()
        return pair

    def _cap(self, org: str, agent: str) -> tuple[tuple[str, str], str | None]:
        """The label pair after the caps, and which label a cap folded into "other" (if any)."""
        org_label = self._orgs(org)
        if org_label == OTHER and org != OTHER:
            return (OTHER, OTHER), "org"
        agent_label = agent if self._agents(f"{org}\x00{agent}") != OTHER else OTHER
        if agent_label == OTHER and agent != OTHER:
            return (org_label, OTHER), "agent"
        return (org_label, agent_label), None

    def observe(self, events: Iterable[Event], finished: Sequence[Finished] | None = None) -> None:
        """Count a committed batch: starts from its events, finishes from `finished`.

        Ingest passes `finished`, the executions whose status became terminal in the batch
        with their merged fields (the trigger comes from the started event, the cost from the
        last report), so each execution counts once. Without it, terminal events stand in.
        """
        events = list(events)
        caps: dict[tuple[str, str], tuple[tuple[str, str], str | None]] = {}
        overflow: CounterOf[str] = CounterOf()

        def capped(org: str, agent: str, observations: int) -> tuple[str, str]:
            found = caps.get((org, agent))
            if found is None:
                found = caps[(org, agent)] = self._cap(org, agent)
            pair, folded = found
            if folded is not None:
                overflow[folded] += observations
            return pair

        # Sum per label set first: labels() costs a lock and a look-up, inc() another lock,
        # and a batch repeats the same few label sets hundreds of times. The sums are keyed
        # by the reported (org, agent), then folded by the caps, so that the overflow
        # counter counts every observation a cap folds, not once per batch.
        starts: CounterOf[tuple[str, str]] = CounterOf()
        for event in events:
            execution = event.execution
            if execution is not None and event.type is EventType.EXECUTION_STARTED:
                starts[(event.org, execution.agent_name)] += 1
        started: CounterOf[tuple[str, str]] = CounterOf()
        for (org, agent), count in starts.items():
            started[capped(org, agent, count)] += count
        for key, count in started.items():
            self.started.labels(*key).inc(count)
        if finished is None:
            finished = [_finished_from(e) for e in events if _is_terminal_execution(e)]
        reported: CounterOf[tuple[str, str, str, str]] = CounterOf()
        costs: dict[tuple[str, str], list[float]] = {}
        durations: dict[tuple[str, str], list[float]] = {}
        for done in finished:
            key = (done.org, done.agent_name)
            reported[(*key, done.status, trigger_group(done.triggered_by))] += 1
            if done.cost is not None:
                costs.setdefault(key, []).append(done.cost)
            seconds = duration_seconds(done.duration_ms, done.started_at, done.completed_at)
            if seconds is not None:
                durations.setdefault(key, []).append(seconds)
        counts: CounterOf[tuple[str, str, str, str]] = CounterOf()
        for (org, agent, status, trigger), count in reported.items():
            counts[(*capped(org, agent, count), status, trigger)] += count
        for key4, count in counts.items():
            self.executions.labels(*key4).inc(count)
        cost_by_pair: dict[tuple[str, str], list[float]] = {}
        for (org, agent), amounts in costs.items():
            cost_by_pair.setdefault(capped(org, agent, 0), []).extend(amounts)
        cost_by_org: dict[str, list[float]] = {}
        for (org, agent), amounts in cost_by_pair.items():
            self.cost.labels(org, agent).inc(sum(amounts))
            cost_by_org.setdefault(org, []).extend(amounts)
        for org, amounts in cost_by_org.items():
            observe_all(self.cost_per_execution.labels(org), amounts)
        duration_by_pair: dict[tuple[str, str], list[float]] = {}
        for (org, agent), amounts in durations.items():
            duration_by_pair.setdefault(capped(org, agent, 0), []).extend(amounts)
        for (org, agent), amounts in duration_by_pair.items():
            observe_all(self.duration.labels(org, agent), amounts)
        for label, count in overflow.items():
            self.label_overflow.labels(label).inc(count)

    def set_running(self, rows: Sequence[RunningRow]) -> None:
        """Replace the running/stuck gauges with a fresh reading of the database."""
        for gauge in (self.running, self.stuck, self.oldest_running_age):
            gauge.clear()
        totals: dict[str, RunningRow] = {}
        for row in rows:
            org = self._orgs(row.org)
            prev = totals.get(org)
            if prev is None:
                totals[org] = RunningRow(org, row.running, row.stuck, row.oldest_age_s)
            else:
                totals[org] = RunningRow(
                    org,
                    prev.running + row.running,
                    prev.stuck + row.stuck,
                    max(prev.oldest_age_s, row.oldest_age_s),
                )
        for org, row in totals.items():
            self.running.labels(org).set(row.running)
            self.stuck.labels(org).set(row.stuck)
            self.oldest_running_age.labels(org).set(row.oldest_age_s)

    async def refresh_running(self, conn: _Fetcher) -> None:
        """Read running executions from Postgres (any connection with `fetch`)."""
        records = await conn.fetch(RUNNING_SQL, self.stuck_after_s)
        self.set_running(
            [
                RunningRow(
                    org=str(r["org"]),
                    running=int(r["running"]),
                    stuck=int(r["stuck"]),
                    oldest_age_s=float(r["oldest_age_s"]),
                )
                for r in records
            ]
        )


def duration_seconds(
    duration_ms: int | None, started_at: datetime | None, completed_at: datetime | None
) -> float | None:
    """The execution's duration: as reported, else from its timestamps; None if unknown."""
    if duration_ms is not None:
        return duration_ms / 1000.0
    if started_at is not None and completed_at is not None and completed_at >= started_at:
        return (completed_at - started_at).total_seconds()
    return None


class _Fetcher(Protocol):
    """The part of an asyncpg connection or pool `refresh_running` uses."""

    async def fetch(self, query: str, *args: Any) -> Any: ...


def _is_terminal_execution(event: Event) -> bool:
    return event.execution is not None and event.status.is_terminal


def _finished_from(event: Event) -> Finished:
    execution = event.execution
    assert execution is not None
    return Finished(
        org=event.org,
        agent_name=execution.agent_name,
        status=event.status.value,
        triggered_by=execution.triggered_by,
        cost=execution.cost,
        duration_ms=execution.duration_ms,
        started_at=execution.started_at,
        completed_at=execution.completed_at,
    )
