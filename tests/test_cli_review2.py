"""The `fleetwatch` command as an operator meets it, second review: Ctrl-C, settings named
as they are set, NATS that does not answer, errors on stderr."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.test_cli import fleetwatch


def test_ctrl_c_is_one_line_and_exit_130_not_a_traceback() -> None:
    # A database that accepts the connection and never answers: retention waits on it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        port = silent.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "retention", "--dry-run"],
            env={**os.environ, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/x"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Ctrl-C once it waits on the database, not mid-import (an interrupt there can be
        # swallowed as "Exception ignored in ... _ModuleLock" with a traceback).
        silent.settimeout(30)
        try:
            conn, _ = silent.accept()
        except TimeoutError:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"retention never connected to the database: {err}")
        with conn:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "fleetwatch retention: interrupted" in err


@pytest.mark.parametrize(
    ("command", "env", "name"),
    [
        ("ingest", {"INGEST_BATCH_SIZE": "abc"}, "INGEST_BATCH_SIZE"),
        ("query", {"QUERY_PORT": "99999"}, "QUERY_PORT"),
        ("reconciler", {"RECONCILER_HTTP_HEADERS": "not json"}, "RECONCILER_HTTP_HEADERS"),
    ],
)
def test_a_bad_setting_is_named_by_its_environment_variable(
    command: str, env: dict[str, str], name: str
) -> None:
    done = fleetwatch(command, **env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"fleetwatch {command}: invalid setting: {name}:"), done.stderr


async def test_reconcile_fix_with_nats_down_logs_no_tracebacks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from services.reconciler import cli

    monkeypatch.setattr(cli, "NATS_CONNECT_TIMEOUT_S", 1.5)
    with caplog.at_level(logging.DEBUG), pytest.raises(ConnectionError, match="NATS_URL"):
        await cli._connect_nats("nats://127.0.0.1:1")
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if r.exc_info], caplog.text


def test_emit_names_nats_when_it_does_not_answer() -> None:
    done = fleetwatch(
        "emit", "--org", "acme", "--agent", "a", "--type", "execution_started", "--id", "r1",
        NATS_URL="nats://127.0.0.1:1",
    )  # fmt: skip
    assert done.returncode == 1
    assert "NATS at nats://127.0.0.1:1 did not answer" in done.stderr, done.stderr
    assert "NATS_URL" in done.stderr


def test_emit_names_the_ndjson_line_that_is_not_json() -> None:
    done = fleetwatch("emit", "--json", "-", stdin='{"org": "acme"}\nnot json\n')
    assert done.returncode == 2
    assert "line 2 is not JSON" in done.stderr, done.stderr


def test_apikey_errors_go_to_stderr_as_argument_errors() -> None:
    bad = fleetwatch("apikey", "list", "--org", "bad org")
    assert (bad.returncode, bad.stdout) == (2, "")
    assert "argument --org" in bad.stderr
    assert "is no org name" in bad.stderr


async def test_apikey_revoke_of_an_unknown_key_says_so_on_stderr(
    capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    from services.ingest import apikeys

    # A migrated database of the test's own: the server's shared one may hold no tables.
    code = await asyncio.to_thread(
        apikeys.main, ["--database-url", database_url, "revoke", "--org", "acme", "0000dead"]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert "no active key 0000dead in org acme" in err


def test_token_ttl_that_is_no_number_is_named() -> None:
    done = fleetwatch("token", "--org", "acme", "--user", "u", "--role", "user", "--ttl", "abc")
    assert done.returncode == 2
    assert "'abc' is no whole number of seconds" in done.stderr
    assert "_seconds" not in done.stderr


def test_help_describes_every_option() -> None:
    expected = {
        "token": ["FLEETWATCH_JWT_SECRET", "the org the token acts in", "the token's subject"],
        "reconcile": ["only this org's", "only this agent's", "only executions of this engine"],
        "apikey create": ["the org the key belongs to", "a note to tell keys apart"],
    }
    for command, phrases in expected.items():
        done = fleetwatch(*command.split(), "--help")
        assert done.returncode == 0
        text = " ".join(done.stdout.split())
        for phrase in phrases:
            assert phrase in text, f"{command} --help: {phrase!r} missing"


def test_a_silent_database_is_named_and_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import commands

    monkeypatch.setattr(commands, "DB_CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        url = f"postgresql://app:Secret@127.0.0.1:{silent.getsockname()[1]}/fw"
        with pytest.raises(ConnectionError) as caught:
            asyncio.run(commands.connect_database(url))
    message = str(caught.value)
    assert "database at postgresql://app:***@127.0.0.1" in message
    assert "no answer within 0.5 s" in message
    assert "DATABASE_URL" in message


@pytest.mark.parametrize("args", [["migrate"], ["reconcile", "find-running"]])
def test_an_unknown_database_host_names_the_database(args: list[str]) -> None:
    done = fleetwatch(*args, DATABASE_URL="postgresql://postgres@no-such-host.invalid/fw")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "database at postgresql://postgres@no-such-host.invalid/fw unreachable" in (done.stderr)


@pytest.mark.parametrize("service", ["query", "notifier"])
@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_a_port_out_of_range_is_a_usage_error(service: str, port: str) -> None:
    """`fleetwatch query --port 99999` started, and uvicorn bound 99999 mod 65536."""
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", service, "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "--port" in done.stderr


@pytest.mark.parametrize("service", ["ingest", "reconciler"])
def test_a_port_setting_out_of_range_is_named(service: str) -> None:
    """INGEST_PORT / RECONCILER_PORT had no bounds: 99999 reached uvicorn."""
    done = fleetwatch(service, **{f"{service.upper()}_PORT": "99999"})
    assert done.returncode == 1, done.stderr
    assert f"{service.upper()}_PORT" in done.stderr
