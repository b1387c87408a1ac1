"""Folding grouped counts into the stats and timeline answers (pure; SQL does the grouping)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from shared.events import KNOWN_TRIGGERS, Status, trigger_group

Bucket = Literal["hour", "day"]
BUCKET_STEP: dict[Bucket, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
TERMINAL = frozenset({Status.SUCCESS.value, Status.FAILED.value, Status.CANCELLED.value})


@dataclass(frozen=True, slots=True)
class StatsGroup:
    """Executions of one (agent, trigger, status) in the window, as SQL grouped them."""

    agent_name: str
    triggered_by: str | None
    status: str
    count: int
    cost: float
    duration_sum: float
    duration_count: int


def _rate(success: int, finished: int) -> float | None:
    # Success among finished runs: running ones have no outcome yet and must not dilute it.
    return round(success / finished, 4) if finished else None


def fold_stats(
    groups: Iterable[StatsGroup],
    *,
    running_now: int,
    display_names: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """Totals, outcome counts, cost, mean duration, by trigger and by agent."""
    names = display_names or {}
    by_status = dict.fromkeys((s.value for s in Status), 0)
    by_trigger = dict.fromkeys((*sorted(KNOWN_TRIGGERS), "other"), 0)
    agents: dict[str, dict[str, Any]] = {}
    total = 0
    cost = 0.0
    duration_sum = 0.0
    duration_count = 0
    for g in groups:
        total += g.count
        cost += g.cost
        duration_sum += g.duration_sum
        duration_count += g.duration_count
        by_status[g.status] = by_status.get(g.status, 0) + g.count
        by_trigger[trigger_group(g.triggered_by)] += g.count
        agent = agents.setdefault(
            g.agent_name, {"count": 0, "success": 0, "finished": 0, "failed": 0, "cost": 0.0}
        )
        agent["count"] += g.count
        agent["cost"] += g.cost
        if g.status in TERMINAL:
            agent["finished"] += g.count
        if g.status == Status.SUCCESS.value:
            agent["success"] += g.count
        if g.status == Status.FAILED.value:
            agent["failed"] += g.count
    finished = sum(by_status[s] for s in TERMINAL)
    by_agent = [
        {
            "agent_name": name,
            "display_name": names.get(name),
            "count": a["count"],
            "failed": a["failed"],
            "success_rate": _rate(a["success"], a["finished"]),
            "cost": round(a["cost"], 6),
        }
        for name, a in sorted(agents.items(), key=lambda kv: (-kv[1]["count"], kv[0]))
    ]
    return {
        "total": total,
        "successful": by_status[Status.SUCCESS.value],
        "failed": by_status[Status.FAILED.value],
        "cancelled": by_status[Status.CANCELLED.value],
        "pending": by_status[Status.PENDING.value],
        "running": running_now,
        "success_rate": _rate(by_status[Status.SUCCESS.value], finished),
        "total_cost": round(cost, 6),
        "avg_duration_ms": round(duration_sum / duration_count, 1) if duration_count else None,
        "by_trigger": by_trigger,
        "by_agent": by_agent,
    }


def floor_to(moment: datetime, bucket: Bucket) -> datetime:
    moment = moment.astimezone(UTC)
    if bucket == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class TimelineRow:
    bucket: datetime
    status: str
    count: int
    cost: float


def fill_timeline(
    rows: Iterable[TimelineRow], *, start: datetime, end: datetime, bucket: Bucket
) -> list[dict[str, Any]]:
    """One entry per bucket from `start` to `end` (both floored), zeros where nothing ran;
    rows dated after `end` count in the last bucket."""
    step = BUCKET_STEP[bucket]
    first, last = floor_to(start, bucket), floor_to(end, bucket)
    series: dict[datetime, dict[str, Any]] = {}
    moment = first
    while moment <= last:
        series[moment] = {"total": 0, **dict.fromkeys((s.value for s in Status), 0), "cost": 0.0}
        moment += step
    for row in rows:
        moment = floor_to(row.bucket, bucket)
        if moment > last:
            # Dated after `end` (a publisher's clock ahead of ours): the stats count it in
            # the window, so the current bucket does too, and the buckets add up to them.
            moment = last
        entry = series.get(moment)
        if entry is None:  # before the window (a clock edge): never invent a bucket
            continue
        entry["total"] += row.count
        entry[row.status] = entry.get(row.status, 0) + row.count
        entry["cost"] += row.cost
    return [
        {
            "bucket": moment.isoformat().replace("+00:00", "Z"),
            **entry,
            "cost": round(entry["cost"], 6),
        }
        for moment, entry in series.items()
    ]
