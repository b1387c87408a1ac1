"""A bounded, ordered file spool for events JetStream has not acknowledged.

Layout of a spool directory: `events.log` holds one record per line
(`["<subject>","<event_id>"]<TAB><payload>`), appended in publish order; a payload holding a
line break (a ready-made event sent pretty-printed, which ingest takes) is stored as
`["<subject>","<event_id>","b64"]<TAB><base64 of the payload>`, so that it stays one line;
`offset` holds the byte position up to which records are acknowledged; `lock` keeps a second
process out. A record torn by a crash (no trailing newline) is dropped at open: its event was never
reported as spooled, because `append` returns only after the full line is written. A write
that fails (disk full) is cut off at once, so the next record starts where the last good one
ended; nothing is buffered in the process between appends.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

import orjson

from shared.publisher.envelope import OutgoingEvent

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class SpoolError(RuntimeError):
    pass


class SpoolFullError(SpoolError):
    """The spool holds `max_bytes` of unsent events; the event was not stored."""


class SpoolLockedError(SpoolError):
    """Another process holds this spool directory."""


class SpoolRecordError(SpoolError):
    """The record at the spool's head cannot be decoded (written by an older client that
    split a payload's lines into records, or damaged on disk); `end` is the offset just past
    it, to commit it as done: it can never be sent, and left there it would hold the head."""

    def __init__(self, end: int, line: bytes, cause: Exception) -> None:
        super().__init__(f"spool record ending at byte {end} cannot be read: {cause!r}")
        self.end = end
        self.line = line


#: Marks a record whose payload is stored base64-encoded (it holds a line break).
_BASE64 = "b64"


def encode_record(event: OutgoingEvent) -> bytes:
    if b"\n" in event.payload:
        # Written as it is, the payload's line breaks would split it into several records.
        head = orjson.dumps([event.subject, event.event_id, _BASE64])
        return head + b"\t" + base64.b64encode(event.payload) + b"\n"
    return orjson.dumps([event.subject, event.event_id]) + b"\t" + event.payload + b"\n"


def decode_record(line: bytes) -> OutgoingEvent:
    head, _, payload = line.rstrip(b"\n").partition(b"\t")
    subject, event_id, *encoding = orjson.loads(head)
    if encoding == [_BASE64]:
        payload = base64.b64decode(payload, validate=True)
    return OutgoingEvent(subject=str(subject), event_id=str(event_id), payload=payload)


class Spool:
    """Append at the tail, read and commit from the head; survives process restarts."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        fsync: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._lock_file: IO[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._offset = 0
        #: Where the last intact record ends: the file's size, but for a failed write's part
        #: that could not be cut off yet (`_torn`).
        self._size = 0
        self._pending = 0
        self._torn = False

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        lock_file = (self.directory / "lock").open("ab")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise SpoolLockedError(f"spool {self.directory} is used by another process") from None
        self._lock_file = lock_file
        log_path = self.directory / "events.log"
        log_path.touch()
        ends = self._scan(log_path)
        self._size = ends[-1] if ends else 0
        stored = self._read_offset()
        # Negative (a damaged file) it made every read fail (seek), holding the spool for good.
        self._offset = max(0, min(stored, self._size))
        if stored != self._offset:
            # Past the end (a crash between emptying the file and storing offset 0): left
            # there, it would skip the records appended from now on at the next open.
            self._write_offset()
        self._pending = sum(1 for end in ends if end > self._offset)
        self._log = self._open_log()

    def _open_log(self) -> IO[bytes]:
        # Unbuffered: a failed write must leave no part of its record waiting in a buffer,
        # to be written later in front of (or inside) the next record.
        return (self.directory / "events.log").open("ab", buffering=0)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _read_offset(self) -> int:
        try:
            return int((self.directory / "offset").read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    @staticmethod
    def _scan(log_path: Path) -> list[int]:
        """The end offset of each intact record; a torn tail is cut off."""
        ends: list[int] = []
        good_end = 0
        with log_path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                good_end += len(line)
                ends.append(good_end)
        if good_end != log_path.stat().st_size:
            with log_path.open("r+b") as handle:
                handle.truncate(good_end)
        return ends

    # -- state -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records spooled and not yet committed as acknowledged."""
        return self._pending

    @property
    def pending_bytes(self) -> int:
        return self._size - self._offset

    # -- writing -----------------------------------------------------------------------------

    def append(self, event: OutgoingEvent) -> None:
        """Store one event at the tail, or raise `SpoolFullError` leaving the spool unchanged."""
        if self._log is None:
            raise SpoolError("spool is not open")
        record = encode_record(event)
        if self.pending_bytes + len(record) > self.max_bytes:
            raise SpoolFullError(
                f"spool {self.directory} holds {self.pending_bytes} bytes "
                f"(max {self.max_bytes}); event {event.event_id} not stored"
            )
        if self._torn:
            self._cut_torn_tail()
        try:
            self._write_all(record)
            if self.fsync:
                os.fsync(self._log.fileno())
        except OSError:
            # Not stored, so not spooled: no part of it may stay in the file.
            self._torn = True
            with contextlib.suppress(OSError):
                self._cut_torn_tail()
            raise
        self._size += len(record)
        self._pending += 1

    def _write_all(self, record: bytes) -> None:
        """Write the whole record; an unbuffered write may take only part of it."""
        assert self._log is not None
        view = memoryview(record)
        while view:
            written = self._log.write(view)
            view = view[written:]

    def _cut_torn_tail(self) -> None:
        """Drop what a failed append left past the last intact record."""
        assert self._log is not None
        os.ftruncate(self._log.fileno(), self._size)
        self._torn = False

    # -- reading -----------------------------------------------------------------------------

    def read(self, limit: int) -> list[tuple[int, OutgoingEvent]]:
        """Up to `limit` records from the head, each with the offset just past it. They stop
        before a record that cannot be decoded; at the head, that one raises
        `SpoolRecordError`."""
        out: list[tuple[int, OutgoingEvent]] = []
        with (self.directory / "events.log").open("rb") as handle:
            handle.seek(self._offset)
            position = self._offset
            while len(out) < limit and position < self._size:
                line = handle.readline()
                if not line.endswith(b"\n"):
                    break
                try:
                    event = decode_record(line)
                except (ValueError, TypeError) as exc:  # orjson, base64, unpacking
                    if out:
                        break
                    raise SpoolRecordError(position + len(line), line, exc) from exc
                position += len(line)
                out.append((position, event))
        return out

    def commit(self, end: int, count: int) -> None:
        """Mark the `count` records up to byte `end` acknowledged; empty the file when all are
        (judged by the file's real size, so a record written after `end` is never erased)."""
        if self._log is None:
            raise SpoolError("spool is not open")
        self._offset = end
        self._pending = max(0, self._pending - count)
        if self._offset >= self._size and self._file_size() == self._offset:
            # Offset first: a crash between the two re-sends records (deduped), never skips.
            self._offset_write(0)
            self._log.truncate(0)
            self._offset = self._size = self._pending = 0
        elif self._offset > self.max_bytes:
            self._compact()
        self._write_offset()

    def _file_size(self) -> int:
        assert self._log is not None
        return os.fstat(self._log.fileno()).st_size

    def _compact(self) -> None:
        """Drop the acknowledged prefix so the file stays near the bound."""
        assert self._log is not None
        log_path = self.directory / "events.log"
        tmp = self.directory / "events.log.tmp"
        with log_path.open("rb") as src, tmp.open("wb") as dst:
            src.seek(self._offset)
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        self._log.close()
        # Offset first: a crash between the two writes re-sends records (deduped), never skips.
        self._offset_write(0)
        os.replace(tmp, log_path)
        self._size -= self._offset
        self._offset = 0
        self._log = self._open_log()

    def _write_offset(self) -> None:
        self._offset_write(self._offset)

    def _offset_write(self, value: int) -> None:
        tmp = self.directory / "offset.tmp"
        tmp.write_text(str(value))
        os.replace(tmp, self.directory / "offset")
