"""No loss when NATS goes away: spooled while down, re-sent in order, once, when it returns."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from shared.publisher import Fleet, SpoolFullError
from shared.subjects import Subjects
from tests.procs import free_port
from tests.publisher.conftest import (
    OwnNats,
    make_streams,
    stream_messages,
    wait_for_count,
)

REPO = Path(__file__).resolve().parents[2]


async def test_stop_and_restart_nats_mid_run_loses_nothing(
    own_nats: OwnNats, subjects: Subjects, tmp_path: Path, org: str
) -> None:
    await make_streams(own_nats.url, subjects)
    fleet = Fleet(
        own_nats.url, org=org, subjects=subjects, spool_dir=tmp_path / "spool", ack_timeout=0.5
    )
    await fleet.start()
    ids: list[str] = []
    for i in range(60):
        if i == 20:
            own_nats.stop()
        if i == 45:
            own_nats.start()
        async with fleet.execution("steady", message=f"job {i}") as run:
            run.response = "ok"
        ids.append(run.id)
    assert fleet.stats.spooled > 0
    assert await fleet.flush(15)
    await fleet.close()

    nc = await nats.connect(own_nats.url)
    try:
        messages = await wait_for_count(nc.jetstream(), subjects.events_stream, 120)
    finally:
        await nc.close()
    event_ids = [m[2]["event_id"] for m in messages]
    assert len(event_ids) == len(set(event_ids)) == 120
    assert all(m[1]["Nats-Msg-Id"] == f"{m[2]['org']}:{m[2]['event_id']}" for m in messages)
    # Per run, started is stored before completed, and runs keep their order.
    order = [(m[2]["execution"]["id"], m[2]["type"]) for m in messages]
    expected = [(i, t) for i in ids for t in ("execution_started", "execution_completed")]
    assert order == expected


def agent_args(nats: str, subjects: Subjects, org: str, spool: Path) -> list[str]:
    return [
        "-m", "tests.publisher.agent_script", "--nats", nats, "--prefix", subjects.prefix,
        "--org", org, "--spool", str(spool),
    ]  # fmt: skip


async def test_killed_agent_with_a_spool_drains_after_restart(
    nats_url: str, streams: Subjects, tmp_path: Path, org: str
) -> None:
    spool = tmp_path / "spool"
    dead_nats = f"nats://127.0.0.1:{free_port()}"
    first = await asyncio.create_subprocess_exec(
        sys.executable, *agent_args(dead_nats, streams, org, spool), "--runs", "5",
        cwd=REPO, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert first.stdout is not None
    line = await asyncio.wait_for(first.stdout.readline(), 30)
    assert line.strip() == b"spooled=10"
    first.kill()
    await first.wait()

    second = await asyncio.create_subprocess_exec(
        sys.executable, *agent_args(nats_url, streams, org, spool), "--drain",
        cwd=REPO, stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(second.communicate(), 60)
    assert b"drained=True" in out
    nc = await nats.connect(nats_url)
    try:
        messages = await stream_messages(nc.jetstream(), streams.events_stream)
    finally:
        await nc.close()
    assert [(m[2]["execution"]["id"], m[2]["type"]) for m in messages] == [
        (f"run-{i}", t) for i in range(5) for t in ("execution_started", "execution_completed")
    ]
    assert (spool / "events.log").stat().st_size == 0


async def test_spool_overflow_is_reported_never_silent(
    tmp_path: Path, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    dropped: list[str] = []
    fleet = Fleet(
        f"nats://127.0.0.1:{free_port()}", org=org, spool_dir=tmp_path / "spool",
        spool_max_bytes=2000, connect_timeout=0.3,
        on_overflow=lambda event: dropped.append(event.event_id),
    )  # fmt: skip
    await fleet.start()
    try:
        for i in range(20):
            async with fleet.execution("a", id=f"r{i}", message="x" * 100):
                pass
        assert fleet.spool is not None
        assert fleet.stats.spooled == fleet.spool.pending > 0
        assert fleet.stats.dropped == len(dropped) == 40 - fleet.stats.spooled
        assert fleet.spool.pending_bytes <= 2000
        assert any("spool full" in r.message for r in caplog.records if r.levelname == "ERROR")
        fleet.raise_on_overflow = True
        with pytest.raises(SpoolFullError):
            async with fleet.execution("a"):
                pass
    finally:
        await fleet.close(drain_timeout=0)
