"""Prometheus metrics of the ingest service, one set per app instance."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.metrics_registry import new_registry


@dataclass(frozen=True)
class IngestMetrics:
    registry: CollectorRegistry
    events: Counter
    dead_letters: Counter
    dlq_errors: Counter
    batch_size: Histogram
    commit_seconds: Histogram
    db_errors: Counter
    rows_written: Counter
    consumer_pending: Gauge
    consumer_ack_pending: Gauge
    consumer_read_at: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> IngestMetrics:
        reg = registry or new_registry()
        return cls(
            registry=reg,
            events=Counter(
                "fleetwatch_ingest_events_total",
                "Events taken from the stream, by type and outcome "
                "(applied, duplicate, dead_lettered).",
                ["type", "outcome"],
                registry=reg,
            ),
            dead_letters=Counter(
                "fleetwatch_ingest_dlq_total",
                "Messages sent to the dead-letter stream, by reason.",
                ["reason"],
                registry=reg,
            ),
            dlq_errors=Counter(
                "fleetwatch_ingest_dlq_errors_total",
                "Dead letters that could not be stored (NATS away, the DLQ stream missing "
                "or refusing them); their messages are redelivered, not acked.",
                registry=reg,
            ),
            batch_size=Histogram(
                "fleetwatch_ingest_batch_size",
                "Messages per batch.",
                buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
                registry=reg,
            ),
            commit_seconds=Histogram(
                "fleetwatch_ingest_commit_seconds",
                "Time to write and commit one batch.",
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                registry=reg,
            ),
            db_errors=Counter(
                "fleetwatch_ingest_db_errors_total",
                "Failed batch commits, by kind (transient: retried; rejected: bisected).",
                ["kind"],
                registry=reg,
            ),
            rows_written=Counter(
                "fleetwatch_ingest_rows_written_total",
                "Rows inserted or updated, by table.",
                ["table"],
                registry=reg,
            ),
            consumer_pending=Gauge(
                "fleetwatch_ingest_consumer_lag",
                "Messages in the stream not yet delivered to ingest's durable consumer.",
                registry=reg,
            ),
            consumer_ack_pending=Gauge(
                "fleetwatch_ingest_consumer_ack_pending",
                "Messages delivered to ingest and not yet acknowledged.",
                registry=reg,
            ),
            consumer_read_at=Gauge(
                "fleetwatch_ingest_consumer_read_timestamp_seconds",
                "When the two consumer gauges were last read from JetStream (Unix time); "
                "while they cannot be, they are NaN and this stays put.",
                registry=reg,
            ),
        )
