"""What deploy/compose.yaml publishes beyond the machine.

The services answer only with a token or an API key. NATS, Prometheus and Grafana do not (or,
for Grafana, with `admin` / `admin` unless GRAFANA_PASSWORD is set): Prometheus holds every
org's agent names, execution counts and costs side by side, and its lifecycle API
(`--web.enable-lifecycle`) lets any caller `POST /-/quit`. Those ports stay on loopback.
Ingest's own `/metrics` holds the same fleet metrics without a token, so it is served on a
port of its own that compose does not publish (`INGEST_METRICS_PORT`), not on the gateway's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"
#: Published for anyone who reaches the machine: each checks a token or an API key.
AUTHENTICATED = {"query", "notifier", "ingest"}


def _host_ip(port: str | dict[str, Any]) -> str:
    """The address a short (`[ip:]host:container`) or long port entry is published on."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "0.0.0.0"))
    parts = port.split(":")
    return parts[0] if len(parts) == 3 else "0.0.0.0"


def test_only_the_authenticated_services_listen_beyond_loopback() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    exposed = {
        name
        for name, service in services.items()
        for port in service.get("ports", [])
        if _host_ip(port) != "127.0.0.1"
    }
    assert exposed <= AUTHENTICATED, sorted(exposed - AUTHENTICATED)
    # Still reachable from the machine itself, as docs/deploy.md says.
    for name in ("nats", "prometheus", "grafana"):
        assert services[name]["ports"], name


def test_the_port_reader() -> None:
    assert _host_ip("9090:9090") == "0.0.0.0"
    assert _host_ip("127.0.0.1:9090:9090") == "127.0.0.1"
    assert _host_ip({"target": 9090, "published": 9090}) == "0.0.0.0"
    assert _host_ip({"target": 9090, "host_ip": "127.0.0.1"}) == "127.0.0.1"


def test_ingest_metrics_stay_off_the_published_gateway_port() -> None:
    ingest = yaml.safe_load(COMPOSE.read_text())["services"]["ingest"]
    metrics_port = int(ingest["environment"]["INGEST_METRICS_PORT"])
    gateway_port = int(ingest["environment"]["INGEST_PORT"])
    assert metrics_port != gateway_port
    published = {
        int(port["target"]) if isinstance(port, dict) else int(port.split(":")[-1])
        for port in ingest.get("ports", [])
    }
    assert gateway_port in published
    assert metrics_port not in published
