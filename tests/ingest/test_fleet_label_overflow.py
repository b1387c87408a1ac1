"""`fleetwatch_fleet_metrics_label_overflow_total` counts observations folded into "other",
however many of them one batch carries."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from services.ingest.fleet_metrics import OTHER, FleetMetrics
from shared.events import Event

T0 = datetime(2026, 2, 5, 10, 0, tzinfo=UTC)


def _event(type_: str, org: str, agent: str, n: int) -> Event:
    return Event.model_validate(
        {
            "type": type_,
            "event_id": f"{type_}-{org}-{agent}-{n}",
            "occurred_at": T0,
            "org": org,
            "execution": {"id": f"x{n}", "agent_name": agent, "triggered_by": "api"},
        }
    )


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_every_folded_observation_of_a_batch_is_counted() -> None:
    reg = CollectorRegistry()
    metrics = FleetMetrics(reg, max_orgs=1, max_agents=1)
    metrics.observe([_event("execution_completed", "acme", "ruby", 0)])
    # One batch: an agent past the cap starts and finishes five runs; an org past it, three.
    batch = [_event("execution_started", "acme", "opal", n) for n in range(5)]
    batch += [_event("execution_completed", "acme", "opal", n) for n in range(5)]
    batch += [_event("execution_failed", "beta", "jade", n) for n in range(3)]
    metrics.observe(batch)
    overflow = "fleetwatch_fleet_metrics_label_overflow_total"
    assert _value(reg, overflow, label="agent") == 10
    assert _value(reg, overflow, label="org") == 3
    done = {"status": "success", "trigger": "api"}
    assert _value(reg, "fleetwatch_executions_total", org="acme", agent=OTHER, **done) == 5
    assert _value(reg, "fleetwatch_executions_total", org="acme", agent="ruby", **done) == 1
    assert _value(reg, "fleetwatch_executions_started_total", org="acme", agent=OTHER) == 5
    failed = {"status": "failed", "trigger": "api"}
    assert _value(reg, "fleetwatch_executions_total", org=OTHER, agent=OTHER, **failed) == 3
