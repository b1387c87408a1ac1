"""Prometheus: promtool checks, rule unit tests, metric names that exist, and a live scrape.

promtool and the prometheus server come from Debian's `prometheus` package (the Makefile's
`system-deps` installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml

from shared.events import Event
from shared.subjects import Subjects
from tests.procs import free_port, running

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "fleetwatch.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "fleetwatch.json"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian package prometheus; make system-deps)")
    return found


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_checks_the_config_with_its_rules(tmp_path: Path) -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    # The compose file mounts the rules at /etc/prometheus/rules; point at the repo's copy so
    # that `check config` checks them as well.
    config["rule_files"] = [str(PROM / "rules" / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = promtool("check", "config", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    groups = yaml.safe_load((PROM / "rules" / "fleetwatch.rules.yml").read_text())["groups"]
    rules = sum(len(group["rules"]) for group in groups)
    assert rules >= 15
    # Every rule of the file was read, none skipped.
    assert f"SUCCESS: {rules} rules found" in done.stdout + done.stderr


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", "tests/fleetwatch.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_and_the_issues_alerts_exist() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = (PROM / "tests" / "fleetwatch.test.yml").read_text()
    assert {a for a in alerts if f"alertname: {a}" not in tests} == set()
    assert {
        "FleetwatchAgentFailureRateHigh",
        "FleetwatchAgentSilent",
        "FleetwatchExecutionsStuck",
        "FleetwatchIngestLag",
        "FleetwatchDeadLettersGrowing",
        "FleetwatchReconcilerMismatches",
        "FleetwatchNotifierSlowClients",
        "FleetwatchCostOverBudget",
    } <= alerts


METRIC_NAME = re.compile(r"\b((?:fleetwatch|notifier|reconciler)_[a-z_]+)\b")
DEFINED = re.compile(r'(?:Counter|Gauge|Histogram|Summary)\(\s*"([a-z_]+)"', re.S)


def defined_metrics() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "services").rglob("*.py"):
        names |= set(DEFINED.findall(path.read_text()))
    return names


def referenced_metrics(text: str) -> set[str]:
    # Recording rules (`fleetwatch:...`) are names of their own, not scraped metrics.
    return {n for n in METRIC_NAME.findall(text) if not n.startswith("fleetwatch_fleet_")} - {
        "fleetwatch_executions_stuck_threshold_seconds"
    }


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_rules_and_dashboard_use_only_metrics_the_services_define() -> None:
    defined = defined_metrics()
    assert "fleetwatch_executions_total" in defined

    def known(name: str) -> bool:
        candidates = {name, name.removesuffix("_total")}
        for suffix in ("_bucket", "_sum", "_count"):
            candidates.add(name.removesuffix(suffix))
        return bool(candidates & defined)

    used = set()
    for expr in rule_exprs() + dashboard_exprs():
        used |= referenced_metrics(expr)
    assert used
    assert sorted(n for n in used if not known(n)) == []


def test_dashboard_is_provisioned_and_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "fleetwatch-overview"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Fleet", "Services"} <= titles
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/fleetwatch.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    assert (
        "./grafana/dashboards:/var/lib/grafana/dashboards:ro"
        in (compose["services"]["grafana"]["volumes"])
    )


# --- a real Prometheus server scraping running services ---------------------------------


@contextlib.contextmanager
def prometheus_server(targets: dict[str, str]) -> Iterator[str]:
    """Debian's prometheus on a free port, scraping `targets` (job -> host:port) every second."""
    binary = tool("prometheus")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fw-prom-") as tmp:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (Path(tmp) / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (Path(tmp) / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp}/prometheus.yml",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            log.close()


