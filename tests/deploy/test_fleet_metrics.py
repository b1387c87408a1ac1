"""Fleet metrics: terminal transitions counted by bounded labels, cost and durations observed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, generate_latest

from services.ingest.fleet_metrics import OTHER, FleetMetrics, LabelCap, duration_seconds
from shared.events import Event

T0 = datetime(2026, 2, 5, 10, 0, tzinfo=UTC)


def event(
    type_: str, *, org: str = "acme", agent: str = "ruby", n: int = 0, **fields: Any
) -> Event:
    return Event.model_validate(
        {
            "type": type_,
            "event_id": f"{type_}-{org}-{agent}-{n}",
            "occurred_at": T0,
            "org": org,
            "execution": {"id": f"x{n}", "agent_name": agent, **fields},
        }
    )


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_counts_terminal_events_by_org_agent_status_trigger() -> None:
    reg = CollectorRegistry()
    metrics = FleetMetrics(reg)
    metrics.observe(
        [
            event("execution_queued", n=1, triggered_by="schedule"),
            event("execution_started", n=1, triggered_by="schedule"),
            event("execution_progress", n=1),
            event(
                "execution_completed", n=1, triggered_by="schedule", cost=0.02, duration_ms=45_000
            ),
            event("execution_failed", n=2, triggered_by="webhook-x"),
            event("execution_cancelled", n=3, agent="other-agent"),
        ]
    )
    assert (
        value(
            reg,
            "fleetwatch_executions_total",
            org="acme",
            agent="ruby",
            status="success",
            trigger="schedule",
        )
        == 1
    )
    # Unknown triggers (and none at all) are grouped as "other".
    assert (
        value(
            reg,
            "fleetwatch_executions_total",
            org="acme",
            agent="ruby",
            status="failed",
            trigger="other",
        )
        == 1
    )
    assert (
        value(
            reg,
            "fleetwatch_executions_total",
            org="acme",
            agent="other-agent",
            status="cancelled",
            trigger="other",
        )
        == 1
    )
    assert value(reg, "fleetwatch_executions_started_total", org="acme", agent="ruby") == 1
    assert value(reg, "fleetwatch_execution_cost_total", org="acme", agent="ruby") == 0.02
    assert value(reg, "fleetwatch_execution_cost_per_run_count", org="acme") == 1
    assert value(reg, "fleetwatch_execution_duration_seconds_sum", org="acme", agent="ruby") == 45
    assert (
        value(
            reg, "fleetwatch_execution_duration_seconds_bucket", org="acme", agent="ruby", le="60.0"
        )
        == 1
    )
    assert (
        value(
            reg, "fleetwatch_execution_duration_seconds_bucket", org="acme", agent="ruby", le="30.0"
        )
        == 0
    )


def test_component_events_are_not_counted() -> None:
    reg = CollectorRegistry()
    metrics = FleetMetrics(reg)
    component = Event.model_validate(
        {
            "type": "component_failed",
            "event_id": "c1",
            "occurred_at": T0,
            "org": "acme",
            "agent_name": "ruby",
            "component": {"execution_id": "x1", "node_id": "n1"},
        }
    )
    metrics.observe([component])
    assert "fleetwatch_executions_total{" not in generate_latest(reg).decode()


def test_agent_label_is_capped_and_the_rest_folded_into_other() -> None:
    reg = CollectorRegistry()
    metrics = FleetMetrics(reg, max_orgs=2, max_agents=3)
    metrics.observe(
        event("execution_completed", agent=f"a{i}", n=i, triggered_by="api") for i in range(10)
    )
    # An agent seen before the cap was reached keeps its own label afterwards.
    metrics.observe([event("execution_completed", agent="a0", n=99, triggered_by="api")])
    labels = {"org": "acme", "status": "success", "trigger": "api"}
    assert value(reg, "fleetwatch_executions_total", agent="a0", **labels) == 2
    assert value(reg, "fleetwatch_executions_total", agent="a2", **labels) == 1
    assert value(reg, "fleetwatch_executions_total", agent=OTHER, **labels) == 7
    assert value(reg, "fleetwatch_fleet_metrics_label_overflow_total", label="agent") == 7

    metrics.observe(event("execution_failed", org=f"org{i}", n=i) for i in range(3))
    # acme and org0 took the two org slots; org1 and org2 fold into org="other", agent="other".
    assert (
        value(
            reg,
            "fleetwatch_executions_total",
            org=OTHER,
            agent=OTHER,
            status="failed",
            trigger="other",
        )
        == 2
    )
    series = [
        s
        for m in reg.collect()
        if m.name == "fleetwatch_executions"
        for s in m.samples
        if s.name == "fleetwatch_executions_total"
    ]
    assert len({s.labels["agent"] for s in series}) <= 3 + 1


def test_label_cap() -> None:
    cap = LabelCap(2)
    assert [cap(v) for v in ["a", "b", "c", "a", "d", "b"]] == ["a", "b", OTHER, "a", OTHER, "b"]
    assert len(cap) == 2


def test_duration_from_timestamps_when_not_reported() -> None:
    assert duration_seconds(1500, None, None) == 1.5
    assert duration_seconds(None, T0, T0 + timedelta(seconds=90)) == 90
    assert duration_seconds(None, T0 + timedelta(seconds=1), T0) is None
    assert duration_seconds(None, T0, None) is None


def test_running_gauges_are_replaced_on_each_reading() -> None:
    from services.ingest.fleet_metrics import RunningRow

    reg = CollectorRegistry()
    metrics = FleetMetrics(reg, max_orgs=1)
    metrics.set_running([RunningRow("acme", 3, 1, 4000.0), RunningRow("beta", 2, 2, 9000.0)])
    assert value(reg, "fleetwatch_executions_running", org="acme") == 3
    assert value(reg, "fleetwatch_executions_stuck", org=OTHER) == 2
    assert value(reg, "fleetwatch_executions_running_oldest_age_seconds", org=OTHER) == 9000
    metrics.set_running([])
    assert reg.get_sample_value("fleetwatch_executions_running", {"org": "acme"}) is None


async def test_refresh_running_reads_the_database(db: asyncpg.Connection, org: str) -> None:
    reg = CollectorRegistry()
    metrics = FleetMetrics(reg, stuck_after_s=3600)
    now = datetime.now(UTC)
    rows = [
        ("old", "running", now - timedelta(hours=3)),
        ("new", "running", now - timedelta(minutes=5)),
        ("done", "success", now - timedelta(hours=5)),
    ]
    for exec_id, status, started in rows:
        await db.execute(
            "INSERT INTO executions (org, id, agent_name, status, started_at, first_seen_at)"
            " VALUES ($1, $2, 'ruby', $3, $4, $4)",
            org,
            exec_id,
            status,
            started,
        )
    await metrics.refresh_running(db)
    assert value(reg, "fleetwatch_executions_running", org=org) == 2
    assert value(reg, "fleetwatch_executions_stuck", org=org) == 1
    age = value(reg, "fleetwatch_executions_running_oldest_age_seconds", org=org)
    assert 3 * 3600 - 60 < age < 3 * 3600 + 60
