"""The file spool on its own: order, restart, torn tails, bounds and the lock."""

from __future__ import annotations

import contextlib
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.publisher.envelope import OutgoingEvent
from shared.publisher.spool import Spool, SpoolFullError, SpoolLockedError


def ev(i: int) -> OutgoingEvent:
    return OutgoingEvent("fleet.events.o.a.execution_started", f"id-{i}", b'{"n":%d}' % i)


def test_reads_in_order_and_commits_from_the_head(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    for i in range(5):
        spool.append(ev(i))
    head = spool.read(2)
    assert [e.event_id for _, e in head] == ["id-0", "id-1"]
    spool.commit(head[-1][0], 2)
    assert spool.pending == 3
    assert [e for _, e in spool.read(10)] == [ev(2), ev(3), ev(4)]
    rest = spool.read(10)
    spool.commit(rest[-1][0], 3)
    assert spool.pending == 0
    assert spool.pending_bytes == 0
    assert (tmp_path / "events.log").stat().st_size == 0
    spool.close()


def test_survives_restart_and_drops_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    for i in range(4):
        spool.append(ev(i))
    first = spool.read(1)
    spool.commit(first[0][0], 1)
    spool.close()
    with (tmp_path / "events.log").open("ab") as handle:
        handle.write(b'["fleet.events.o.a.execution_started","id-torn"]\t{"n":')
    again = Spool(tmp_path)
    again.open()
    assert again.pending == 3
    assert [e.event_id for _, e in again.read(10)] == ["id-1", "id-2", "id-3"]
    again.append(ev(9))
    assert [e.event_id for _, e in again.read(10)][-1] == "id-9"
    again.close()


def test_bounded_size_refuses_and_keeps_what_it_has(tmp_path: Path) -> None:
    record = len(b'["fleet.events.o.a.execution_started","id-0"]\t{"n":0}\n')
    spool = Spool(tmp_path, max_bytes=record * 3)
    spool.open()
    for i in range(3):
        spool.append(ev(i))
    with pytest.raises(SpoolFullError, match="id-3"):
        spool.append(ev(3))
    assert spool.pending == 3
    spool.commit(spool.read(1)[0][0], 1)
    spool.append(ev(4))
    assert [e.event_id for _, e in spool.read(10)] == ["id-1", "id-2", "id-4"]
    spool.close()


def test_compacts_the_acknowledged_prefix(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=400)
    spool.open()
    for i in range(12):
        spool.append(ev(i))
        if spool.pending >= 5:
            head = spool.read(4)
            spool.commit(head[-1][0], 4)
    assert (tmp_path / "events.log").stat().st_size <= 800
    left = [e.event_id for _, e in spool.read(100)]
    assert left == [f"id-{i}" for i in range(12)][-len(left) :]
    spool.close()
    reopened = Spool(tmp_path, max_bytes=400)
    reopened.open()
    assert [e.event_id for _, e in reopened.read(100)] == left
    reopened.close()


def test_one_process_per_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.open()
    with pytest.raises(SpoolLockedError):
        Spool(tmp_path).open()
    first.close()
    second = Spool(tmp_path)
    second.open()
    second.close()


@contextlib.contextmanager
def disk_full_past(size: int) -> Iterator[None]:
    """No file of this process grows past `size` bytes (a write across it is cut short,
    the next one fails with EFBIG), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def big(i: int) -> OutgoingEvent:
    return OutgoingEvent("fleet.events.o.a.execution_started", f"id-{i}", b"x" * 1000)


def test_a_failed_append_leaves_nothing_behind(tmp_path: Path) -> None:
    """Part of a record the disk had no room for stayed in the writer's buffer and went out
    later, in front of the next record: that one read back as garbage, and a commit of what
    was read emptied the file, erasing a record whose publish had returned False (spooled)."""
    spool = Spool(tmp_path)
    spool.open()
    spool.append(big(1))
    with disk_full_past(1500), pytest.raises(OSError):
        spool.append(big(2))  # about 400 of its bytes fit
    assert (tmp_path / "events.log").stat().st_size == spool.pending_bytes
    spool.append(big(3))  # room again
    assert spool.pending == 2
    assert spool.pending_bytes == (tmp_path / "events.log").stat().st_size
    batch = spool.read(10)
    assert [e for _, e in batch] == [big(1), big(3)]
    spool.commit(batch[0][0], 1)  # the drain acknowledges the head only
    spool.close()

    again = Spool(tmp_path)
    again.open()
    assert [e for _, e in again.read(10)] == [big(3)]
    again.commit(again.read(10)[-1][0], 1)
    assert (again.pending, (tmp_path / "events.log").stat().st_size) == (0, 0)
    again.close()
