"""`fleetwatch token` names the argument an operator got wrong, as argparse does for the
others (exit 2), instead of calling it an invalid setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def fleetwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )


@pytest.mark.parametrize("user", ["", "ann\tsmith", "x" * 201])
def test_a_user_no_token_can_name_is_an_argument_error(user: str) -> None:
    done = fleetwatch("token", "--org", "acme", "--user", user, "--role", "user")
    assert done.returncode == 2, done.stderr
    assert "argument --user" in done.stderr
    assert "invalid setting" not in done.stderr
    assert done.stdout == ""


def test_a_good_user_gets_a_token() -> None:
    done = fleetwatch("token", "--org", "acme", "--user", "ann@example.com", "--role", "user")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(".") == 2
