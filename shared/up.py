"""`fleetwatch up` (what `make run` runs): the whole stack locally with a demo fleet."""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from shared.arg_types import count, demo_rate
from shared.auth import mint_token
from shared.commands import _migrate
from shared.db import connect
from shared.embedded import (
    Embedded,
    child_setup,
    database_url_or_embedded,
    nats_url_or_embedded,
    port_open,
)
from shared.settings import CommonSettings
from shared.up_options import (
    SERVICES,
    _address,
    _nats_url,
    _notifier_url,
    _port,
)
from shared.urls import redacted

DEMO_ADMIN = "demo-admin"


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


def _wait_ready(name: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _check_stop()
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; see {log}")
        try:
            healthy = httpx.get(f"http://{_address(name)}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            healthy = False
        # The port was free before the child started, so a 200 is its own, unless the child
        # died meanwhile (failing to bind) while something else took the port.
        if healthy and process.poll() is None:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer on {_address(name)} within 60 s; see {log}")


def _port_free(host: str, port: int) -> bool:
    if port_open("127.0.0.1", port, timeout=0.3):
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the services' servers bind: SO_REUSEADDR, so TIME_WAIT does not count as in use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            # Other errors (an address of no interface here) are the service's to report.
            return exc.errno != errno.EADDRINUSE
    return True


def _check_ports() -> None:
    """Every service port free before anything starts: a stale stack on them would answer
    the health checks, and its URL and token would be printed as this one's."""
    seen: dict[int, str] = {}
    for name in SERVICES:
        var = f"{name.upper()}_PORT"
        try:
            port = _port(name)
        except ValueError:
            raise RuntimeError(f"{var}={os.environ.get(var)!r} is not a port number") from None
        if port in seen:
            raise RuntimeError(f"port {port} is given twice ({seen[port]} and {var})")
        seen[port] = var
        if not _port_free(os.environ.get(f"{name.upper()}_HOST", "127.0.0.1"), port):
            raise RuntimeError(
                f"port {port} in use ({var}): stop what listens there (an earlier "
                f"`fleetwatch up`?) or set {var} to a free port"
            )


class _Stop(KeyboardInterrupt):
    """SIGTERM or SIGHUP: the same orderly shutdown as Ctrl-C."""

    def __init__(self, signum: int) -> None:
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)


#: The stop signal received, if any. Its handler raises `_Stop` wherever the main thread is,
#: and Python drops an exception raised inside a weakref callback or a finaliser ("Exception
#: ignored in: ..."): the places `up` waits check this too, so no stop is lost.
_stop_requested: int | None = None


def _raise_stop(signum: int, _frame: object) -> None:
    global _stop_requested
    _stop_requested = signum
    raise _Stop(signum)


def _check_stop() -> None:
    """Raise `_Stop` for a stop signal whose exception was swallowed on its way."""
    if _stop_requested is not None:
        raise _Stop(_stop_requested)


def _while_stopping(_signum: int, _frame: object) -> None:
    print(
        "fleetwatch up: still stopping (services first, then NATS and PostgreSQL)", file=sys.stderr
    )


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _export(name: str, url: str, shown: str) -> str:
    """A line to paste into a shell, with `shown`: the URL without its credentials."""
    line = f"  export {name}={shlex.quote(shown)}"
    if shown != url:
        line += "  # credentials redacted: put yours back in"
    return line


def main(argv: Sequence[str] = ()) -> int:
    # First of all: a SIGTERM (or the terminal's hang-up) at any point of the start must stop
    # what was started so far, not kill `up` and leave services and servers running.
    global _stop_requested
    _stop_requested = None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *_STOP_SIGNALS)}
    for sig in _STOP_SIGNALS:
        if previous[sig] is not signal.SIG_IGN:  # under nohup a hang-up stays ignored
            signal.signal(sig, _raise_stop)
    embedded = Embedded()
    children: dict[str, subprocess.Popen[bytes]] = {}
    code = 0
    try:
        _run(argv, embedded, children)
    except KeyboardInterrupt as exc:
        reason = exc.signame if isinstance(exc, _Stop) else "Ctrl-C"
        print(f"\nfleetwatch up: {reason}: stopping", file=sys.stderr)
    except RuntimeError as exc:
        print(f"fleetwatch up: {exc}", file=sys.stderr)
        code = 1
    finally:
        for sig in previous:
            signal.signal(sig, _while_stopping)
        try:
            _stop_children(children)
            embedded.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return code


