"""Kubernetes manifests: each overlay rendered by kustomize and validated against the schemas.

Rendering uses `kubectl kustomize` (kustomize v5 built into kubectl); validation uses the
`kubernetes-validate` package (strict: unknown fields are errors). The Prometheus Operator
kinds have no schema there, so their shape is checked by hand and the PrometheusRule is
checked to carry exactly deploy/prometheus/rules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from services.ingest.gateway import MAX_BODY_BYTES
from services.ingest.main import GRACEFUL_SHUTDOWN_S
from services.ingest.settings import IngestSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
SERVICES = {"query": 8000, "notifier": 8001, "ingest": 8002, "reconciler": 8003}

Doc = dict[str, Any]


def kustomize(path: Path) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with built-in kustomize) is not installed")
    done = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module", params=["dev", "production"])
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, kustomize(K8S / "overlays" / request.param)


def find(docs: list[Doc], kind: str, name: str | None = None) -> Iterator[Doc]:
    for doc in docs:
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
            yield doc


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = list(find(docs, kind, name))
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def test_every_object_is_valid_against_the_kubernetes_schemas(
    rendered: tuple[str, list[Doc]],
) -> None:
    overlay, docs = rendered
    errors = []
    for doc in docs:
        if doc["kind"] in OPERATOR_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not errors, f"{overlay}: " + "\n".join(errors)
    namespace = {"dev": "fleetwatch-dev", "production": "fleetwatch"}[overlay]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]


def test_the_validator_rejects_a_mistake() -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "replica": 2,  # misspelt
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_services_have_probes_resources_config_and_run_unprivileged(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    config = one(docs, "ConfigMap", "fleetwatch-config")["data"]
    for name, port in SERVICES.items():
        deployment = one(docs, "Deployment", f"fleetwatch-{name}")
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["args"] == [name]
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert "memory" in container["resources"]["limits"]
        refs = {next(iter(e)): next(iter(e.values()))["name"] for e in container["envFrom"]}
        assert refs == {"configMapRef": "fleetwatch-config", "secretRef": "fleetwatch-secrets"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert config[f"{name.upper()}_PORT"] == str(port)
        assert config[f"{name.upper()}_HOST"] == "0.0.0.0"
        service = one(docs, "Service", f"fleetwatch-{name}")
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"]["ports"][0]["port"] == port
        assert service["metadata"]["labels"]["fleetwatch.io/scrape"] == "true"
        pdb = one(docs, "PodDisruptionBudget", f"fleetwatch-{name}")
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_ingress_routes_api_dashboard_gateway_and_websocket(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    ingress = one(docs, "Ingress", "fleetwatch")
    (rule,) = ingress["spec"]["rules"]
    routes = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert routes == {
        "/ws": "fleetwatch-notifier",
        "/api": "fleetwatch-query",
        "/": "fleetwatch-query",
        "/api/events": "fleetwatch-ingest",
    }
    services = {s["metadata"]["name"] for s in find(docs, "Service")}
    assert set(routes.values()) <= services
    # The dashboard's live feed goes through this Ingress (with TLS: wss).
    notifier = urlsplit(one(docs, "ConfigMap", "fleetwatch-config")["data"]["QUERY_NOTIFIER_URL"])
    assert (notifier.hostname, notifier.path) == (rule["host"], "/ws")
    assert notifier.scheme == ("wss" if ingress["spec"].get("tls") else "ws")
    # The gateway's largest batch passes nginx.
    body = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body.endswith("m")
    assert int(body[:-1]) * 1024 * 1024 > MAX_BODY_BYTES


def test_autoscalers_jobs_and_monitoring(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    deployments = {d["metadata"]["name"] for d in find(docs, "Deployment")}
    hpas = {h["metadata"]["name"]: h for h in find(docs, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"fleetwatch-query", "fleetwatch-notifier"}
    for hpa in hpas.values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    migrate = one(docs, "Job", "fleetwatch-migrate")
    assert migrate["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    cron = one(docs, "CronJob", "fleetwatch-retention")
    retention = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert retention["args"][0] == "retention"
    monitor = one(docs, "ServiceMonitor", "fleetwatch")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == {"fleetwatch.io/scrape": "true"}
    assert (
        monitor["spec"]["endpoints"][0] | {"port": "http", "path": "/metrics"}
        == (monitor["spec"]["endpoints"][0])
    )
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules/fleetwatch.rules.yml").read_text())
    assert one(docs, "PrometheusRule", "fleetwatch")["spec"] == rules


def test_prometheusrule_is_generated_from_the_rules_file() -> None:
    sys.path.insert(0, str(K8S))
    try:
        import gen_prometheusrule  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(K8S))
    assert (K8S / "base" / "prometheusrule.yaml").read_text() == gen_prometheusrule.render(), (
        "run: python deploy/k8s/gen_prometheusrule.py"
    )


_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "KB": 2**10, "MB": 2**20, "GB": 2**30}


def _size(text: str) -> int:
    """Bytes of a Kubernetes quantity (`10Gi`) or a NATS size (`8GB`; NATS counts in 1024s)."""
    unit = text[-2:]
    return int(text[:-2]) * _UNITS[unit]


def test_nats_is_a_three_node_jetstream_cluster(
    rendered: tuple[str, list[Doc]], tmp_path: Path
) -> None:
    overlay, docs = rendered
    nats = one(docs, "StatefulSet", "fleetwatch-nats")
    assert nats["spec"]["replicas"] == 3
    headless = one(docs, "Service", nats["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    conf = one(docs, "ConfigMap", "fleetwatch-nats-config")["data"]["nats.conf"]
    for i in range(3):
        assert f"nats://fleetwatch-nats-{i}.{nats['spec']['serviceName']}:6222" in conf
    assert "jetstream" in conf
    config = one(docs, "ConfigMap", "fleetwatch-config")["data"]
    # The services reach NATS as its `fleetwatch` user: the URL, with its password, is a secret.
    assert "NATS_URL" not in config
    if overlay == "dev":
        secret = one(docs, "Secret", "fleetwatch-secrets")["stringData"]
        url = urlsplit(secret["NATS_URL"])
        assert (url.username, url.hostname, url.port) == ("fleetwatch", "fleetwatch-nats", 4222)
        auth = one(docs, "Secret", "fleetwatch-nats-auth")["stringData"]["authorization.conf"]
        assert f'user: fleetwatch, password: "{url.password}"' in auth
    else:  # made out of band, like fleetwatch-secrets
        assert list(find(docs, "Secret", "fleetwatch-nats-auth")) == []
    one(docs, "Service", "fleetwatch-nats")
    expected_replicas = {"dev": "1", "production": "3"}[overlay]
    assert config["FLEETWATCH_STREAM_REPLICAS"] == expected_replicas
    # Lame-duck mode on preStop finds the server through its pid file.
    (container,) = nats["spec"]["template"]["spec"]["containers"]
    (signal_arg,) = [a for a in container["lifecycle"]["preStop"]["exec"]["command"] if "ldm=" in a]
    pid_file = signal_arg.split("ldm=", 1)[1]
    assert f"pid_file: {pid_file}" in conf
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert str(Path(pid_file).parent) in mounts
    # JetStream's file store fits the data volume, so it refuses before the disk is full.
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    volume = claim["spec"]["resources"]["requests"]["storage"]
    assert "max_file_store: $JS_MAX_FILE_STORE" in conf
    assert _size(env["JS_MAX_FILE_STORE"]) <= 0.9 * _size(volume), (env, volume)

    # The server itself accepts the configuration (syntax and option names).
    server = shutil.which("nats-server", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if server is None:
        pytest.skip("nats-server is not installed")
    # Laid out as mounted: the config and, beside it, the Secret with the users it includes.
    (tmp_path / "nats").mkdir()
    (tmp_path / "nats-auth").mkdir()
    path = tmp_path / "nats" / "nats.conf"
    path.write_text(conf.replace("/data", str(tmp_path / "data")))
    users = list(find(docs, "Secret", "fleetwatch-nats-auth"))
    auth = (
        users[0]["stringData"]["authorization.conf"]
        if users  # production makes its own: any valid user list
        else 'authorization { users: [ { user: fleetwatch, password: "x" } ] }\n'
    )
    (tmp_path / "nats-auth" / "authorization.conf").write_text(auth)
    done = subprocess.run(
        [server, "-c", str(path), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env, "POD_NAME": "fleetwatch-nats-0"},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_secrets_dev_generated_production_external(rendered: tuple[str, list[Doc]]) -> None:
    overlay, docs = rendered
    secrets = list(find(docs, "Secret", "fleetwatch-secrets"))
    if overlay == "production":
        # Made out of band; the base's placeholder must never reach production.
        assert secrets == []
        config = one(docs, "ConfigMap", "fleetwatch-config")["data"]
        assert config["FLEETWATCH_JWKS_URL"].startswith("https://")
        # Only a throwaway cluster may run on a public HS256 secret.
        assert "FLEETWATCH_ALLOW_WEAK_SECRET" not in config
        assert one(docs, "Ingress", "fleetwatch")["spec"]["tls"]
    else:
        (secret,) = secrets
        assert secret["stringData"]["DATABASE_URL"].startswith("postgresql://")


def test_ingest_lock_room_per_replica_stays_that_of_one_default_process(
    rendered: tuple[str, list[Doc]],
) -> None:
    """Each batch in flight holds one advisory lock per execution until it commits: the
    overlays may shape ingest's batches for their replica count, but no replica may ask for
    more of Postgres's shared lock table than one process with the service's defaults, and
    the replicas together stay within the stock table's lower bound (64 locks per
    transaction x 100 connections)."""
    overlay, docs = rendered
    config = one(docs, "ConfigMap", "fleetwatch-config")["data"]
    defaults = IngestSettings.model_fields
    batch = int(config.get("INGEST_BATCH_SIZE", defaults["batch_size"].default))
    in_flight = int(config.get("INGEST_MAX_IN_FLIGHT", defaults["max_in_flight"].default))
    per_replica = batch * in_flight
    assert per_replica <= defaults["batch_size"].default * defaults["max_in_flight"].default
    deployment = one(docs, "Deployment", "fleetwatch-ingest")
    replicas = deployment["spec"]["replicas"]
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    # During a rolling update a replaced pod still writes (preStop, then its drain) while its
    # successor starts, surge or not: one pod more than the replicas, or the surge pods.
    pods = replicas + max(rolling["maxSurge"], 1)
    assert pods * per_replica <= 64 * 100, (overlay, pods, per_replica)
    if replicas == 1:  # a lone process overlaps its own batches, and is never down
        assert in_flight >= 2, overlay
        assert rolling["maxUnavailable"] == 0, overlay


def test_http_services_keep_serving_until_their_service_has_dropped_them(
    rendered: tuple[str, list[Doc]],
) -> None:
    """Kubernetes takes a terminating pod out of its Service while it sends SIGTERM, and the
    proxies learn of it a few seconds later: a pod that stopped listening at once would refuse
    the requests still routed to it. Each HTTP service sleeps in preStop first, and its grace
    period covers that sleep plus its own graceful stop (ingest drains its batches)."""
    _, docs = rendered
    own_stop = {"query": 0, "notifier": 0, "ingest": GRACEFUL_SHUTDOWN_S}
    for name, stop_s in own_stop.items():
        pod = one(docs, "Deployment", f"fleetwatch-{name}")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep", name
        assert int(command[1]) >= 5, name
        assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + stop_s + 5, name
