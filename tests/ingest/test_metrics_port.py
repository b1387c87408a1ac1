"""`INGEST_METRICS_PORT`: `/metrics` on a port of its own, and no longer on the gateway's.

The fleet metrics hold every org's agents, counts and costs without a token; where the main
port is the public HTTP gateway (deploy/compose.yaml) they must be read elsewhere.
"""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from services.ingest.settings import IngestSettings
from tests.procs import free_port, running


async def test_metrics_move_to_their_own_port(service_env: dict[str, str]) -> None:
    metrics_port = free_port()
    extra = {"INGEST_METRICS_PORT": str(metrics_port)}
    async with (
        running("ingest", service_env, extra_env=extra) as ingest,
        httpx.AsyncClient(timeout=5) as client,
    ):
        assert (await client.get(f"{ingest.url}/metrics")).status_code == 404
        assert (await client.get(f"{ingest.url}/readyz")).status_code == 200
        reply = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert reply.status_code == 200
        assert "fleetwatch_ingest_events_total" in reply.text
        assert "fleetwatch_executions_total" in reply.text
    # Stopped with the service: the port is free again.
    async with httpx.AsyncClient(timeout=2) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{metrics_port}/metrics")


async def test_without_it_the_main_port_serves_metrics(service_env: dict[str, str]) -> None:
    async with (
        running("ingest", service_env) as ingest,
        httpx.AsyncClient(timeout=5) as client,
    ):
        reply = await client.get(f"{ingest.url}/metrics")
        assert reply.status_code == 200
        assert "fleetwatch_ingest_events_total" in reply.text


@pytest.mark.parametrize("value", ["0", "65536", "metrics"])
def test_a_bad_metrics_port_is_refused_by_name(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_METRICS_PORT", value)
    with pytest.raises(ValidationError, match="metrics_port"):
        IngestSettings()
