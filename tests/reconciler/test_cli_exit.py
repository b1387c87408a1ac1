"""What `fleetwatch reconcile` tells a script: a pass some engine could not answer is not a
clean pass (exit 1), and a NATS that does not answer is one line, not a traceback."""

from __future__ import annotations

import time

import pytest

from services.reconciler import cli as reconcile_cli
from shared import cli
from tests.procs import free_port


def test_a_pass_an_engine_could_not_answer_exits_1(
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Nothing listens there: the engine's listing fails.
    monkeypatch.setenv("RECONCILER_HTTP_BASE_URL", f"http://127.0.0.1:{free_port()}")
    assert cli.main(["reconcile", "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "listing runs failed" in out  # the report is printed all the same
    assert "1 engine error(s)" in out


def test_fix_with_nats_unreachable_is_one_line_and_exit_1(
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{free_port()}")
    monkeypatch.setenv("RECONCILER_HTTP_BASE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(reconcile_cli, "NATS_CONNECT_TIMEOUT_S", 1.0)
    began = time.monotonic()
    assert cli.main(["reconcile", "--fix"]) == 1
    assert time.monotonic() - began < 10  # not nats-py's 60 attempts, 2 s apart
    err = capsys.readouterr().err
    assert err.startswith("fleetwatch reconcile: ConnectionError: NATS at nats://127.0.0.1:"), err
    assert err.count("\n") == 1