def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in children.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in children.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _run(
    argv: Sequence[str], embedded: Embedded, children: dict[str, subprocess.Popen[bytes]]
) -> None:
    parser = argparse.ArgumentParser(
        prog="fleetwatch up", description="run ingest, query, notifier, reconciler and a demo fleet"
    )
    parser.add_argument("--run-dir", default=".run", help="data and logs (default .run)")
    parser.add_argument(
        "--rate", type=demo_rate, default=1.0, help="new demo runs per second (0: history only)"
    )
    parser.add_argument(
        "--backfill", type=count, default=300, help="demo runs published at once as history"
    )
    parser.add_argument("--no-demo", action="store_true", help="start no demo publisher")
    args = parser.parse_args(argv)

    _check_ports()
    run_dir = Path(args.run_dir).resolve()
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = CommonSettings()
    nats_url, nats_source = nats_url_or_embedded(
        _nats_url(settings.nats_url), run_dir, embedded, explicit="NATS_URL" in os.environ
    )
    print(f"NATS:       {redacted(nats_url)}  ({nats_source})")
    sys.stdout.flush()
    database_url, db_source = database_url_or_embedded(
        settings.database_url, run_dir, embedded, explicit="DATABASE_URL" in os.environ
    )
    print(f"PostgreSQL: {redacted(database_url)}  ({db_source})")
    sys.stdout.flush()
    applied = asyncio.run(_migrate(database_url))
    print(f"schema:     {len(applied)} migration(s) applied")
    sys.stdout.flush()
    orgs = _demo_orgs()
    asyncio.run(_seed(database_url, orgs))

    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        # The page asks the query service where the live feed is.
        "QUERY_NOTIFIER_URL": _notifier_url(),
    }
    for name in SERVICES:
        children[name] = _spawn(
            [sys.executable, "-m", "shared.cli", name], env, logs / f"{name}.log"
        )
    for name, process in children.items():
        _wait_ready(name, process, logs / f"{name}.log")
    if not args.no_demo:
        children["demo"] = _spawn(
            [
                *[sys.executable, "-m", "shared.cli", "demo"],
                *["--rate", str(args.rate), "--backfill-runs", str(args.backfill)],
            ],
            env,
            logs / "demo.log",
        )
    _check_stop()  # not "ready" after a stop
    token = mint_token(
        secret=settings.jwt_secret.get_secret_value(),
        org=orgs[0],
        user=DEMO_ADMIN,
        role="admin",
        ttl_s=7 * 86_400,
    )
    query = f"http://{_address('query')}"
    print()
    print(f"Dashboard:  {query}/#token={token}")
    print(f"API:        curl -H 'Authorization: Bearer {token}' {query}/api/executions")
    feed = _notifier_url()
    print(f"Live feed:  {feed}{'&' if '?' in feed else '?'}token=<token>")
    print("Metrics:    " + ", ".join(f"{_address(n)}/metrics" for n in SERVICES))
    print(f"Logs:       {logs}/")
    print("Operator commands (fleetwatch apikey, admin, token, ...) for this stack, in a shell:")
    print(_export("NATS_URL", nats_url, redacted(nats_url)))
    print(_export("DATABASE_URL", database_url, redacted(database_url)))
    print("Stop with Ctrl-C.")
    sys.stdout.flush()
    _supervise(children, logs)


def _spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # A hang-up reaches the services as `up`'s SIGTERM (an orderly drain), and they
            # get SIGTERM too should `up` die without stopping them.
            preexec_fn=child_setup(ignore_hup=True),
        )


def _supervise(children: dict[str, subprocess.Popen[bytes]], logs: Path) -> None:
    while True:
        _check_stop()
        for name, process in children.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} stopped (exit {process.returncode}); see {logs / f'{name}.log'}"
                )
        time.sleep(1)
