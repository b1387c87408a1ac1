"""Write base/prometheusrule.yaml from ../prometheus/rules/fleetwatch.rules.yml (one source).

Run from the repository root: python deploy/k8s/gen_prometheusrule.py
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "prometheus" / "rules" / "fleetwatch.rules.yml"
TARGET = HERE / "base" / "prometheusrule.yaml"
HEADER = (
    "# GENERATED from deploy/prometheus/rules/fleetwatch.rules.yml by\n"
    "# deploy/k8s/gen_prometheusrule.py; tests/deploy checks that the two match.\n"
)


def render() -> str:
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "fleetwatch"},
        "spec": yaml.safe_load(RULES.read_text()),
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=120)


if __name__ == "__main__":
    TARGET.write_text(render())
