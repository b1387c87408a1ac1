"""The `fleetwatch` command as an operator meets it: a server that does not answer, a bad
setting, bad arguments give one line naming the problem and an exit code, not a traceback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from shared.settings import CommonSettings
from shared.urls import redacted

UNREACHABLE_DB = "postgresql://postgres@127.0.0.1:1/nothing"


def fleetwatch(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["migrate"],
        ["apikey", "list", "--org", "acme"],
        ["retention", "--dry-run"],
        ["admin", "org", "acme"],
    ],
)
def test_a_database_that_does_not_answer_is_one_line_not_a_traceback(args: list[str]) -> None:
    done = fleetwatch(*args, DATABASE_URL=UNREACHABLE_DB)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"fleetwatch {args[0]}: ConnectionError: database at"), (
        done.stderr
    )
    assert "ConnectionRefusedError" in done.stderr
    assert "DATABASE_URL" in done.stderr


@pytest.mark.parametrize("args", [["migrate"], ["retention", "--dry-run"], ["admin", "org", "a"]])
@pytest.mark.parametrize(
    "url", ["postgresql://postgres@127.0.0.1:54 32/x", "postgresql://postgres@127.0.0.1:99999/x"]
)
def test_a_database_url_with_a_bad_port_is_one_line_not_a_traceback(
    args: list[str], url: str
) -> None:
    """asyncpg reads the port with int() and the socket call checks its range: a ValueError
    and an OverflowError went past the operator's one-line errors as a traceback."""
    done = fleetwatch(*args, DATABASE_URL=url)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"fleetwatch {args[0]}: ConnectionError: database URL"), (
        done.stderr
    )
    assert "cannot be read" in done.stderr
    assert "DATABASE_URL" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["user", "--org", "acme", "--user", "", "--role", "user"],
        ["user", "--org", "acme", "--user", "bob\nx", "--role", "user"],
        ["agent", "--org", "acme", "--agent", "bot", "--owner", ""],
        ["agent", "--org", "acme", "--agent", "bot", "--display-name", " "],
        ["share", "--org", "acme", "--agent", "bot", "--user", ""],
        ["share", "--org", "acme", "--agent", "bot", "--user", "x" * 201],
    ],
)
def test_admin_refuses_users_and_names_no_token_or_page_can_carry(args: list[str]) -> None:
    """A share or owner that no token's subject can hold matches nobody, and an empty display
    name the API refuses: each was stored, with success printed and exit 0."""
    done = fleetwatch("admin", *args, DATABASE_URL=UNREACHABLE_DB)
    assert done.returncode == 2, done.stderr  # refused before any database is asked
    assert "Traceback" not in done.stderr
    assert "error: argument --" in done.stderr


def test_admin_unshare_still_removes_a_share_stored_before_ids_were_checked(
    database_url: str,
) -> None:
    import asyncio

    from shared.db import connect

    async def execute(*statements: str) -> list[int]:
        conn = await connect(database_url)
        try:
            for sql in statements:
                await conn.execute(sql)
            return [await conn.fetchval("SELECT count(*) FROM agent_shares")]
        finally:
            await conn.close()

    asyncio.run(
        execute(
            "INSERT INTO organizations (org) VALUES ('acme') ON CONFLICT DO NOTHING",
            "INSERT INTO agents (org, name) VALUES ('acme', 'bot')",
            "INSERT INTO agent_shares (org, agent_name, user_id) VALUES ('acme', 'bot', '')",
        )
    )
    done = fleetwatch(
        "admin",
        "unshare",
        "--org",
        "acme",
        "--agent",
        "bot",
        "--user",
        "",
        DATABASE_URL=database_url,
    )
    assert done.returncode == 0, done.stderr
    assert asyncio.run(execute()) == [0]


@pytest_asyncio.fixture
async def unmigrated_database_url() -> AsyncIterator[str]:
    """A database of this test's own with no fleetwatch tables at all. Copied from template0,
    which takes no connections: a session on template1 failed other workers' CREATE DATABASE
    (it copies template1), and `postgres` is where a `fleetwatch migrate` with the default
    DATABASE_URL goes."""
    from tests.conftest import DATABASE_URL, _create_db, _drop_db, with_database

    name = await _create_db("template0")
    try:
        yield with_database(DATABASE_URL, name)
    finally:
        await _drop_db(name)


def test_an_unmigrated_database_is_named_with_the_way_out(unmigrated_database_url: str) -> None:
    done = fleetwatch("apikey", "list", "--org", "acme", DATABASE_URL=unmigrated_database_url)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "fleetwatch migrate" in done.stderr


