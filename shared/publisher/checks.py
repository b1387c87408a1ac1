"""Whether an event can ever be published: ingest's own check on the exact bytes sent, and
which NATS errors say that a message will never be accepted (so it must not be spooled)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from pydantic import TypeAdapter, ValidationError

from shared.events import (
    EARLIEST,
    LATEST,
    MAX_EVENT_BYTES,
    MAX_ID,
    Event,
    EventType,
    Moment,
    is_valid_name,
)
from shared.publisher.envelope import OutgoingEvent, agent_of, dedupe_id, encode, iso
from shared.publisher.errors import InvalidEventError as InvalidEventError  # callers' import
from shared.subjects import SubjectError, Subjects
from shared.validation import NUL_REFUSED, Rejected, has_nul, nul_field, validate


def subject_of(subjects: Subjects, event: dict[str, Any]) -> str:
    """The event's subject, or InvalidEventError naming what cannot stand in it."""
    event_id = str(event.get("event_id"))
    try:
        type_ = EventType(str(event.get("type")))
    except ValueError:
        raise InvalidEventError(
            event_id, "type", "unknown_type", f"{event.get('type')!r} is no event type"
        ) from None
    try:
        agent: Any = agent_of(event)
    except ValueError as exc:
        where = "agent_name" if isinstance(event.get("execution"), dict | None) else "execution"
        raise InvalidEventError(event_id, where, "schema", str(exc)) from None
    for name, value in (("org", event.get("org")), ("agent_name", agent)):
        if not isinstance(value, str) or not is_valid_name(value):
            detail = f"{value!r} must match [A-Za-z0-9_-]{{1,64}}"
            raise InvalidEventError(event_id, name, "bad_subject", detail)
    return subjects.event(str(event["org"]), agent, type_)


def checked(
    subjects: Subjects,
    event: dict[str, Any],
    subject: str | None = None,
    *,
    strict: bool = True,
) -> OutgoingEvent:
    """The envelope as it goes on the wire; raises InvalidEventError naming the field ingest
    would refuse. `strict`: ingest's whole validator on the exact bytes. Otherwise only what
    the subject and the bytes show at once (see `check_light`)."""
    if subject is None:
        subject = subject_of(subjects, event)
    raw_id = event.get("event_id")
    event_id = str(raw_id)
    if not isinstance(raw_id, str) or not raw_id:
        # Sent, it would be dead-lettered, and its dedupe id (`<org>:None`, `<org>:5`) would
        # make JetStream drop every later event with that id (valid ones too) as a repeat.
        detail = f"{raw_id!r}: text of 1 to {MAX_ID} characters required"
        raise InvalidEventError(event_id, "event_id", "schema", detail)
    try:
        payload = encode(event)
    except TypeError as exc:  # orjson.JSONEncodeError: not a JSON value
        raise InvalidEventError(event_id, "event", "not_json", str(exc)) from None
    if strict:
        check_payload(subjects, subject, event_id, payload)
    else:
        check_light(subjects, subject, event_id, payload)
        check_occurred_at(event_id, event.get("occurred_at"))
    return OutgoingEvent(subject, dedupe_id(str(event["org"]), event_id), payload)


_from_iso = datetime.fromisoformat
_MOMENT: TypeAdapter[datetime] = TypeAdapter(Moment)
_EXAMPLE = "e.g. 2026-01-31T12:00:00Z"


def check_occurred_at(event_id: str, value: object) -> None:
    """Raise InvalidEventError naming `occurred_at` unless ingest takes `value` (the
    envelope's `occurred_at` as it stands in the dict) as a time: RFC 3339 with a zone, in
    2000-01-01 to 2199-12-31 UTC. A time the SDK wrote (or any well-formed one) costs a C
    parse and a compare (~0.2 µs); anything else is decided by ingest's own field type, so
    nothing ingest accepts is refused."""
    try:
        if type(value) is str:
            # The extended form only: `fromisoformat` also takes ISO 8601's basic, week and
            # ordinal forms (`20260131T120000Z`), which ingest refuses; those take the exact
            # check. Left through (and dead-lettered): an offset of hours only (`+01`) or with
            # seconds (`+01:00:30`), a space before the zone (`12:00:00 Z`) and a fraction
            # without digits (`12:00:00.Z`).
            if (
                value[4:5] == value[7:8] == "-"
                and value[13:14] == ":"
                and EARLIEST <= _from_iso(value) <= LATEST
            ):
                return
        elif type(value) is datetime and EARLIEST <= value <= LATEST:  # orjson writes it
            return
    except (ValueError, TypeError):  # not a time, or one without a zone (naive)
        pass
    try:
        _MOMENT.validate_json(orjson.dumps(value))
    except ValidationError as exc:
        kind = exc.errors()[0]["type"]
    except TypeError:  # no JSON value: `encode` names it
        return
    else:
        return
    if kind in ("greater_than_equal", "less_than_equal"):
        problem = f"outside the times ingest accepts ({iso(EARLIEST)} to {iso(LATEST)})"
    elif kind == "timezone_aware":
        problem = f"a time without a zone (write Z or an offset, {_EXAMPLE})"
    else:
        problem = f"no RFC 3339 time with a zone ({_EXAMPLE})"
    detail = f"{value!r} is {problem}: the event would be dead-lettered"
    raise InvalidEventError(event_id, "occurred_at", "schema", detail)


def check_light(subjects: Subjects, subject: str, event_id: str, payload: bytes) -> None:
    """The refusals no well-typed caller can rule out, at a fraction of the whole check's
    cost: over ingest's size limit, NUL in a string (text from a model or a tool), or a
    subject that is not an event subject (a ready-made event's, given to `send`). When one
    trips, the whole validator names the field. Wrong types or ranges pass here and are
    dead-lettered by ingest (`Fleet(strict=True)` refuses them at publish time); `checked`
    and `Fleet.publish` also check `occurred_at` (`check_occurred_at`)."""
    try:
        subjects.parse_event(subject)  # cached: a subject the client built costs a look-up
    except SubjectError as exc:
        # Spooled, it would hold the spool's head for good: NATS never takes a subject with
        # a space (nor ingest one of another shape), and all events behind it would wait.
        reason = "unknown_type" if "unknown event type" in str(exc) else "bad_subject"
        raise InvalidEventError(event_id, "subject", reason, str(exc)) from None
    if len(payload) > MAX_EVENT_BYTES or has_nul(payload):
        check_payload(subjects, subject, event_id, payload)


def check_payload(subjects: Subjects, subject: str, event_id: str, payload: bytes) -> None:
    """Raise InvalidEventError unless ingest (`shared.validation.validate`) accepts these
    exact bytes on this subject."""
    verdict = validate(subjects, subject, payload)
    if isinstance(verdict, Rejected):
        where = _field(verdict, payload)
        raise InvalidEventError(event_id, where, verdict.reason, verdict.detail)


def _field(verdict: Rejected, payload: bytes) -> str:
    """Where a refused event is wrong; only computed once it is refused."""
    if verdict.detail == NUL_REFUSED:
        return nul_field(orjson.loads(payload)) or "event"
    if verdict.reason == "tenant_mismatch":
        return "org"
    try:
        Event.model_validate_json(payload)
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["loc"]:
            return ".".join(str(part) for part in errors[0]["loc"])
    return "event"


def is_permanent(exc: BaseException) -> bool:
    """NATS will never take this message: over the server's max_payload, a subject it cannot
    carry (a space, empty), or refused by JetStream as a bad request (e.g. over the stream's
    max_msg_size). Re-sending cannot help."""
    return isinstance(
        exc,
        nats.errors.MaxPayloadError | nats.errors.BadSubjectError | nats.js.errors.BadRequestError,
    )


@dataclass(slots=True)
class Settled:
    """How a pipelined batch of spool records ended, from the head."""

    #: Records from the head that are finished: acknowledged or refused for good.
    done: int = 0
    acked: int = 0
    #: Indexes (within `done`) of records NATS refused for good.
    refused: list[int] = field(default_factory=list)


def settle(results: Sequence[object]) -> Settled:
    """Walk a batch's publish results in order; the first transient failure stops the walk
    (that record and the rest are re-sent later, and the dedupe id drops repeats)."""
    settled = Settled()
    for index, result in enumerate(results):
        if isinstance(result, BaseException):
            if not is_permanent(result):
                break
            settled.refused.append(index)
        else:
            settled.acked += 1
        settled.done += 1
    return settled