async def query(client: httpx.AsyncClient, base: str, promql: str) -> list[dict[str, Any]]:
    response = await client.get(f"{base}/api/v1/query", params={"query": promql})
    body = response.json()
    assert body["status"] == "success", (promql, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def wait_for(
    client: httpx.AsyncClient, base: str, promql: str, want: float, timeout: float = 40
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        # Until the server is ready it answers 503 in plain text.
        with contextlib.suppress(httpx.HTTPError, ValueError):
            result = await query(client, base, promql)
            if result and float(result[0]["value"][1]) == want:
                return result
        await asyncio.sleep(0.5)
    raise AssertionError(f"{promql}: wanted {want}, last result {result}")


async def publish(nats_url: str, subjects: Subjects, events: list[Event]) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for e in events:
            await js.publish(
                subjects.event(e.org, e.agent, e.type),
                e.model_dump_json(exclude_none=True).encode(),
                headers={"Nats-Msg-Id": e.event_id},
            )
    finally:
        await nc.close()


def fleet_events(org: str, runs: int) -> list[Event]:
    now = datetime.now(UTC)
    events = []
    for i in range(runs):
        common = {"id": f"run-{i}", "agent_name": "ruby-agent", "triggered_by": "schedule"}
        events.append(
            Event.model_validate(
                {
                    "type": "execution_started",
                    "event_id": f"s-{i}",
                    "occurred_at": now,
                    "org": org,
                    "execution": {**common, "started_at": now},
                }
            )
        )
        done = "execution_failed" if i % 3 == 0 else "execution_completed"
        events.append(
            Event.model_validate(
                {
                    "type": done,
                    "event_id": f"d-{i}",
                    "occurred_at": now,
                    "org": org,
                    "execution": {**common, "duration_ms": 45_000, "cost": 0.25},
                }
            )
        )
    return events


@contextlib.asynccontextmanager
async def services(env: dict[str, str]) -> AsyncIterator[dict[str, str]]:
    # Ingest's /metrics on a port of its own, as deploy/compose.yaml runs it.
    metrics_port = free_port()
    ingest_env = {"INGEST_METRICS_PORT": str(metrics_port)}
    async with (
        running("ingest", env, extra_env=ingest_env),
        running("query", env) as query_service,
    ):
        yield {
            "fleetwatch-ingest": f"127.0.0.1:{metrics_port}",
            "fleetwatch-query": f"127.0.0.1:{query_service.port}",
        }


@pytest.mark.e2e
async def test_prometheus_scrapes_the_services_and_reads_back_fleet_metrics(
    service_env: dict[str, str], subjects: Subjects, nats_url: str
) -> None:
    org = f"prom-{uuid.uuid4().hex[:8]}"
    async with services(service_env) as targets:
        await publish(nats_url, subjects, fleet_events(org, 6))
        with prometheus_server(targets) as base:
            async with httpx.AsyncClient(timeout=5) as client:
                for job in targets:
                    await wait_for(client, base, f'up{{job="{job}"}}', 1)
                success = await wait_for(
                    client,
                    base,
                    f'sum by (agent, trigger) (fleetwatch_executions_total{{org="{org}",'
                    'status="success"})',
                    4,
                )
                assert success[0]["metric"] == {"agent": "ruby-agent", "trigger": "schedule"}
                await wait_for(
                    client,
                    base,
                    f'sum(fleetwatch_executions_total{{org="{org}",status="failed"}})',
                    2,
                )
                await wait_for(
                    client, base, f'sum(fleetwatch_execution_cost_total{{org="{org}"}})', 1.5
                )
                await wait_for(
                    client,
                    base,
                    f'sum(fleetwatch_execution_duration_seconds_count{{org="{org}"}})',
                    6,
                )
                # The rules loaded and every dashboard expression is valid PromQL here.
                rules = (await client.get(f"{base}/api/v1/rules")).json()["data"]["groups"]
                names = {r["name"] for g in rules for r in g["rules"]}
                assert "FleetwatchAgentFailureRateHigh" in names
                for expr in dashboard_exprs():
                    await query(client, base, expr.replace("$org", ".*"))