def test_log_levels_are_read_in_any_case_and_unknown_ones_refused() -> None:
    assert CommonSettings(log_level="debug").log_level == "DEBUG"
    assert logging.getLevelName(CommonSettings(log_level=" Warning ").log_level) == 30
    done = fleetwatch("migrate", FLEETWATCH_LOG_LEVEL="loud")
    assert done.returncode == 1
    assert "invalid setting: FLEETWATCH_LOG_LEVEL" in done.stderr
    assert "unknown log level 'loud'" in done.stderr


def test_token_refuses_an_org_no_subject_can_hold_and_a_ttl_already_past() -> None:
    bad_org = fleetwatch("token", "--org", "bad org!", "--user", "u", "--role", "admin")
    assert bad_org.returncode == 2
    assert "is no org name" in bad_org.stderr
    past = fleetwatch("token", "--org", "acme", "--user", "u", "--role", "admin", "--ttl", "-5")
    assert past.returncode == 2
    assert "positive number of seconds" in past.stderr


def test_emit_says_what_is_wrong_with_its_input(tmp_path: Path) -> None:
    missing = fleetwatch("emit", "--json", str(tmp_path / "none.json"))
    assert (missing.returncode, "Traceback" in missing.stderr) == (2, False)
    assert "cannot read" in missing.stderr
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    for args, stdin in ((["--json", str(empty)], ""), (["--json", "-"], "\n")):
        done = fleetwatch("emit", *args, stdin=stdin)
        assert done.returncode == 2, done.stderr
        assert "no events in the input" in done.stderr


def test_passwords_in_server_urls_are_never_shown() -> None:
    assert redacted("nats://fw:S3cret@127.0.0.1:4222") == "nats://fw:***@127.0.0.1:4222"
    assert redacted("postgresql://app:pw@db:5432/fw?sslmode=require") == (
        "postgresql://app:***@db:5432/fw?sslmode=require"
    )
    assert redacted("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert redacted("nats://s3cr3ttoken@127.0.0.1:4222") == "nats://***@127.0.0.1:4222"
    assert redacted("postgresql://postgres@db/fw") == "postgresql://postgres@db/fw"
    assert redacted("postgresql://u:p@[::1]:5432/d") == "postgresql://u:***@[::1]:5432/d"


async def test_the_client_logs_no_password_of_its_nats_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from shared.publisher.client import Fleet

    fleet = Fleet("nats://svc:TopSecretPw@127.0.0.1:1", org="acme", spool_dir=tmp_path / "spool")
    with caplog.at_level(logging.INFO, logger="fleetwatch.publisher"):
        await fleet.start()  # spools: the server does not answer
        await fleet.close()
    assert "unreachable" in caplog.text
    assert "TopSecretPw" not in caplog.text


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_output_cut_short_by_its_reader_ends_quietly(unbuffered: str) -> None:
    """`fleetwatch reconcile find-running | head` printed `BrokenPipeError: [Errno 32]` as
    if a server had failed. The reader here is gone before the command writes a byte."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "shared.cli",
                "token",
                "--org",
                "acme",
                "--user",
                "al",
                "--role",
                "admin",
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONUNBUFFERED": unbuffered},
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141


def test_a_crash_is_not_hidden_by_a_closed_pipe() -> None:
    """The quiet end is for the pipe only: a bug's traceback still shows when the output it
    had buffered can no longer be written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    script = (
        "import sys\n"
        "from shared import cli\n"
        "def boom(argv):\n"
        "    print('partial')\n"
        "    raise RuntimeError('a bug')\n"
        "cli.COMMANDS['boom'] = ('x:y', '')\n"
        "cli._load = lambda target: boom\n"
        "sys.exit(cli.main(['boom']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
    finally:
        os.close(write_end)
    assert "RuntimeError: a bug" in done.stderr
    assert done.returncode != 0


def test_a_reconciler_that_could_never_fail_a_row_is_refused_at_start() -> None:
    """Rows lacking a run id are failed only while they started within the listing window
    less 5 minutes: a timeout that leaves no such time would make the setting do nothing."""
    from pydantic import ValidationError

    from services.reconciler.settings import ReconcilerSettings

    assert ReconcilerSettings(fail_missing_external_id=True).lookback_seconds == 3600
    with pytest.raises(ValidationError, match="RECONCILER_LOOKBACK_SECONDS"):
        ReconcilerSettings(fail_missing_external_id=True, missing_external_id_timeout_seconds=3300)
    # Without failing, the same timeout only flags, as before.
    ReconcilerSettings(missing_external_id_timeout_seconds=3300)
    done = fleetwatch(
        "reconciler",
        RECONCILER_FAIL_MISSING_EXTERNAL_ID="true",
        RECONCILER_MISSING_EXTERNAL_ID_TIMEOUT_SECONDS="3600",
    )
    assert done.returncode == 1
    assert done.stderr.startswith(
        "fleetwatch reconciler: invalid setting: RECONCILER_LOOKBACK_SECONDS (3600) must exceed"
    ), done.stderr
    assert "Traceback" not in done.stderr
