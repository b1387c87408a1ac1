"""How many Postgres connections each overlay may open at once, and that docs/deploy.md says so.

Every replica keeps its own pool, and the HPAs multiply the replicas: production's query and
notifier may grow to 20 each, while a stock Postgres accepts 100 connections. A refused
connection stops a new pod at startup (a rolling update of ingest then stalls), so the
operator has to size `max_connections` (or the HPAs, or the pools) from the real figure.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.ingest.settings import IngestSettings
from services.notifier.settings import NotifierSettings
from services.query.settings import QuerySettings
from tests.deploy.test_manifests import K8S, Doc, find, kustomize, one

ROOT = Path(__file__).resolve().parents[2]
#: services/reconciler/app.py's pool (max_size=4) and the leader lock's own connection.
RECONCILER_CONNECTIONS = 4 + 1
#: The migrate Job and the retention CronJob: one connection each.
JOB_CONNECTIONS = 2


def _setting(config: dict[str, str], name: str, default: int) -> int:
    return int(config.get(name, default))


def pool_per_replica(config: dict[str, str]) -> dict[str, int]:
    return {
        "fleetwatch-query": _setting(
            config, "QUERY_POOL_MAX_SIZE", QuerySettings.model_fields["pool_max_size"].default
        ),
        "fleetwatch-notifier": _setting(
            config, "NOTIFIER_DB_POOL_MAX", NotifierSettings.model_fields["db_pool_max"].default
        ),
        "fleetwatch-ingest": _setting(
            config, "INGEST_DB_POOL_SIZE", IngestSettings.model_fields["db_pool_size"].default
        ),
        "fleetwatch-reconciler": RECONCILER_CONNECTIONS,
    }


def worst_case_connections(docs: list[Doc]) -> int:
    """Every pool full, every HPA at its maximum, each Deployment's surge pods, both jobs."""
    config = one(docs, "ConfigMap", "fleetwatch-config")["data"]
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in find(docs, "HorizontalPodAutoscaler")}
    total = JOB_CONNECTIONS
    for name, per_replica in pool_per_replica(config).items():
        deployment = one(docs, "Deployment", name)
        replicas = (
            hpas[name]["spec"]["maxReplicas"] if name in hpas else deployment["spec"]["replicas"]
        )
        surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        assert isinstance(surge, int), surge
        total += (replicas + surge) * per_replica
    return total


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_docs_state_each_overlays_postgres_connections(overlay: str) -> None:
    needed = worst_case_connections(kustomize(K8S / "overlays" / overlay))
    text = " ".join((ROOT / "docs" / "deploy.md").read_text().split())
    found = re.search(
        r"up to ([\d,]+) Postgres connections in production and ([\d,]+) in dev", text
    )
    assert found, "docs/deploy.md does not say how many connections the overlays open"
    stated = {"production": found.group(1), "dev": found.group(2)}[overlay]
    assert int(stated.replace(",", "")) == needed, (overlay, stated, needed)
