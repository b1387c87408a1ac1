"""After NATS comes back, a run begun while the client was reconnecting answers terminate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import orjson
import pytest

from shared.publisher import Fleet, InvalidEventError
from shared.subjects import Subjects
from tests.publisher.conftest import OwnNats, make_streams, stream_messages


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def terminate(url: str, subject: str, run_id: str, timeout: float = 10.0) -> Any:
    """Ask for a terminate until someone answers (the client may still be subscribing)."""
    deadline = time.monotonic() + timeout
    nc = await nats.connect(url)
    try:
        while True:
            try:
                reply = await nc.request(
                    subject, orjson.dumps({"execution_id": run_id, "reason": "operator"}), 1
                )
                return orjson.loads(reply.data)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await nc.close()


async def test_run_begun_during_an_outage_answers_terminate_after_reconnect(
    own_nats: OwnNats, subjects: Subjects, org: str, tmp_path: Path
) -> None:
    await make_streams(own_nats.url, subjects)
    fleet = Fleet(
        own_nats.url, org=org, subjects=subjects, spool_dir=tmp_path / "spool", ack_timeout=0.5
    )
    await fleet.start()
    tasks: list[asyncio.Task[None]] = []
    try:
        own_nats.stop()
        await wait_until(lambda: not fleet.connected)
        entered = asyncio.Event()

        async def job(run_id: str) -> None:
            async with fleet.execution("worker", id=run_id):
                entered.set()
                await asyncio.sleep(60)

        tasks.append(asyncio.create_task(job("during-outage")))
        await entered.wait()
        own_nats.start()
        await wait_until(lambda: fleet.connected)

        subject = subjects.terminate(org, "worker")
        reply = await terminate(own_nats.url, subject, "during-outage")
        assert reply == {"accepted": True, "reason": None}
        await asyncio.wait_for(tasks[0], 5)  # the cancellation stops at the `async with`

        # A later run of the same agent is reachable too.
        entered.clear()
        tasks.append(asyncio.create_task(job("after-reconnect")))
        await entered.wait()
        reply = await terminate(own_nats.url, subject, "after-reconnect")
        assert reply == {"accepted": True, "reason": None}
        await asyncio.wait_for(tasks[1], 5)
        assert await fleet.flush(10)
    finally:
        for task in tasks:
            task.cancel()
        await fleet.close()
    nc = await nats.connect(own_nats.url)
    try:
        messages = await stream_messages(nc.jetstream(), subjects.events_stream)
    finally:
        await nc.close()
    last = {m[2]["execution"]["id"]: m[2] for m in messages}
    assert last["during-outage"]["type"] == "execution_cancelled"
    assert last["during-outage"]["execution"]["error"] == "operator"
    assert last["after-reconnect"]["type"] == "execution_cancelled"


async def test_an_agent_name_no_subject_can_hold_never_breaks_connecting(
    own_nats: OwnNats, subjects: Subjects, org: str, tmp_path: Path
) -> None:
    """A refused run of `bad agent` (a space: no subject token) stayed listed for a terminate
    subscription that every (re)connect tried first and failed on: connecting in the
    background then raised after connecting (a new connection leaked every few seconds), and
    the agents listed after it were never subscribed."""
    await make_streams(own_nats.url, subjects)
    own_nats.stop()
    fleet = Fleet(
        own_nats.url, org=org, subjects=subjects, spool_dir=tmp_path / "spool",
        connect_timeout=0.5,
    )  # fmt: skip
    await fleet.start()  # NATS is away: it spools and connects in the background
    tasks: list[asyncio.Task[None]] = []
    try:
        with pytest.raises(InvalidEventError, match="bad agent"):
            async with fleet.execution("bad agent"):
                pass
        entered = asyncio.Event()

        async def job() -> None:
            async with fleet.execution("worker", id="good"):
                entered.set()
                await asyncio.sleep(60)

        tasks.append(asyncio.create_task(job()))
        await entered.wait()
        own_nats.start()
        await wait_until(lambda: fleet.connected)

        reply = await terminate(own_nats.url, subjects.terminate(org, "worker"), "good")
        assert reply == {"accepted": True, "reason": None}
        await asyncio.wait_for(tasks[0], 5)
        await asyncio.sleep(2)  # a background connect that failed would have retried by now
        assert await own_nats.connections() == 1
    finally:
        for task in tasks:
            task.cancel()
        await fleet.close()
