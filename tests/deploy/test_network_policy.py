"""Who may reach the NATS pods, as the rendered NetworkPolicies decide it.

The subject is the tenant boundary only while every connection goes through the client port,
where `authorization.conf` applies. The cluster port takes route connections with no user at
all: a nats-server anyone starts with `--routes nats://fleetwatch-nats-0...:6222` joins the
cluster, and its own unauthenticated clients then read every org's events and publish as any
org. So the cluster port must be open to the NATS pods alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.deploy.test_manifests import Doc, find, one


@dataclass(frozen=True)
class Peer:
    """Where a connection comes from: a pod (labels, namespace) or outside the cluster."""

    labels: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None  # None: not a pod (a node, a load balancer, the internet)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if selector.get("matchExpressions"):
        raise NotImplementedError("matchExpressions")  # not used here; keep the model honest
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(rule_peer: dict[str, Any], peer: Peer, namespace: str) -> bool:
    if "ipBlock" in rule_peer:
        return peer.namespace is None  # cluster pods are outside any ipBlock we would write
    if peer.namespace is None:
        return False
    if "namespaceSelector" in rule_peer:
        # Any namespace selector at all: the test's peers have unlabelled namespaces.
        ns_ok = not rule_peer["namespaceSelector"].get("matchLabels")
    else:
        ns_ok = peer.namespace == namespace
    pod_ok = _selects(rule_peer.get("podSelector", {}), peer.labels)
    return ns_ok and pod_ok


def _port_matches(rule_ports: list[dict[str, Any]] | None, name: str, number: int) -> bool:
    if not rule_ports:
        return True
    return any(p.get("port") in (name, number) for p in rule_ports)


def may_connect(docs: list[Doc], target: Doc, port_name: str, peer: Peer) -> bool:
    """Kubernetes' rule: no Ingress policy selecting the pod allows all; else any rule may."""
    pod = target["spec"]["template"]
    labels = pod["metadata"]["labels"]
    namespace = target["metadata"]["namespace"]
    (port,) = [
        p for c in pod["spec"]["containers"] for p in c["ports"] if p.get("name") == port_name
    ]
    policies = [
        p
        for p in find(docs, "NetworkPolicy")
        if p["metadata"]["namespace"] == namespace
        and _selects(p["spec"]["podSelector"], labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if not _port_matches(rule.get("ports"), port_name, port["containerPort"]):
                continue
            peers = rule.get("from")
            if not peers or any(_peer_matches(p, peer, namespace) for p in peers):
                return True
    return False


@pytest.fixture(scope="module", params=["dev", "production"])
def nats(request: pytest.FixtureRequest) -> tuple[list[Doc], Doc]:
    from tests.deploy.test_manifests import K8S, kustomize

    docs = kustomize(K8S / "overlays" / request.param)
    return docs, one(docs, "StatefulSet", "fleetwatch-nats")


def test_only_nats_nodes_reach_the_cluster_port(nats: tuple[list[Doc], Doc]) -> None:
    docs, server = nats
    namespace = server["metadata"]["namespace"]
    node = Peer(server["spec"]["template"]["metadata"]["labels"], namespace)
    assert may_connect(docs, server, "cluster", node)
    strangers = [
        Peer({"app": "some-agent"}, namespace),
        Peer({"app": "some-agent"}, "agents"),
        Peer({"app.kubernetes.io/name": "fleetwatch-ingest"}, namespace),
        Peer(),
    ]
    assert [p for p in strangers if may_connect(docs, server, "cluster", p)] == []


def test_clients_probes_and_monitoring_still_reach_nats(nats: tuple[list[Doc], Doc]) -> None:
    docs, server = nats
    namespace = server["metadata"]["namespace"]
    # The services, and agents wherever they run: authorization.conf decides on this port.
    for peer in (
        Peer({"app.kubernetes.io/name": "fleetwatch-ingest"}, namespace),
        Peer({"app": "some-agent"}, "agents"),
        Peer(),
    ):
        assert may_connect(docs, server, "client", peer), peer
    # The kubelet's probes come from the node.
    assert may_connect(docs, server, "monitor", Peer())


def test_the_model_reads_a_policy_as_kubernetes_does() -> None:
    server = {
        "metadata": {"namespace": "ns"},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "nats"}},
                "spec": {"containers": [{"ports": [{"name": "cluster", "containerPort": 6222}]}]},
            }
        },
    }
    policy = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "nats"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "ports": [{"port": 6222}],
                    "from": [{"podSelector": {"matchLabels": {"app": "nats"}}}],
                }
            ],
        },
    }
    stranger = Peer({"app": "x"}, "ns")
    assert may_connect([], server, "cluster", stranger)  # no policy: open
    assert not may_connect([policy], server, "cluster", stranger)
    assert may_connect([policy], server, "cluster", Peer({"app": "nats"}, "ns"))
    assert not may_connect([policy], server, "cluster", Peer({"app": "nats"}, "other"))
