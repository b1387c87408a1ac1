"""The rule unit tests can fail: each property an alert's expression claims is pinned.

A unit test that passes whatever the expression says guards nothing. Each case below breaks
one property of one alert (its minimum of runs, max rather than sum across replicas, its
threshold, the folded "other" agent) and expects `promtool test rules` to fail on it.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "fleetwatch.rules.yml"
TESTS = PROM / "tests" / "fleetwatch.test.yml"

#: (alert, pattern, replacement): a change to the alert's expression its tests must catch.
MUTANTS: list[tuple[str, str, str]] = [
    # Without the minimum of 5 runs, an agent with 1 failure in 2 runs would alert.
    ("FleetwatchAgentFailureRateHigh", r"\s*and\s*sum by \(org, agent\)[^\n]*>= 5\s*$", "\n"),
    ("FleetwatchAgentFailureRateHigh", r">= 5\b", ">= 1"),
    # "other" is many agents folded together, not one that stopped.
    ("FleetwatchAgentSilent", r'\{agent!="other"\}', ""),
    # Every ingest replica reports the one shared consumer's lag.
    ("FleetwatchIngestLag", r"\bmax\(", "sum("),
    ("FleetwatchIngestLag", r"> 1000\b", "> 0"),
    ("FleetwatchDeadLettersGrowing", r"> 10\b", "> 0"),
    ("FleetwatchReconcilerMismatches", r"> 10\b", "> 0"),
    ("FleetwatchNotifierSlowClients", r"> 5\b", "> 0"),
]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package prometheus; make system-deps)")
    return found


def mutated_rules(alert: str, pattern: str, replacement: str) -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    mutated = copy.deepcopy(rules)
    for group in mutated["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                new, count = re.subn(pattern, replacement, rule["expr"])
                assert count == 1, f"{alert}: {pattern!r} no longer matches its expression"
                rule["expr"] = new
                return mutated
    raise AssertionError(f"no alert {alert}")


def run_tests_of(
    alert: str, rules: dict[str, Any], where: Path
) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` with `rules`, on the test groups that check `alert` only."""
    where.mkdir()
    (where / "rules.yml").write_text(yaml.safe_dump(rules))
    tests: dict[str, Any] = yaml.safe_load(TESTS.read_text())
    tests["rule_files"] = ["rules.yml"]
    tests["tests"] = [
        t
        for t in tests["tests"]
        if any(check["alertname"] == alert for check in t.get("alert_rule_test", []))
    ]
    assert tests["tests"], f"no unit test checks {alert}"
    (where / "test.yml").write_text(yaml.safe_dump(tests))
    return subprocess.run(
        [promtool(), "test", "rules", "test.yml"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_rule_unit_tests_catch_a_broken_property_of_each_alert(tmp_path: Path) -> None:
    promtool()
    original: dict[str, Any] = yaml.safe_load(RULES.read_text())
    jobs = [(alert, original, "as written") for alert in {m[0] for m in MUTANTS}]
    jobs += [(alert, mutated_rules(alert, p, r), f"{p!r} -> {r!r}") for alert, p, r in MUTANTS]
    with ThreadPoolExecutor(max_workers=8) as pool:
        done = list(
            pool.map(
                lambda job: run_tests_of(job[0], job[1], tmp_path / f"case{job[3]}"),
                [(*job, i) for i, job in enumerate(jobs)],
            )
        )
    for (alert, _, what), result in zip(jobs, done, strict=True):
        if what == "as written":
            assert result.returncode == 0, (alert, result.stdout + result.stderr)
    survivors = [
        f"{alert}: {what}"
        for (alert, _, what), result in zip(jobs, done, strict=True)
        if what != "as written" and result.returncode == 0
    ]
    assert survivors == []
