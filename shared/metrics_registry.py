"""The Prometheus registry each service exports from."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, disable_created_metrics


def new_registry() -> CollectorRegistry:
    """A registry of one app instance, exported without `*_created` series.

    prometheus_client adds a `<name>_created` sample to every counter and histogram child;
    in the text format Prometheus stores each as a series of its own, which doubled the
    per-agent counters' series (docs/deploy.md counts them) for a timestamp no rule reads.
    The switch is process-wide in prometheus_client; every fleetwatch service wants it off.
    """
    disable_created_metrics()  # type: ignore[no-untyped-call]
    return CollectorRegistry()
