"""The notifier's Prometheus metrics, one registry per service instance (tests run several)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics_registry import new_registry

#: Delivery lag buckets: the goal is p99 under 100 ms, so resolve well below and above it.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = new_registry()
        r = self.registry
        self.connections = Gauge(
            "notifier_connections", "Open, authenticated WebSocket connections", registry=r
        )
        self.events = Counter(
            "notifier_events_total", "Stream events fanned out to clients", registry=r
        )
        self.invalid_events = Counter(
            "notifier_invalid_events_total",
            "Stream messages skipped as invalid (ingest sends them to the DLQ)",
            registry=r,
        )
        self.messages_sent = Counter(
            "notifier_messages_sent_total",
            "Event messages written to clients",
            ["path"],
            registry=r,
        )
        self.drops = Counter(
            "notifier_dropped_messages_total",
            "Event messages a client should have had but lost when it was cut off as too slow",
            registry=r,
        )
        self.slow_disconnects = Counter(
            "notifier_slow_client_disconnects_total",
            "Clients closed with 4008 because their queue overflowed (queue_full), their backlog "
            "during a replay did (replay_backlog), or all queues together did (buffer_budget)",
            ["reason"],
            registry=r,
        )
        self.buffer_budget_cuts = Counter(
            "notifier_buffer_budget_cuts_total",
            "Clients closed with 4008 because all clients' queues together passed "
            "NOTIFIER_BUFFER_BUDGET_BYTES (the ones holding the most were cut)",
            registry=r,
        )
        self.queued_bytes = Gauge(
            "notifier_queued_bytes",
            "Bytes queued to clients in all, as fan-out last saw each client's queue",
            registry=r,
        )
        self.auth_failures = Counter(
            "notifier_auth_failures_total", "Connections closed with 4401", registry=r
        )
        self.caller_limit_closes = Counter(
            "notifier_caller_limit_closes_total",
            "Connections closed with 4429: the caller already held its maximum of sockets",
            registry=r,
        )
        self.auth_limited = Counter(
            "notifier_auth_limited_total",
            "Connections closed with 4429 instead of 4401: their address had used up its budget "
            "of failed authentications (NOTIFIER_AUTH_FAILURE_*)",
            registry=r,
        )
        self.socket_limit_closes = Counter(
            "notifier_socket_limit_closes_total",
            "Connections closed with 1013 right after the handshake: the process already held "
            "NOTIFIER_MAX_SOCKETS open sockets",
            registry=r,
        )
        self.frame_errors = Counter(
            "notifier_client_frame_errors_total",
            "Client frames answered with an error frame",
            registry=r,
        )
        self.resumes = Counter(
            "notifier_resumes_total",
            "Resume requests by outcome (ring, stream, up_to_date, resync, unavailable, abandoned)",
            ["outcome"],
            registry=r,
        )
        self.scope_loads = Counter(
            "notifier_scope_loads_total",
            "Callers' scopes read from Postgres (at connect on a cache miss, and refreshes)",
            registry=r,
        )
        self.scope_load_failures = Counter(
            "notifier_scope_load_failures_total",
            "Scope loads that failed or timed out (handshakes: 1013; refreshes: the last scope "
            "is kept for up to a TTL)",
            registry=r,
        )
        self.access_closes = Counter(
            "notifier_access_closes_total",
            "Open connections closed because access ended: token_expired (4401) or "
            "lookup_failed (1013)",
            ["reason"],
            registry=r,
        )
        self.delivery_lag = Histogram(
            "notifier_delivery_lag_seconds",
            "From the event's arrival in JetStream to its frame written to every client's socket",
            buckets=LAG_BUCKETS,
            registry=r,
        )
