"""Prometheus metrics of one app instance, and the ASGI middleware that times each request."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics_registry import new_registry

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass
class QueryMetrics:
    registry: CollectorRegistry = field(default_factory=new_registry)

    def __post_init__(self) -> None:
        # Labelled by route template, never the concrete path: ids would explode cardinality.
        self.latency = Histogram(
            "fleetwatch_query_request_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "fleetwatch_query_cache_total",
            "Cache lookups by cache and result (hit or miss)",
            ["cache", "result"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "fleetwatch_query_rate_limited_total",
            "Requests refused with 429",
            registry=self.registry,
        )
        self.auth_limited = Counter(
            "fleetwatch_query_auth_limited_total",
            "Requests refused with 429 before their token was checked: their address had "
            "used up its budget of failed authentications (QUERY_AUTH_FAILURE_*)",
            registry=self.registry,
        )
        self.terminate = Counter(
            "fleetwatch_query_terminate_total",
            "Terminate commands by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.busy = Counter(
            "fleetwatch_query_busy_total",
            "Requests answered 503: no pool connection (or export slot) free in time, or a "
            "statement cancelled after QUERY_STATEMENT_TIMEOUT_S (wait=statement)",
            ["wait"],
            registry=self.registry,
        )
        self.exported_rows = Counter(
            "fleetwatch_query_exported_rows_total",
            "Rows streamed by exports",
            ["format"],
            registry=self.registry,
        )


class LatencyMiddleware:
    """Observes every HTTP request under the template of the route that served it."""

    def __init__(self, app: ASGIApp, metrics: QueryMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )
