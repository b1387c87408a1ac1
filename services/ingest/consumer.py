"""Take a batch of raw JetStream messages to committed rows: validate, write, dead-letter, ack.

Nothing is acknowledged before its row is committed or its dead letter is stored. While
Postgres is unreachable the batch is retried with backoff (the messages are kept from
redelivery with in-progress signals); a batch Postgres refuses for its content is split in
halves until the one refused message is found and dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError

from services.ingest import nats_size
from services.ingest.acks import ack_all
from services.ingest.batch import Incoming, Outcome, apply_batch
from services.ingest.db_errors import refused_content
from services.ingest.inflight import KeysInFlight
from services.ingest.merge import Finished
from services.ingest.metrics import IngestMetrics
from services.ingest.registry import RegistryCache
from services.ingest.repo import RowsVanished
from shared.events import Event
from shared.subjects import Subjects
from shared.validation import Rejected, validate

log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.QueryCanceledError,
)

_DETAIL_MAX = 900
#: JetStream's "message size exceeds maximum allowed" (a stream's `max_msg_size`).
_JS_MESSAGE_TOO_LARGE = 10054
_HEADER_MARGIN = 64
_V1_TOKENS = 9
_V2_TOKENS = 11


class FleetObserver(Protocol):
    def observe(self, events: Sequence[Event], finished: Sequence[Finished]) -> None: ...


def _stream_seq(msg: Msg) -> int | None:
    """The message's stream sequence, read from its JetStream reply subject.

    `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.…` (9 tokens), or the form with
    domain and account hash in front (11 or more). nats-py's `msg.metadata` parses the same
    but builds a datetime and two dataclasses per message, which shows on the hot path.
    """
    reply = msg.reply
    if not reply or not reply.startswith("$JS.ACK."):
        return None  # not a JetStream message (e.g. a test broker)
    tokens = reply.split(".")
    try:
        if len(tokens) == _V1_TOKENS:
            return int(tokens[5])
        if len(tokens) >= _V2_TOKENS:
            return int(tokens[Msg.Ack.StreamSeq])
    except ValueError:
        pass
    return None


#: A fetched message with what validation made of it.
Checked = tuple[Msg, Incoming | Rejected]


@dataclass(slots=True)
class _Forming:
    """A batch collecting fetched (and already validated) chunks until a slot is free."""

    messages: list[Checked] = field(default_factory=list)
    keepers: list[asyncio.Task[None]] = field(default_factory=list)
    launched: asyncio.Event = field(default_factory=asyncio.Event)


def fit_payload(data: bytes, headers: dict[str, str], max_payload: int) -> bytes:
    """`data` cut, when need be, so that it and `headers` fit one NATS message.

    An agent may publish a body up to the server's limit; its dead letter carries headers too,
    and the server would refuse it (and close the connection) every time it is redelivered.
    A cut body is marked `Fleet-Dlq-Truncated: <original bytes>`; the whole original stays in
    the events stream for its retention, at the sequence the dead letter's id names.
    """
    room = max_payload - nats_size.headers_size(headers) - _HEADER_MARGIN
    if len(data) <= room:
        return data
    headers["Fleet-Dlq-Truncated"] = str(len(data))
    room = max_payload - nats_size.headers_size(headers) - _HEADER_MARGIN
    return data[: max(room, 0)]


def _header_safe(text: str) -> str:
    return " ".join(text.split())[:_DETAIL_MAX]


class BatchConsumer:
    """The ingest handler: one call per batch of messages from the durable consumer."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        subjects: Subjects,
        metrics: IngestMetrics,
        retry_min: float = 0.2,
        retry_max: float = 5.0,
        fleet: FleetObserver | None = None,
        on_applied: Callable[[Outcome], Awaitable[None]] | None = None,
        max_in_flight: int = 2,
        batch_size: int = 500,
        keepalive_interval: float = 3.0,
    ) -> None:
        self._pool = pool
        self._js = js
        self._subjects = subjects
        self._metrics = metrics
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._fleet = fleet
        self._on_applied = on_applied
        self._keepalive_interval = keepalive_interval
        self._registry = RegistryCache()
        self.stopping = asyncio.Event()
        self.parked = asyncio.Event()
        self.release = asyncio.Event()
        # Batches in flight at once: while Postgres commits one, Python validates the next.
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        # Up to `batch_size` messages (from one or more fetches) waiting for a slot.
        self._batch_size = batch_size
        self._forming: _Forming | None = None
        # Executions the batches in flight are writing (see services/ingest/inflight.py).
        self._keys = KeysInFlight()
        #: The DLQ stream's own `max_msg_size`, once a dead letter was refused for its size.
        self._dlq_max_msg: int | None = None

    async def submit(self, messages: Sequence[Msg]) -> None:
        """Take a fetched chunk of messages; return once it is part of a batch (acks come later).

        A chunk joins the batch that is waiting for a slot, if there is one with room: when
        every slot is busy, the small chunks a busy event loop fetches (the pull window is
        wall-clock time, and so shrinks as the loop gets busier) become one full batch rather
        than many small ones, each paying a transaction. With a slot free, a chunk starts at
        once, so a quiet stream gets no added latency. While a full batch waits for a slot,
        this call waits too: that is the back-pressure on fetching.

        While stopping, a chunk is processed before returning, so that the broker's graceful
        stop (which waits for running handlers) also waits for it.
        """
        if self.stopping.is_set():
            await self.finish(messages)
            # Hold the pull loop here until the subscriber has stopped running: a batch it
            # fetched after that point would be dropped unacked by faststream (and come back
            # only after ack_wait), while from here it simply exits its loop.
            self.parked.set()
            await self.release.wait()
            return
        # Validated now, as it arrives: while the batches in flight wait for Postgres, not
        # once this one has a slot (the slot is then Postgres's time and the fold's only).
        checked = self._check(messages)
        # From the moment a chunk is fetched until it is acked, JetStream must not redeliver
        # it: neither while it waits for a slot nor while a slow database writes it (a
        # redelivered copy would take a slot of its own and only be found a duplicate).
        keeper = asyncio.create_task(self._keep_alive_while_working(messages))
        while (
            self._forming is not None
            and len(self._forming.messages) + len(messages) > self._batch_size
        ):
            await self._forming.launched.wait()
        if self._forming is None:
            self._forming = _Forming()
            task = asyncio.create_task(self._launch(self._forming))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        self._forming.messages.extend(checked)
        self._forming.keepers.append(keeper)

    async def finish(self, messages: Sequence[Msg]) -> None:
        """Process messages as one batch now, and return once they are committed and acked."""
        keeper = asyncio.create_task(self._keep_alive_while_working(messages))
        await self._slots.acquire()
        await self._run(self._check(messages), [keeper])

    async def _launch(self, forming: _Forming) -> None:
        await self._slots.acquire()
        # From here on the batch takes no more chunks.
        if self._forming is forming:
            self._forming = None
        forming.launched.set()
        await self._run(forming.messages, forming.keepers)

    async def _run(self, checked: list[Checked], keepers: list[asyncio.Task[None]]) -> None:
        try:
            await self._handle_checked(checked)
        except Exception:
            # Unacked messages are redelivered after ack_wait; nothing is lost.
            log.exception("batch failed; its messages will be redelivered")
        finally:
            for keeper in keepers:
                keeper.cancel()
            self._slots.release()

    async def drain(self) -> None:
        """Wait for the batches in flight to commit and ack (graceful shutdown)."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def handle(self, messages: Sequence[Msg]) -> None:
        """Validate, write, dead-letter and ack `messages` as one batch, now."""
        await self._handle_checked(self._check(messages))

    def _check(self, messages: Sequence[Msg]) -> list[Checked]:
        subjects = self._subjects
        out: list[Checked] = []
        for msg in messages:
            checked = validate(subjects, msg.subject, msg.data)
            if isinstance(checked, Rejected):
                out.append((msg, checked))
            else:
                out.append((msg, Incoming(checked, _stream_seq(msg))))
        return out

    async def _handle_checked(self, checked: list[Checked]) -> None:
        self._metrics.batch_size.observe(len(checked))
        valid: list[tuple[Msg, Incoming]] = []
        dead: list[Msg] = []
        for msg, result in checked:
            if isinstance(result, Rejected):
                if await self._dead_letter_or_hold(msg, result, type_label="invalid"):
                    dead.append(msg)
            else:
                valid.append((msg, result))
        # A stored dead letter is the end of its message: ack it now, not after the batch's
        # commit. A database outage can hold that commit back past JetStream's duplicate
        # window, and a redelivery after it (a restart) would store a second dead letter.
        await ack_all(dead)
        if valid:
            await self._commit_apart_from_in_flight(valid)
            # Not the ones held back (a dead letter that could not be stored: see below).
            await ack_all([msg for msg, _ in valid if not msg.is_acked])

    async def _commit_apart_from_in_flight(self, valid: list[tuple[Msg, Incoming]]) -> None:
        """Commit the executions no other batch in flight is writing now, the others after."""
        keys = [(incoming.event.org, incoming.event.execution_id) for _, incoming in valid]
        free, busy = self._keys.take_free(set(keys))
        try:
            if free:
                now = (
                    valid
                    if not busy
                    else [p for p, k in zip(valid, keys, strict=True) if k in free]
                )
                await self._commit(now)
        finally:
            self._keys.release(free)
        if busy:
            await self._keys.take_when_free(busy)
            try:
                await self._commit([p for p, k in zip(valid, keys, strict=True) if k in busy])
            finally:
                self._keys.release(busy)

    async def _commit(self, batch: list[tuple[Msg, Incoming]]) -> None:
        delay = self._retry_min
        registry_forgotten = False
        while True:
            started = time.perf_counter()
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    outcome = await apply_batch(conn, [item for _, item in batch], self._registry)
            except asyncpg.exceptions.OutOfMemoryError as exc:
                # "out of shared memory": the lock table is full (a batch takes one advisory
                # lock per execution; replicas x max_in_flight x batch_size of them at once).
                # Smaller transactions need fewer locks; a single event waits for room.
                self._metrics.db_errors.labels("transient").inc()
                if len(batch) > 1 and not self.stopping.is_set():
                    log.warning("%s; writing the batch in halves", exc)
                    middle = len(batch) // 2
                    await self._commit(batch[:middle])
                    await self._commit(batch[middle:])
                    return
                if self.stopping.is_set():
                    raise
                log.warning("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            except RowsVanished as exc:
                # Retention deleted rows this batch read (not the database failing): read
                # and write again at once; the rows are new now.
                log.info("%s; writing the batch again", exc)
                continue
            except Exception as exc:
                if isinstance(exc, asyncpg.ForeignKeyViolationError) and not registry_forgotten:
                    # Only the registry tables have foreign keys (to organizations): an org
                    # this process remembers writing was deleted since. Write it again.
                    registry_forgotten = True
                    self._registry.forget()
                    self._metrics.db_errors.labels("transient").inc()
                    log.warning("%s; writing the registry rows again", exc)
                    continue
                if refused_content(exc):
                    self._metrics.db_errors.labels("rejected").inc()
                    await self._bisect(batch, exc)
                    return
                self._metrics.db_errors.labels("transient").inc()
                if self.stopping.is_set():
                    raise
                log.warning("database cannot write now (%s); retrying in %.1fs", exc, delay)
                await self._keep_alive([msg for msg, _ in batch])
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            self._metrics.commit_seconds.observe(time.perf_counter() - started)
            self._registry.remember(outcome.registered)
            await self._after_commit(batch, outcome)
            return

    async def _bisect(self, batch: list[tuple[Msg, Incoming]], exc: Exception) -> None:
        if len(batch) == 1:
            msg, incoming = batch[0]
            log.error("database refused one event; dead-lettering it: %s", exc)
            await self._dead_letter_or_ack(
                msg,
                Rejected("db_rejected", f"{type(exc).__name__}: {exc}"),
                type_label=incoming.event.type,
            )
            return
        middle = len(batch) // 2
        await self._commit(batch[:middle])
        await self._commit(batch[middle:])

    async def _after_commit(self, batch: list[tuple[Msg, Incoming]], outcome: Outcome) -> None:
        m = self._metrics
        # One labels() look-up per type and outcome, not per event: it shows on the hot path.
        # (An EventType is its own text as a label; `.value` is a slow property.)
        counts = Counter((ev.type, "applied") for ev in outcome.applied)
        counts.update((ev.type, "duplicate") for ev in outcome.duplicates)
        for (type_, result), count in counts.items():
            m.events.labels(type_, result).inc(count)
        m.rows_written.labels("executions").inc(outcome.executions_written)
        m.rows_written.labels("component_executions").inc(outcome.components_written)
        for index, rejected in outcome.rejected:
            await self._dead_letter_or_ack(
                batch[index][0], rejected, type_label=batch[index][1].event.type
            )
        if self._fleet is not None and outcome.applied:
            self._fleet.observe(outcome.applied, outcome.finished)
        if self._on_applied is not None:
            await self._on_applied(outcome)

    async def _keep_alive_while_working(self, messages: Sequence[Msg]) -> None:
        while True:
            await asyncio.sleep(self._keepalive_interval)
            await self._keep_alive(messages)

    async def _keep_alive(self, messages: Sequence[Msg]) -> None:
        # Ask JetStream not to redeliver while we wait for the database.
        for msg in messages:
            if msg.is_acked:  # settled already (e.g. held back for redelivery)
                continue
            try:
                await msg.in_progress()
            except Exception:  # a lost connection: redelivery is then harmless (idempotent)
                log.debug("in_progress failed", exc_info=True)

    async def _dead_letter_or_ack(
        self, msg: Msg, rejected: Rejected, type_label: Any = "invalid"
    ) -> None:
        """`_dead_letter_or_hold`, and a stored dead letter's message acked at once, as the
        invalid ones are (`_handle_checked`): the rest of its batch may wait out an outage past
        the DLQ's duplicate window, and a redelivery then would store a second dead letter."""
        if await self._dead_letter_or_hold(msg, rejected, type_label):
            await ack_all([msg])

    async def _dead_letter_or_hold(
        self, msg: Msg, rejected: Rejected, type_label: Any = "invalid"
    ) -> bool:
        """Dead-letter `msg`; if its dead letter cannot be stored (NATS away, the DLQ stream
        missing or refusing it), hold the message back for redelivery instead: it is neither
        acked (which would lose it) nor left to fail its whole batch (which would hold back
        every valid event with it, at every redelivery)."""
        try:
            await self._dead_letter(msg, rejected, type_label)
        except Exception as exc:
            self._metrics.dlq_errors.inc()
            log.warning(
                "dead letter (%s) not stored (%r); the message will be redelivered",
                rejected.reason,
                exc,
            )
            try:
                await msg.nak(delay=self._retry_max)
            except Exception:  # NATS away: it comes back after ack_wait all the same
                log.debug("nak failed", exc_info=True)
            # Settled here either way: never acked by this batch.
            msg._ackd = True
            return False
        return True

    async def _dead_letter(self, msg: Msg, rejected: Rejected, type_label: Any = "invalid") -> None:
        headers = {
            "Fleet-Dlq-Reason": rejected.reason,
            "Fleet-Dlq-Detail": _header_safe(rejected.detail),
            "Fleet-Original-Subject": msg.subject,
        }
        seq = _stream_seq(msg)
        if seq is not None:
            # A redelivered poison message is stored once.
            headers["Nats-Msg-Id"] = f"dlq:{self._subjects.events_stream}:{seq}"
        limit = nats_size.max_payload(self._js)
        if self._dlq_max_msg is not None:
            limit = min(limit, self._dlq_max_msg)
        subject = self._subjects.dlq(rejected.reason)
        try:
            ack = await self._js.publish(
                subject, fit_payload(msg.data, headers, limit), headers=headers
            )
        except APIError as exc:
            if exc.err_code != _JS_MESSAGE_TOO_LARGE:
                raise
            # The DLQ stream has a message size limit of its own (an operator's): cut the
            # body to it, as to the server's, rather than retry the same refusal for good.
            info = await self._js.stream_info(self._subjects.dlq_stream)
            if not info.config.max_msg_size or info.config.max_msg_size <= 0:
                raise
            self._dlq_max_msg = info.config.max_msg_size
            headers.pop("Fleet-Dlq-Truncated", None)
            data = fit_payload(msg.data, headers, min(limit, self._dlq_max_msg))
            ack = await self._js.publish(subject, data, headers=headers)
        label = str(getattr(type_label, "value", type_label))
        if ack.duplicate:
            # A redelivery of a message already dead-lettered: JetStream kept the first copy.
            self._metrics.events.labels(label, "duplicate").inc()
            return
        self._metrics.dead_letters.labels(rejected.reason).inc()
        self._metrics.events.labels(label, "dead_lettered").inc()
