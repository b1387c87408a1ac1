"""A spooled payload that holds line breaks (pretty-printed JSON, valid for ingest) comes
back whole: one record per event, and the drain does not stall on it."""

from __future__ import annotations

import logging
from pathlib import Path

import nats
import orjson
import pytest

from shared.events import EventType
from shared.publisher import Fleet, OutgoingEvent, execution_event
from shared.publisher.envelope import dedupe_id
from shared.publisher.spool import Spool, encode_record
from shared.subjects import Subjects
from tests.procs import free_port
from tests.publisher.conftest import wait_for_count

SUBJECT = "fleet.events.o.a.execution_started"


def pretty(event_id: str) -> bytes:
    return b'{\n  "n": 1,\n  "event_id": "%s"\r\n}\n' % event_id.encode()


def test_payload_with_line_breaks_is_read_back_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    events = [
        OutgoingEvent(SUBJECT, "o:e1", pretty("e1")),
        OutgoingEvent(SUBJECT, "o:e2", b'{"n":2}'),
        OutgoingEvent(SUBJECT, "o:e3", b"\n\n"),
    ]
    for event in events:
        spool.append(event)
    assert spool.pending == 3
    assert [e for _, e in spool.read(10)] == events
    spool.close()

    again = Spool(tmp_path)
    again.open()
    assert again.pending == 3
    head = again.read(10)
    assert [e for _, e in head] == events
    again.commit(head[-1][0], 3)
    assert again.pending == 0
    again.close()


async def test_fleet_spools_and_resends_a_pretty_printed_event(
    nats_url: str, streams: Subjects, tmp_path: Path, org: str
) -> None:
    event = execution_event(
        EventType.EXECUTION_STARTED, org=org, execution={"id": "r1", "agent_name": "a"}
    )
    payload = orjson.dumps(event, option=orjson.OPT_INDENT_2)
    assert b"\n" in payload
    ready = OutgoingEvent(
        streams.event(org, "a", "execution_started"), dedupe_id(org, event["event_id"]), payload
    )
    spool_dir = tmp_path / "spool"
    # Spooled while NATS is unreachable ...
    offline = Fleet(
        f"nats://127.0.0.1:{free_port()}", org=org, subjects=streams, spool_dir=spool_dir,
        connect_timeout=0.3,
    )  # fmt: skip
    await offline.start()
    assert await offline.send(ready) is False
    await offline.close(drain_timeout=0)
    # ... and re-sent, byte for byte, by the next process on the same spool.
    online = Fleet(nats_url, org=org, subjects=streams, spool_dir=spool_dir)
    await online.start()
    try:
        assert await online.flush(10)
    finally:
        await online.close()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        messages = await wait_for_count(js, streams.events_stream, 1, timeout=2)
        assert [m[2]["event_id"] for m in messages] == [event["event_id"]]
        stored = await js.get_msg(streams.events_stream, 1)
        assert stored.data == payload
    finally:
        await nc.close()


async def test_an_unreadable_record_left_by_an_older_client_is_dropped_not_blocking(
    nats_url: str, streams: Subjects, tmp_path: Path, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An older client wrote a pretty-printed payload as it was, so its lines became records
    of their own that no reader can decode; they once held the spool's head for good."""
    spool_dir = tmp_path / "spool"
    subject = streams.event(org, "a", "execution_started")
    good = execution_event(
        EventType.EXECUTION_STARTED, org=org, execution={"id": "after", "agent_name": "a"}
    )
    spool = Spool(spool_dir)
    spool.open()
    spool.close()
    head = orjson.dumps([subject, dedupe_id(org, "old")])
    with (spool_dir / "events.log").open("ab") as log_file:
        log_file.write(head + b'\t{\n  "event_id": "old"\n}\n')
        log_file.write(
            encode_record(
                OutgoingEvent(subject, dedupe_id(org, good["event_id"]), orjson.dumps(good))
            )
        )
    fleet = Fleet(nats_url, org=org, subjects=streams, spool_dir=spool_dir)
    with caplog.at_level(logging.ERROR, "fleetwatch.publisher"):
        async with fleet:
            assert await fleet.flush(10)
            assert fleet.spool is not None
            assert fleet.spool.pending == 0
    assert fleet.stats.dropped == 2
    assert any("cannot be read" in r.message for r in caplog.records)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stored = [await js.get_msg(streams.events_stream, seq) for seq in (1, 2)]
    finally:
        await nc.close()
    # The record's first line was readable (a payload of "{", which ingest dead-letters); the
    # good event behind the unreadable ones arrives.
    assert stored[0].data == b"{"
    assert orjson.loads(stored[1].data or b"")["event_id"] == good["event_id"]


def test_a_stale_offset_past_the_end_never_skips_later_records(tmp_path: Path) -> None:
    """A crash between emptying the file and writing offset 0 left the old offset behind;
    records appended after the restart and not yet sent were skipped at the next open."""
    spool = Spool(tmp_path)
    spool.open()
    spool.close()
    (tmp_path / "offset").write_text("120")
    events = [OutgoingEvent(SUBJECT, f"o:e{i}", b'{"n":%d}' % i) for i in range(5)]
    first = Spool(tmp_path)
    first.open()
    for event in events:
        first.append(event)
    first.close()  # killed before any was sent
    again = Spool(tmp_path)
    again.open()
    assert again.pending == 5
    assert [e for _, e in again.read(10)] == events
    again.close()
