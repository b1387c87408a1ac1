"""Prometheus metrics of the reconciler, on a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.metrics_registry import new_registry


class ReconcilerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or new_registry()
        r = self.registry
        self.runs_checked = Counter(
            "reconciler_runs_checked_total",
            "Executions compared with their engine",
            ["engine"],
            registry=r,
        )
        self.mismatches_found = Counter(
            "reconciler_mismatches_found_total", "Drift found, by kind", ["kind"], registry=r
        )
        self.mismatches_last_pass = Gauge(
            "reconciler_mismatches_last_pass",
            "Drift the last pass found, by kind (0 on replicas that are not the leader)",
            ["kind"],
            registry=r,
        )
        self.mismatches_fixed = Counter(
            "reconciler_mismatches_fixed_total",
            "Corrections published, by kind",
            ["kind"],
            registry=r,
        )
        self.corrections_invalid = Counter(
            "reconciler_corrections_invalid_total",
            "Corrections that could not be built as valid events (each logged; its row is "
            "left as it is and the pass goes on)",
            ["kind"],
            registry=r,
        )
        self.engine_errors = Counter(
            "reconciler_engine_errors_total", "Engine calls that failed", ["engine"], registry=r
        )
        self.components_synced = Counter(
            "reconciler_components_synced_total",
            "Component events published from engine history",
            ["trigger"],
            registry=r,
        )
        self.on_demand_cached = Counter(
            "reconciler_on_demand_sync_cached_total",
            "On-demand step syncs answered from the last answer for the same execution",
            registry=r,
        )
        self.loops = Counter(
            "reconciler_loops_total", "Reconciliation passes run", ["outcome"], registry=r
        )
        self.loop_duration = Histogram(
            "reconciler_loop_duration_seconds",
            "Duration of one reconciliation pass",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
            registry=r,
        )
        self.leader = Gauge(
            "reconciler_leader", "1 while this replica holds the leader lock", registry=r
        )
        self.last_pass = Gauge(
            "reconciler_last_pass_timestamp_seconds", "When the last pass ended", registry=r
        )
