"""Every service exports its counters and histograms without `*_created` series: in the text
format Prometheus stores each as a series of its own, doubling the per-agent counters that
docs/deploy.md budgets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from services.ingest.fleet_metrics import FleetMetrics
from services.ingest.metrics import IngestMetrics
from services.notifier.metrics import Metrics as NotifierMetrics
from services.query.metrics import QueryMetrics
from services.reconciler.metrics import ReconcilerMetrics


def _exported(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if line[:1] != "#"]


def test_no_service_exports_created_series() -> None:
    ingest = IngestMetrics.create()
    ingest.events.labels("execution_completed", "applied").inc()
    ingest.commit_seconds.observe(0.01)
    FleetMetrics(ingest.registry)
    query = QueryMetrics()
    query.latency.labels("GET", "/api/executions", "200").observe(0.004)
    notifier = NotifierMetrics()
    notifier.events.inc()
    reconciler = ReconcilerMetrics()
    reconciler.runs_checked.labels("temporal").inc()
    for registry in (ingest.registry, query.registry, notifier.registry, reconciler.registry):
        lines = _exported(registry)
        names = {line.split("{")[0].split(" ")[0] for line in lines}
        assert any(n.endswith(("_total", "_count")) for n in names), names  # the sample shows
        assert [line for line in lines if "_created" in line.split("{")[0]] == []
