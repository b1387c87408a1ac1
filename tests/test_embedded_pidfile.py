"""A stale `postmaster.pid` of the embedded Postgres is dropped even when its pid now belongs
to another postgres (after a restart, the machine's own server may get it); one naming the
server that works in this very directory is kept."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from shared.embedded import _drop_stale_postmaster_pid


def _other_postgres() -> int | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "postgres":
            return int(proc.pid)
    return None


def test_a_pid_file_naming_another_postgres_is_dropped(tmp_path: Path) -> None:
    pid = _other_postgres()
    if pid is None:
        pytest.skip("no postgres process on this machine to borrow a pid from")
    (tmp_path / "postmaster.pid").write_text(f"{pid}\n{tmp_path}\n")
    _drop_stale_postmaster_pid(tmp_path)
    assert not (tmp_path / "postmaster.pid").exists()


def test_a_pid_file_naming_no_process_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "postmaster.pid").write_text("999999999\n")
    _drop_stale_postmaster_pid(tmp_path)
    assert not (tmp_path / "postmaster.pid").exists()


def test_a_pid_file_of_this_directorys_own_server_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its server started on another spelling of the directory (not in its command line):
    stood in for by this process, renamed `postgres` and working in the directory."""
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(psutil.Process, "name", lambda self: "postgres")
    _drop_stale_postmaster_pid(tmp_path)
    assert (tmp_path / "postmaster.pid").exists()
