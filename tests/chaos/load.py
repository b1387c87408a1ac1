"""A steady publish load with known event ids, and the ledger of what JetStream acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client as NatsClient

from shared.events import Event
from shared.subjects import Subjects
from tests.ingest.events_factory import execution_events, to_wire


def make_events(org: str, count: int, seed: int, agents: int = 5) -> list[Event]:
    """About `count` valid events for executions of `agents` agents, lightly shuffled."""
    rng = random.Random(seed)
    events: list[Event] = []
    index = 0
    while len(events) < count:
        events += execution_events(org, f"agent-{index % agents}", f"x{seed}-{index:05d}", rng)
        index += 1
    # Shuffle within windows: order inside an execution is not guaranteed on the wire.
    window = 40
    for start in range(0, len(events), window):
        part = events[start : start + window]
        rng.shuffle(part)
        events[start : start + window] = part
    return events


@dataclass
class Load:
    """Publishes `events` at `rate` per second, retrying each like a real publisher would
    (same `Nats-Msg-Id`, so JetStream keeps one copy) until acked or `give_up_s` passes."""

    nats_url: str
    subjects: Subjects
    events: list[Event]
    rate: float = 300.0
    give_up_s: float = 60.0
    acked: set[str] = field(default_factory=set)
    given_up: set[str] = field(default_factory=set)
    sent: int = 0
    publish_errors: int = 0
    duplicate_acks: int = 0
    done_at: float | None = None
    _stopped: bool = False
    _send_more: bool = True
    _task: asyncio.Task[None] | None = None
    _nc: NatsClient | None = None

    @property
    def published(self) -> dict[str, Event]:
        return {e.event_id: e for e in self.events[: self.sent]}

    async def start(self) -> None:
        self._nc = await nats.connect(
            self.nats_url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            allow_reconnect=True,
        )
        self._task = asyncio.create_task(self._run())

    async def _one(self, event: Event) -> None:
        assert self._nc is not None
        js = self._nc.jetstream()
        subject = self.subjects.event(event.org, event.agent, event.type)
        deadline = time.monotonic() + self.give_up_s
        delay = 0.05
        while True:
            try:
                ack = await js.publish(
                    subject, to_wire(event), headers={"Nats-Msg-Id": event.event_id}, timeout=2
                )
            except Exception:
                self.publish_errors += 1
                if self._stopped or time.monotonic() > deadline:
                    self.given_up.add(event.event_id)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if ack.duplicate:
                self.duplicate_acks += 1
            self.acked.add(event.event_id)
            return

    async def _run(self) -> None:
        chunk = max(1, int(self.rate / 20))
        started = time.monotonic()
        inflight: set[asyncio.Task[None]] = set()
        while self.sent < len(self.events) and self._send_more and not self._stopped:
            part = self.events[self.sent : self.sent + chunk]
            for ev in part:
                task = asyncio.create_task(self._one(ev))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            self.sent += len(part)
            due = started + self.sent / self.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        if inflight:
            await asyncio.gather(*inflight)
        self.done_at = time.monotonic()

    async def wait_sent(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """Send nothing more; what is sent is still retried until acked (`finish` waits)."""
        self._send_more = False

    async def finish(self, timeout: float = 120) -> None:
        assert self._task is not None
        try:
            await asyncio.wait_for(self._task, timeout)
        finally:
            await self.close()

    async def close(self) -> None:
        self._stopped = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None
