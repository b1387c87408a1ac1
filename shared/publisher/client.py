"""`Fleet`: the agent-side connection that publishes events, spools what JetStream did not
acknowledge, and answers terminate commands for the runs it holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from shared.events import MAX_EVENT_BYTES
from shared.nats_keepalive import DEFAULT_PING_INTERVAL_S, NatsKeepalive
from shared.publisher.checks import (
    InvalidEventError,
    check_light,
    check_occurred_at,
    check_payload,
    checked,
    is_permanent,
    settle,
    subject_of,
)
from shared.publisher.envelope import MSG_ID_HEADER, OutgoingEvent, agent_of, dedupe_id, encode
from shared.publisher.run import Run, TerminateCallback, current_run
from shared.publisher.spool import DEFAULT_MAX_BYTES, Spool, SpoolFullError, SpoolRecordError
from shared.publisher.terminate import TerminateResponder
from shared.subjects import Subjects
from shared.urls import redacted
from shared.validation import has_nul

log = logging.getLogger("fleetwatch.publisher")

_PUBLISH_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)
_DRAIN_CHUNK = 200
#: Pause of the drain loop after JetStream stopped acknowledging; after an error it doubles
#: with each error in a row, up to `_DRAIN_BACKOFF_MAX`.
_DRAIN_PAUSE = 0.2
_DRAIN_BACKOFF_MAX = 5.0
#: How long close() waits for its background tasks to end once cancelled: one that does not
#: (a bug) is logged and left, so that close() still disconnects and frees the spool.
_TASK_STOP_S = 5.0


class PublishError(RuntimeError):
    """JetStream did not acknowledge an event and there is no spool to keep it."""


@dataclass(slots=True)
class PublisherStats:
    published: int = 0
    spooled: int = 0
    resent: int = 0
    #: Events accepted (spooled) and then lost: spool full, or refused for good by NATS.
    dropped: int = 0
    #: Of `dropped`, the spooled events NATS refused for good (too big, bad request).
    refused: int = 0


class Fleet:
    """Publish an org's events; `async with Fleet(url, org="acme", spool_dir=...) as fleet`."""

    def __init__(
        self,
        nats_url: str = "nats://127.0.0.1:4222",
        *,
        org: str,
        subjects: Subjects | None = None,
        source: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        spool_fsync: bool = False,
        ack_timeout: float = 2.0,
        on_overflow: Callable[[OutgoingEvent], None] | None = None,
        raise_on_overflow: bool = False,
        unknown_reply_delay: float = 0.5,
        connect_timeout: float = 3.0,
        strict: bool = False,
        ping_interval: int = DEFAULT_PING_INTERVAL_S,
    ) -> None:
        self.nats_url = nats_url
        self.org = org
        self.subjects = subjects or Subjects()
        self._source = source
        self.spool = (
            Spool(spool_dir, max_bytes=spool_max_bytes, fsync=spool_fsync)
            if spool_dir is not None
            else None
        )
        self.ack_timeout = ack_timeout
        self.on_overflow = on_overflow
        self.raise_on_overflow = raise_on_overflow
        self.connect_timeout = connect_timeout
        if (
            isinstance(ping_interval, bool)
            or not isinstance(ping_interval, int)
            or ping_interval < 1
        ):
            raise ValueError(
                f"ping_interval must be a whole number of seconds >= 1, not {ping_interval!r}"
            )
        #: A link cut without a reset is noticed (and reconnected, the spool then re-sent)
        #: after about 4 unanswered PINGs, this many seconds apart (shared/nats_keepalive.py).
        self.keepalive = NatsKeepalive(ping_interval=ping_interval)
        #: Check every event with ingest's whole validator before sending (about 9 µs each);
        #: otherwise only size, NUL and subject (see shared/publisher/checks.py).
        self.strict = strict
        self.stats = PublisherStats()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self.terminate = TerminateResponder(self.subjects, unknown_reply_delay)
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._subject_cache: dict[tuple[str, str, str], str] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> Fleet:
        """Connect; with a spool, an unreachable server is retried in the background."""
        if self.spool is not None:
            self.spool.open()
        try:
            await self._connect()
        except _PUBLISH_ERRORS:
            if self.spool is None:
                raise
            log.warning(
                "NATS at %s unreachable; spooling until it answers", redacted(self.nats_url)
            )
            self._tasks.append(asyncio.create_task(self._connect_forever()))
        if self.spool is not None:
            self._tasks.append(asyncio.create_task(self._drain_forever()))
            self._wake.set()
        return self

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Send what the spool holds (up to `drain_timeout`), then disconnect. The tasks, the
        connection and the spool's lock are released whatever fails (or is cancelled) on the
        way: a lock left held would keep the next process off the spool."""
        async with contextlib.AsyncExitStack() as cleanup:
            # Run last to first: the spool closes after the connection, which closes after
            # the background tasks stopped.
            if self.spool is not None:
                cleanup.callback(self.spool.close)
            cleanup.push_async_callback(self._disconnect)
            cleanup.push_async_callback(self._stop_tasks)
            if self.spool is not None and self.spool.pending and self.connected:
                await self.flush(drain_timeout)

    async def _stop_tasks(self) -> None:
        self._closing = True
        await self.terminate.close()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        done, stuck = await asyncio.wait(tasks, timeout=_TASK_STOP_S)
        for task in stuck:
            log.error("publisher task %s did not stop when cancelled; left", task.get_name())
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("publisher task %s had failed: %r", task.get_name(), task.exception())

    async def _disconnect(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(*_PUBLISH_ERRORS):
                await self._nc.close()

    async def __aenter__(self) -> Fleet:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def source_for(self, agent: str) -> str:
        return self._source or f"agent:{agent}"

    async def _connect(self) -> None:
        # nats-py retries a first connect forever when reconnects are unlimited: bound it.
        connecting = nats.connect(
            self.nats_url,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            ping_interval=self.keepalive.ping_interval,
            max_outstanding_pings=self.keepalive.max_outstanding_pings,
            reconnected_cb=self._on_reconnected,
            disconnected_cb=self._on_disconnected,
            error_cb=self._on_error,
            # Replies (JetStream acks) come under the org's own inbox prefix, so a NATS user
            # limited to its org may read its replies and no one else's (docs/deploy.md).
            inbox_prefix=f"_INBOX.{self.org}",
        )
        async with asyncio.timeout(self.connect_timeout):
            self._nc = await connecting
        self._js = self._nc.jetstream()
        await self.terminate.subscribe_all(self._nc)
        self._wake.set()

    async def _connect_forever(self) -> None:
        delay = 0.2
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except _PUBLISH_ERRORS:
                delay = min(delay * 2, 5.0)
                continue
            log.info("connected to NATS at %s", redacted(self.nats_url))
            return

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS")
        self._wake.set()
        # Runs begun while disconnected have no terminate subscription yet.
        if self._nc is not None:
            with contextlib.suppress(*_PUBLISH_ERRORS):
                await self.terminate.subscribe_all(self._nc)

    async def _on_disconnected(self) -> None:
        if self._closing:  # our own close: nothing for the operator to look into
            log.debug("disconnected from NATS")
            return
        log.warning("disconnected from NATS")

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS client error: %r", exc)

    # -- runs ----------------------------------------------------------------------------------

    def execution(
        self,
        agent: str,
        *,
        message: str | None = None,
        triggered_by: str | None = None,
        id: str | None = None,
        parent: Run | str | None = None,
        org: str | None = None,
        on_terminate: TerminateCallback | None = None,
        **fields: Any,
    ) -> Run:
        """An execution to run as `async with fleet.execution(...) as run:`.

        Inside another run of this task it links to it as parent (and defaults
        `triggered_by` to "agent"); `parent=` sets the parent explicitly.
        """
        enclosing = current_run.get()
        if parent is None and enclosing is not None:
            parent = enclosing
        parent_id = parent.id if isinstance(parent, Run) else parent
        if parent_id is not None and triggered_by is None:
            triggered_by = "agent"
        return Run(
            self,
            org=org or self.org,
            agent=agent,
            id=id,
            message=message,
            triggered_by=triggered_by,
            parent_execution_id=parent_id,
            on_terminate=on_terminate,
            **fields,
        )

    async def _register(self, run: Run) -> None:
        # Disconnected (or dropped mid-subscribe): the next (re)connect subscribes it.
        if self.terminate.track(run) and self._nc is not None and self.connected:
            with contextlib.suppress(*_PUBLISH_ERRORS):
                await self.terminate.subscribe(self._nc, run.org, run.agent)

    def _unregister(self, run: Run) -> None:
        self.terminate.untrack(run)

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, event: dict[str, Any]) -> bool:
        """Publish one envelope; True once JetStream acked it, False if it was spooled.

        Raises InvalidEventError, before anything is sent or spooled, for an event ingest
        would dead-letter (checked as the exact bytes published: its size, NUL, subject and
        `occurred_at`, and with `strict` every rule) or NATS refuses for good.
        """
        # The hot path calls nats-py directly: every layer here costs throughput. An event of a
        # known subject that passes the light check goes straight out; anything else (strict,
        # a new subject, a malformed dict, a refusal to name) takes `prepare`.
        subject: str | None = None
        try:
            if not self.strict:
                key = (event["org"], agent_of(event), event["type"])
                subject = self._subject_cache.get(key)
                raw_id = event["event_id"]
                # Not text: `prepare` refuses it (its dedupe id could hide another event).
                if subject is not None and type(raw_id) is str and raw_id:
                    payload = encode(event)
                else:
                    subject = None
        except (KeyError, ValueError, TypeError):
            subject = None
        if subject is None or len(payload) > MAX_EVENT_BYTES or has_nul(payload):
            out = self.prepare(event)
            subject, event_id, payload = out.subject, out.event_id, out.payload
        else:
            # A hand-built dict's time: ingest dead-letters one it cannot read or out of range.
            check_occurred_at(raw_id, event.get("occurred_at"))
            event_id = dedupe_id(key[0], raw_id)
        js, spool = self._js, self.spool
        if js is None or (spool is not None and (spool.pending or not self.connected)):
            return await self._deliver(OutgoingEvent(subject, event_id, payload))
        try:
            await js.publish(
                subject, payload, timeout=self.ack_timeout, headers={MSG_ID_HEADER: event_id}
            )
        except _PUBLISH_ERRORS as exc:
            return self._not_acked(OutgoingEvent(subject, event_id, payload), exc)
        self.stats.published += 1
        return True

    def prepare(self, event: dict[str, Any]) -> OutgoingEvent:
        """The envelope as it goes on the wire; raises InvalidEventError naming the field
        ingest would refuse (all of ingest's rules with `strict`, else size, NUL, subject)."""
        try:
            key = (event["org"], agent_of(event), event["type"])
            subject = self._subject_cache.get(key)
        except (KeyError, ValueError, TypeError):
            key, subject = None, None
        if subject is None:
            subject = subject_of(self.subjects, event)
            if key is not None:
                if len(self._subject_cache) > 10_000:
                    self._subject_cache.clear()
                self._subject_cache[key] = subject
        return checked(self.subjects, event, subject, strict=self.strict)

    async def send(self, event: OutgoingEvent) -> bool:
        """Publish a ready-made event; True once JetStream acked it, False if it was spooled.
        Raises InvalidEventError as `publish` does."""
        check = check_payload if self.strict else check_light
        check(self.subjects, event.subject, event.event_id, event.payload)
        return await self._deliver(event)

    async def _deliver(self, event: OutgoingEvent) -> bool:
        """`send` for an event already checked (by `publish`)."""
        spool = self.spool
        if spool is not None and (spool.pending or not self.connected):
            self._spool(event)
            return False
        try:
            await self._publish_now(event)
        except _PUBLISH_ERRORS as exc:
            return self._not_acked(event, exc)
        self.stats.published += 1
        return True

    def _not_acked(self, event: OutgoingEvent, exc: BaseException) -> bool:
        if is_permanent(exc):
            # Spooled, it would block the spool's head forever: the caller gets it back.
            raise InvalidEventError(event.event_id, "event", "refused", repr(exc)) from exc
        if self.spool is None:
            raise PublishError(f"event {event.event_id} not acknowledged: {exc!r}") from exc
        self._spool(event)
        return False

    async def _publish_now(self, event: OutgoingEvent) -> None:
        if self._js is None:
            raise nats.errors.ConnectionClosedError
        await self._js.publish(
            event.subject, event.payload, timeout=self.ack_timeout, headers=event.headers
        )

    def _spool(self, event: OutgoingEvent) -> None:
        assert self.spool is not None
        try:
            self.spool.append(event)
        except SpoolFullError:
            log.error("spool full: event %s on %s dropped", event.event_id, event.subject)
            self._dropped(event)
            if self.raise_on_overflow:
                raise
            return
        self.stats.spooled += 1
        self._drained.clear()
        self._wake.set()

    # -- spool draining ------------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until the spool is empty; False if `timeout` passed first."""
        if self.spool is None or not self.spool.pending:
            return True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    async def _drain_forever(self) -> None:
        """Drain whenever woken (or every second) for as long as the fleet is open. Nothing
        may end this loop but `close()`: without it the spool would grow until full and
        `flush()` would wait in vain, so an error is logged and retried after a pause."""
        assert self.spool is not None
        backoff = _DRAIN_PAUSE
        while not self._closing:
            # Not `wait_for`: on Python 3.11 it swallows the cancel of a task whose wait had
            # just ended (the wake set a moment before close()), and the loop ran forever,
            # so close() hung. `timeout` awaits in this task and lets the cancel through.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if not await self._drain_step():
                    await asyncio.sleep(_DRAIN_PAUSE)
            except Exception:
                log.exception("re-sending the spool failed; trying again in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _DRAIN_BACKOFF_MAX)
            else:
                backoff = _DRAIN_PAUSE

    async def _drain_step(self) -> bool:
        """One pass of the drain loop; False when JetStream stopped acknowledging."""
        assert self.spool is not None
        if not self.spool.pending:
            self._drained.set()
            return True
        if not self.connected:
            return True
        return await self._drain_once()

    async def _drain_once(self) -> bool:
        """Re-send the spool head in order; False when JetStream stopped acknowledging."""
        assert self.spool is not None
        while self.spool.pending:
            try:
                batch = self.spool.read(_DRAIN_CHUNK)
            except SpoolRecordError as exc:
                # Nothing can send it (there is no event to give `on_overflow` either).
                log.error("%s; dropped: %r", exc, exc.line[:200])
                self.stats.dropped += 1
                self.spool.commit(exc.end, 1)
                continue
            if not batch:
                return True
            # Pipelined on one connection, so JetStream stores them in spool order; a failure
            # re-sends from the first unacknowledged record and the dedupe id drops repeats.
            results = await asyncio.gather(
                *(self._publish_now(event) for _, event in batch), return_exceptions=True
            )
            settled = settle(results)
            for index in settled.refused:
                # A record NATS never takes would hold the head (and all behind it) forever.
                event = batch[index][1]
                log.error(
                    "event %s on %s dropped from the spool: NATS refuses it for good (%r)",
                    event.event_id, event.subject, results[index],
                )  # fmt: skip
                self.stats.refused += 1
                self._dropped(event)
            if settled.done:
                self.spool.commit(batch[settled.done - 1][0], settled.done)
                self.stats.resent += settled.acked
            if settled.done < len(batch):
                return False
        self._drained.set()
        return True

    def _dropped(self, event: OutgoingEvent) -> None:
        self.stats.dropped += 1
        if self.on_overflow is None:
            return
        # The caller's alerting hook: its failure is logged, never the publisher's. Raised
        # from the drain, it would leave the refused record at the spool's head for good.
        try:
            self.on_overflow(event)
        except Exception:
            log.exception("on_overflow raised for dropped event %s", event.event_id)
