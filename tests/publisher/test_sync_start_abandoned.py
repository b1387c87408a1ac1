"""A `SyncFleet.start()` that is abandoned half-way (Ctrl-C in the waiting thread, or
`close()` from another one) must release what the start took: the spool's lock was left
held, so the retry `start()` allows (or a new fleet on the same spool) was refused with
SpoolLockedError, and two threads stopping the loop at once crashed in asyncio's close."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from shared.publisher import FleetClosedError, SyncFleet


class _Interrupted(Exception):
    """What a signal handler raises in the waiting thread, as Ctrl-C's KeyboardInterrupt."""


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts and never speaks NATS: a connect to it waits its timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield f"nats://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


def _interrupt_after(seconds: float) -> None:
    def raise_interrupted(_signum: int, _frame: FrameType | None) -> None:
        raise _Interrupted

    signal.signal(signal.SIGALRM, raise_interrupted)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _start_in_a_thread(fleet: SyncFleet) -> tuple[threading.Thread, list[BaseException]]:
    """`fleet.start()` running in a thread of its own, and the list its error will be in."""
    raised: list[BaseException] = []

    def start() -> None:
        try:
            fleet.start()
        except BaseException as exc:
            raised.append(exc)

    # A daemon: should start() hang again, the test fails; the test process still exits.
    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    return starter, raised


def test_a_start_interrupted_while_it_connects_can_be_retried(
    silent_server: str, nats_url: str, tmp_path: Path
) -> None:
    fleet = SyncFleet(silent_server, org="acme", spool_dir=str(tmp_path), connect_timeout=5.0)
    previous = signal.getsignal(signal.SIGALRM)
    try:
        _interrupt_after(0.3)
        with pytest.raises(_Interrupted):
            fleet.start()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # The same spool, from a fleet that reaches NATS: its lock was released by the start.
    other = SyncFleet(nats_url, org="acme", spool_dir=str(tmp_path))
    other.start()
    other.close()
    fleet.close()


def test_close_from_another_thread_ends_a_start_and_frees_the_spool(
    silent_server: str, nats_url: str, tmp_path: Path
) -> None:
    fleet = SyncFleet(silent_server, org="acme", spool_dir=str(tmp_path), connect_timeout=5.0)
    starter, raised = _start_in_a_thread(fleet)
    try:
        # Its start is under way once the fleet's loop thread runs (no sleep to guess it).
        for _ in range(500):
            if fleet._thread.is_alive():
                break
            threading.Event().wait(0.01)
        fleet.close()
    finally:
        starter.join(10)
    assert not starter.is_alive()
    [error] = raised
    assert isinstance(error, FleetClosedError)
    assert "close() was called while it started" in str(error)
    other = SyncFleet(nats_url, org="acme", spool_dir=str(tmp_path))
    other.start()
    other.close()


def test_close_before_the_start_reaches_the_loop_ends_it(
    silent_server: str, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() between the loop thread's start and the connect being handed to it found no
    start to end and stopped the loop: the connect then never ran, and start() waited for it
    for good (seen in CI as the test above leaving its starter thread alive)."""
    fleet = SyncFleet(silent_server, org="acme", spool_dir=str(tmp_path), connect_timeout=5.0)
    submit = SyncFleet._submit_start

    def close_first(self: SyncFleet) -> Any:
        closer = threading.Thread(target=self.close, daemon=True)
        closer.start()
        closer.join(10)
        assert not closer.is_alive()
        return submit(self)

    monkeypatch.setattr(SyncFleet, "_submit_start", close_first)
    starter, raised = _start_in_a_thread(fleet)
    starter.join(10)
    assert not starter.is_alive(), "start() hung: nothing will ever run its connect"
    [error] = raised
    assert isinstance(error, FleetClosedError)
    assert "close() was called while it started" in str(error)
    assert not fleet._thread.is_alive()
    monkeypatch.undo()
    other = SyncFleet(nats_url, org="acme", spool_dir=str(tmp_path))
    other.start()
    other.close()
