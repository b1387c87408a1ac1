"""`fleetwatch up`, third review: what it hands the services and what it refuses.

The tests run `up` in this process with its process start replaced: each would-be service
is a `sleep` recorded with the environment it was given, so what `up` checked, printed and
passed on is seen without starting the stack.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from shared import up as up_module
from shared import up_options
from shared.embedded import Embedded
from tests.procs import free_port

pytestmark = pytest.mark.e2e


class _Started(Exception):
    """Raised where `up` would supervise its services: everything was started."""


class _Began(Exception):
    """Raised by the port check, the first thing `up` does after reading its arguments."""


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[str, str]]]:
    """The environment `up` gave each process it started, by the process's last argument."""
    found: dict[str, dict[str, str]] = {}
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(command: list[str], env: dict[str, str], _log: Path) -> subprocess.Popen[bytes]:
        found[command[-1]] = env
        processes.append(subprocess.Popen(["sleep", "60"]))
        return processes[-1]

    def supervise(*_: object) -> None:
        raise _Started

    monkeypatch.setattr(up_module, "_spawn", spawn)
    monkeypatch.setattr(up_module, "_wait_ready", lambda *_: None)
    monkeypatch.setattr(up_module, "_supervise", supervise)
    for name in up_options.SERVICES:
        monkeypatch.setenv(f"{name.upper()}_PORT", str(free_port()))
        monkeypatch.delenv(f"{name.upper()}_HOST", raising=False)
    monkeypatch.delenv("QUERY_NOTIFIER_URL", raising=False)
    try:
        yield found
    finally:
        for process in processes:
            process.kill()
            process.wait()


def _up(tmp_path: Path) -> None:
    """`up` in this process, to where it would supervise the (recorded) services."""
    embedded = Embedded()
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with pytest.raises(_Started):
            up_module._run(["--run-dir", str(tmp_path / "run"), "--no-demo"], embedded, children)
    finally:
        up_module._stop_children(children)
        embedded.stop()


def _export(stdout: str, name: str) -> str:
    [line] = [line for line in stdout.splitlines() if line.startswith(f"  export {name}=")]
    return shlex.split(line.split("=", 1)[1])[0]


def test_a_notifier_url_the_user_set_is_passed_on(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    spawned: dict[str, dict[str, str]],
    nats_url: str,
    database_url: str,
) -> None:
    """Behind a proxy the page must reach the live feed at the public wss:// URL the user
    set; `up` replaced it with the notifier's own ws://host:port/ws."""
    monkeypatch.setenv("NATS_URL", nats_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("QUERY_NOTIFIER_URL", "wss://fleet.example.com/live/ws")

    _up(tmp_path)

    assert spawned["query"]["QUERY_NOTIFIER_URL"] == "wss://fleet.example.com/live/ws"
    # ... and that is the live feed it tells the user about (it named the local notifier).
    printed = capsys.readouterr().out
    assert "Live feed:  wss://fleet.example.com/live/ws?token=<token>" in printed


@pytest.mark.parametrize("given", [None, "", "  "])
def test_without_a_notifier_url_up_names_its_notifier(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spawned: dict[str, dict[str, str]],
    nats_url: str,
    database_url: str,
    given: str | None,
) -> None:
    """Unset (or empty, as templates write "not set"), the page gets the notifier `up` runs."""
    monkeypatch.setenv("NATS_URL", nats_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    if given is not None:
        monkeypatch.setenv("QUERY_NOTIFIER_URL", given)

    _up(tmp_path)

    port = up_options._port("notifier")
    assert spawned["query"]["QUERY_NOTIFIER_URL"] == f"ws://127.0.0.1:{port}/ws"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--rate", "inf"),
        ("--rate", "-inf"),
        ("--rate", "nan"),
        ("--rate", "-1"),
        ("--rate", "1e300"),
        ("--rate", "1e999"),
        ("--rate", "fast"),
        ("--backfill", "-1"),
        ("--backfill", "many"),
    ],
)
def test_refuses_an_unusable_number_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    """`--rate inf` (or nan, negative, absurdly high) and a negative `--backfill` were taken:
    the stack started and the demo then misbehaved or died. They are usage errors (exit 2)."""

    def began() -> None:
        raise _Began

    monkeypatch.setattr(up_module, "_check_ports", began)

    with pytest.raises(SystemExit) as refused:
        up_module.main(["--no-demo", f"{option}={value}"])

    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}:" in error, error
    assert value in error, error


@pytest.mark.parametrize(
    "argv",
    [
        ["--rate", "0"],
        ["--rate", "0.01"],
        ["--rate", "250"],
        ["--backfill", "0"],
        ["--backfill", "5"],
    ],
)
def test_takes_usable_numbers(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    def began() -> None:
        raise _Began

    monkeypatch.setattr(up_module, "_check_ports", began)

    with pytest.raises(_Began):
        up_module.main(argv)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("localhost:4333", "nats://localhost:4333"),
        ("nats-host", "nats://nats-host"),
        ("[::1]:4222", "nats://[::1]:4222"),
        ("fw:pw@nats-host:4222", "nats://fw:pw@nats-host:4222"),
        ("nats://nats-host:4222", "nats://nats-host:4222"),
        ("tls://nats-host:4222", "tls://nats-host:4222"),
        ("ws://nats-host:8080", "ws://nats-host:8080"),
    ],
)
def test_a_nats_url_without_a_scheme_is_read_as_nats_py_reads_it(given: str, expected: str) -> None:
    assert up_options._nats_url(given) == expected


def test_a_nats_url_without_a_scheme_naming_no_server_falls_back_to_an_embedded_one(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    spawned: dict[str, dict[str, str]],
    database_url: str,
) -> None:
    """`NATS_URL=127.0.0.1:<port>` was checked on 127.0.0.1:4222 (urlsplit finds no host
    in it), so with a NATS there `up` failed with "answered but the connection failed"."""
    port = free_port()
    monkeypatch.setenv("NATS_URL", f"127.0.0.1:{port}")
    monkeypatch.setenv("DATABASE_URL", database_url)

    _up(tmp_path)

    stdout = capsys.readouterr().out
    assert f"NATS_URL nats://127.0.0.1:{port} did not answer" in stdout, stdout
    embedded = _export(stdout, "NATS_URL")
    assert embedded.startswith("nats://127.0.0.1:")
    assert embedded != f"nats://127.0.0.1:{port}"
    assert {env["NATS_URL"] for env in spawned.values()} == {embedded}


@pytest.mark.parametrize("credentials", ["", "fw:NatsS3cret@"])
def test_a_nats_url_without_a_scheme_is_used_as_nats_everywhere(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    spawned: dict[str, dict[str, str]],
    nats_url: str,
    database_url: str,
    credentials: str,
) -> None:
    """`host:port` (nats-py and the nats CLI take it) named the same server in the check, in
    the services' environment and in the export line, and a password in it stays hidden:
    read as scheme `host` (or `user`), it was printed verbatim, password included."""
    server = urlsplit(nats_url)
    assert server.hostname is not None
    given = f"{credentials}{server.hostname}:{server.port or 4222}"
    monkeypatch.setenv("NATS_URL", given)
    monkeypatch.setenv("DATABASE_URL", database_url)

    _up(tmp_path)

    out = capsys.readouterr()
    assert {env["NATS_URL"] for env in spawned.values()} == {f"nats://{given}"}
    shown = given.replace("NatsS3cret", "***")
    assert f"NATS:       nats://{shown}  (configured)" in out.out, out.out
    assert _export(out.out, "NATS_URL") == f"nats://{shown}"
    assert "NatsS3cret" not in out.out + out.err
