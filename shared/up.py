"""`fleetwatch up` (what `make run` runs): the whole stack locally with a demo fleet."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from shared.auth import mint_token
from shared.commands import _migrate
from shared.db import connect
from shared.embedded import Embedded, database_url_or_embedded, nats_url_or_embedded
from shared.settings import CommonSettings

SERVICES: dict[str, int] = {"ingest": 8002, "query": 8000, "notifier": 8001, "reconciler": 8003}
DEMO_ADMIN = "demo-admin"


def _port(name: str) -> int:
    return int(os.environ.get(f"{name.upper()}_PORT", SERVICES[name]))


def _demo_orgs() -> list[str]:
    try:
        demo = importlib.import_module("shared.publisher.demo")
    except ImportError:
        return ["acme"]
    orgs = getattr(demo, "DEMO_ORGS", None) or ["acme"]
    return list(orgs)


async def _seed(database_url: str, orgs: list[str]) -> None:
    """An admin user in each demo org, so the printed token has someone behind it."""
    conn = await connect(database_url)
    try:
        for org in orgs:
            await conn.execute(
                "INSERT INTO organizations (org) VALUES ($1) ON CONFLICT DO NOTHING", org
            )
            await conn.execute(
                "INSERT INTO users (org, user_id, role, display_name) VALUES ($1, $2, 'admin', "
                "'Demo admin') ON CONFLICT DO NOTHING",
                org,
                DEMO_ADMIN,
            )
    finally:
        await conn.close()


def _wait_ready(name: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer on port {port} within 60 s; see {log}")


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(
        prog="fleetwatch up", description="run ingest, query, notifier, reconciler and a demo fleet"
    )
    parser.add_argument("--run-dir", default=".run", help="data and logs (default .run)")
    parser.add_argument("--rate", type=float, default=1.0, help="new demo runs per second")
    parser.add_argument(
        "--backfill", type=int, default=300, help="demo runs published at once as history"
    )
    parser.add_argument("--no-demo", action="store_true", help="start no demo publisher")
    args = parser.parse_args(argv)

    run_dir = Path(args.run_dir).resolve()
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = CommonSettings()
    embedded = Embedded()
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        nats_url, nats_source = nats_url_or_embedded(settings.nats_url, run_dir, embedded)
        database_url, db_source = database_url_or_embedded(
            settings.database_url, run_dir, embedded, explicit="DATABASE_URL" in os.environ
        )
        print(f"NATS:       {nats_url}  ({nats_source})")
        print(f"PostgreSQL: {database_url}  ({db_source})")
        applied = asyncio.run(_migrate(database_url))
        print(f"schema:     {len(applied)} migration(s) applied")
        orgs = _demo_orgs()
        asyncio.run(_seed(database_url, orgs))

        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "DATABASE_URL": database_url,
            # The page asks the query service where the live feed is.
            "QUERY_NOTIFIER_URL": f"ws://127.0.0.1:{_port('notifier')}/ws",
        }
        for name in SERVICES:
            log = logs / f"{name}.log"
            children[name] = subprocess.Popen(
                [sys.executable, "-m", "shared.cli", name],
                env=env,
                stdout=log.open("ab"),
                stderr=subprocess.STDOUT,
            )
        for name, process in children.items():
            _wait_ready(name, _port(name), process, logs / f"{name}.log")
        if not args.no_demo:
            log = logs / "demo.log"
            children["demo"] = subprocess.Popen(
                [
                    *[sys.executable, "-m", "shared.cli", "demo"],
                    *["--rate", str(args.rate), "--backfill-runs", str(args.backfill)],
                ],
                env=env,
                stdout=log.open("ab"),
                stderr=subprocess.STDOUT,
            )
        token = mint_token(
            secret=settings.jwt_secret.get_secret_value(),
            org=orgs[0],
            user=DEMO_ADMIN,
            role="admin",
            ttl_s=7 * 86_400,
        )
        query = f"http://127.0.0.1:{_port('query')}"
        print()
        print(f"Dashboard:  {query}/#token={token}")
        print(f"API:        curl -H 'Authorization: Bearer {token}' {query}/api/executions")
        print(f"Live feed:  ws://127.0.0.1:{_port('notifier')}/ws?token=<token>")
        print("Metrics:    " + ", ".join(f"127.0.0.1:{_port(n)}/metrics" for n in SERVICES))
        print(f"Logs:       {logs}/")
        print("Stop with Ctrl-C.")
        sys.stdout.flush()
        _supervise(children)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"fleetwatch up: {exc}", file=sys.stderr)
        return 1
    finally:
        for process in children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in children.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        embedded.stop()
    return 0


def _supervise(children: dict[str, subprocess.Popen[bytes]]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    while True:
        for name, process in children.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} stopped (exit {process.returncode}); see .run/logs")
        time.sleep(1)
