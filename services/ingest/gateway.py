"""HTTP gateway for publishers that cannot speak NATS: `POST /api/events`.

A batch is all or nothing at validation: one bad event refuses the whole request (422 naming
each failing index and field) and nothing of it is published, so a client fixes and resends
the same batch. A valid batch is published to JetStream with each `<org>:<event_id>` as
`Nats-Msg-Id`, and answered 202 only after every event was acknowledged; if JetStream fails
part-way the answer is 503 and resending the whole batch is safe (duplicates are dropped).
An event NATS can never take is not answered 503 ("resend"): one bigger than the server's
max_payload refuses the batch before anything is published (413), and one JetStream refuses
as a bad request (e.g. over the stream's max_msg_size) is listed as `refused` (422, the
others published), so that the client resends only what can succeed.
A key that cannot be checked because the database is unreachable is 503 too, never 500 or 401,
and so is a batch that waited too long for its turn (see `create_gateway_router`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from nats.js import JetStreamContext
from nats.js.api import PubAck

from services.ingest import nats_size
from services.ingest.apikeys import org_for_key
from services.ingest.gateway_batch import Checked, Outgoing, check_batch_in_steps
from services.ingest.gateway_body import (
    FieldError,
    TooManyEventsError,
    TooManyValuesError,
    split_body,
)
from services.ingest.settings import (
    GATEWAY_BODY_BUDGET_MB,
    GATEWAY_CONCURRENCY,
    GATEWAY_WAIT_S,
)
from services.ingest.turns import Admission, FairTurns
from shared.publisher.checks import is_permanent
from shared.publisher.envelope import MSG_ID_HEADER, dedupe_id
from shared.settings import CommonSettings
from shared.subjects import Subjects

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_EVENTS = 1000
#: Field errors listed in a 403 or 422 answer (lowest indexes first); `error_count` has all.
MAX_LISTED_ERRORS = 100
PUBLISH_CHUNK = 256
ACK_TIMEOUT = 5.0
#: A key lookup that has not answered by then (database down or unreachable) is answered 503.
KEY_LOOKUP_TIMEOUT = 5.0
KEY_LOOKUP_RETRY_AFTER = "5"
#: Key lookups run at once: they share the pool of ingest's consumer (INGEST_DB_POOL_SIZE, 4),
#: whose batch writes a flood of made-up keys must not keep waiting for a connection.
KEY_LOOKUPS = 2
BUSY_RETRY_AFTER = "2"
#: A body not received whole by then is answered 408: a slow upload holds its admitted bytes.
BODY_TIMEOUT = 120.0
#: Events checked between two turns of the event loop (~10 ms of the heaviest events).
CHECK_STEP = 16
#: What a key lookup raises when the database, not the key, is the problem.
_DATABASE_DOWN = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One event, a JSON array of events, or NDJSON (one event per line).",
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "object"},
                        {"type": "array", "items": {"type": "object"}},
                    ],
                    "description": "Events as shared/schema/*.schema.json define them.",
                }
            },
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}


_ERRORS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
            "description": f"The first {MAX_LISTED_ERRORS} errors, by index.",
        },
        "error_count": {"type": "integer", "description": "How many errors there are in all."},
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "All events acknowledged by JetStream: `{accepted, duplicates}`."},
    401: {"description": "Missing, malformed, unknown or revoked X-API-Key."},
    408: {"description": "The body did not arrive whole within 120 s; nothing was published."},
    403: {
        "description": "An event names another org; nothing was published.",
        "content": {"application/json": {"schema": _ERRORS_SCHEMA}},
    },
    413: {
        "description": "Body over 8 MiB, more than 1000 events, more than 200,000 arrays and "
        "objects or 1,600,000 values (counted by brackets and commas before parsing), or events "
        "bigger than the NATS server's max_payload (listed like 422's errors); nothing was "
        "published."
    },
    422: {
        "description": "Invalid events (index and field each); the whole batch is refused. Or, "
        "with `refused`, events JetStream refused for good (e.g. over the stream's "
        "max_msg_size) while the others were published: `{refused, refused_count, accepted, "
        "duplicates}`; resending those cannot succeed.",
        "content": {"application/json": {"schema": _ERRORS_SCHEMA}},
    },
    503: {
        "description": "JetStream did not acknowledge every event (`not_acknowledged`; any "
        "refused for good are in `refused`), the key could not be checked (database "
        "unavailable), or the gateway is busy with other batches, or has as many of the org's "
        "bodies (or all orgs') inside as it lets in at once (nothing published); resend "
        "the batch, less `refused`, after `Retry-After`."
    },
}


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _keys_unchecked(exc: BaseException) -> JSONResponse:
    log.warning("API key lookup failed: %r", exc)
    return JSONResponse(
        {"detail": "API keys cannot be checked now (database unavailable); retry"},
        status_code=503,
        headers={"Retry-After": KEY_LOOKUP_RETRY_AFTER},
    )


def _busy() -> JSONResponse:
    return JSONResponse(
        {"detail": "the gateway is busy with other batches; nothing was published, retry"},
        status_code=503,
        headers={"Retry-After": BUSY_RETRY_AFTER},
    )


def _refused(status: int, detail: str, errors: list[FieldError]) -> JSONResponse:
    """A 403 or 422 listing the first errors: a thousand bad events with several bad fields
    each would make an answer of megabytes that no one reads past its first lines."""
    listed = sorted(errors, key=lambda error: error.index)[:MAX_LISTED_ERRORS]
    return _error(status, detail, errors=[e.as_dict() for e in listed], error_count=len(errors))


def _over_max_payload(events: list[Outgoing], max_payload: int) -> list[FieldError]:
    """The events NATS would never take: bigger, with their `Nats-Msg-Id`, than a message."""
    errors = []
    for index, e in enumerate(events):
        size = len(e.payload) + nats_size.headers_size({MSG_ID_HEADER: _msg_id(e)})
        if size > max_payload:
            errors.append(
                FieldError(
                    index,
                    "event",
                    f"{len(e.payload)} bytes: with its headers more than the NATS server "
                    f"takes in one message ({max_payload} bytes)",
                )
            )
    return errors


def _msg_id(e: Outgoing) -> str:
    return dedupe_id(e.event.org, e.event.event_id)


def _declared_size(request: Request) -> int | None:
    """The bytes a request's body may take: its Content-Length, the most a body may be when
    it declares none (or nonsense); None when it declares more than that."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        return MAX_BODY_BYTES
    size = int(declared)
    return None if size > MAX_BODY_BYTES else max(size, 1)


async def _read_limited(request: Request) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _check_body(body: bytes, content_type: str, org: str, subjects: Subjects) -> Checked:
    """Parse and check a whole body, letting the event loop run between slices of events;
    the parse errors come first in `errors`. Raises TooManyEventsError, TooManyValuesError."""
    items, errors = split_body(body, content_type, MAX_EVENTS)
    checked = Checked()
    for checked in check_batch_in_steps(items, org, subjects, CHECK_STEP):  # noqa: B007
        await asyncio.sleep(0)  # the last `checked` is the result
    checked.errors = errors + checked.errors
    return checked


def create_gateway_router(
    settings: CommonSettings,
    get_pool: Callable[[], asyncpg.Pool],
    get_js: Callable[[], JetStreamContext],
    *,
    key_lookup_timeout: float = KEY_LOOKUP_TIMEOUT,
    concurrency: int = GATEWAY_CONCURRENCY,
    wait_s: float = GATEWAY_WAIT_S,
    body_budget: int = GATEWAY_BODY_BUDGET_MB * 1024 * 1024,
    body_timeout: float = BODY_TIMEOUT,
    key_lookups: int = KEY_LOOKUPS,
) -> APIRouter:
    """The `/api/events` route; the ingest app provides the pool and the JetStream context.

    Checking a batch is CPU work (a 1,000-event body of 3.5 MB with nested tool calls takes
    over half a second): it runs in slices of `CHECK_STEP` events, so that the consumer
    sharing this process's event loop keeps going between them (a worker thread would not do:
    it holds the GIL, and the loop would wait for it at every await). At most `concurrency`
    batches are checked and published at once, a freed turn going to the org holding fewest
    (services/ingest/turns.py: one tenant posting in a loop cannot keep the others out); a
    batch that has waited `wait_s` for its turn is answered 503 (busy) rather than queueing
    without bound. Bodies are read before a turn, so the bytes they may hold are budgeted:
    `body_budget` in all, half of it per org, a quarter more for an org with nothing inside
    once it is spent (see `Admission`); a request past it is 503 (busy) at once, its body
    unread: one tenant sending large batches in parallel cannot fill the process's memory,
    and a body still arriving after `body_timeout` is answered 408. At most `key_lookups`
    keys are looked up at once (a wait counts against `key_lookup_timeout`), so requests with
    made-up keys take no more of the consumer's database pool than that.
    """
    router = APIRouter(tags=["gateway"])
    subjects = settings.subjects
    turns = FairTurns(concurrency)
    admission = Admission(body_budget, body_budget // 2, body_budget // 4)

    lookups = asyncio.Semaphore(key_lookups)

    async def lookup_org(key: str) -> str | None:
        async with asyncio.timeout(key_lookup_timeout), lookups:
            return await org_for_key(get_pool(), key)

    async def publish_all(events: list[Outgoing]) -> list[PubAck | BaseException]:
        js = get_js()
        results: list[PubAck | BaseException] = []
        for start in range(0, len(events), PUBLISH_CHUNK):
            chunk = events[start : start + PUBLISH_CHUNK]
            results += await asyncio.gather(
                *(
                    js.publish(
                        e.subject,
                        e.payload,
                        timeout=ACK_TIMEOUT,
                        headers={MSG_ID_HEADER: _msg_id(e)},
                    )
                    for e in chunk
                ),
                return_exceptions=True,
            )
        return results

    @router.post("/api/events", status_code=202, openapi_extra=_BODY_DOC, responses=_RESPONSES)
    async def post_events(
        request: Request,
        x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None,
    ) -> JSONResponse:
        """Publish events for the key's org; answered after JetStream acknowledged them."""
        try:
            org = await lookup_org(x_api_key) if x_api_key else None
        except _DATABASE_DOWN as exc:
            return _keys_unchecked(exc)
        if org is None or x_api_key is None:
            return _error(401, "a valid X-API-Key is required")
        size = _declared_size(request)
        if size is None:
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        if not admission.enter(org, size):
            return _busy()
        try:
            return await read_and_publish(request, org, x_api_key)
        finally:
            admission.leave(org, size)

    async def read_and_publish(request: Request, org: str, key: str) -> JSONResponse:
        try:
            async with asyncio.timeout(body_timeout):
                body = await _read_limited(request)
        except TimeoutError:
            return _error(408, f"the body did not arrive within {body_timeout:g} s")
        if body is None:
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            async with asyncio.timeout(wait_s):
                await turns.acquire(org)
        except TimeoutError:
            return _busy()
        try:
            return await publish_checked(org, key, body, request.headers.get("content-type", ""))
        finally:
            turns.release(org)

    async def publish_checked(org: str, key: str, body: bytes, content_type: str) -> JSONResponse:
        try:
            checked = await _check_body(body, content_type, org, subjects)
        except TooManyEventsError:
            return _error(413, f"more than {MAX_EVENTS} events in one request")
        except TooManyValuesError as exc:
            return _error(413, f"{exc} in one request; nothing was published, split it")
        if checked.foreign:
            return _refused(
                403, "events name another organization; nothing was published", checked.foreign
            )
        if checked.errors:
            return _refused(422, "batch refused; nothing was published", checked.errors)
        outgoing = checked.events
        oversized = _over_max_payload(outgoing, nats_size.max_payload(get_js()))
        if oversized:
            return _refused(413, "events too large for NATS; nothing was published", oversized)
        # Checked again: the body may have taken minutes to arrive and its turn to come, and a
        # revoked key stops working at once (docs/publishing.md).
        try:
            if await lookup_org(key) != org:
                return _error(401, "the X-API-Key was revoked; nothing was published")
        except _DATABASE_DOWN as exc:
            return _keys_unchecked(exc)
        results = await publish_all(outgoing)
        acked = [r for r in results if isinstance(r, PubAck)]
        duplicates = sum(1 for r in acked if r.duplicate)
        failed: list[str] = []
        refused: list[dict[str, Any]] = []
        for index, (o, r) in enumerate(zip(outgoing, results, strict=True)):
            if isinstance(r, PubAck):
                continue
            if is_permanent(r):
                refused.append({"index": index, "event_id": o.event.event_id, "message": str(r)})
            else:
                failed.append(o.event.event_id)
        if refused:
            log.warning("JetStream refused %d events for good: %s", len(refused), refused[0])
        if failed:
            return JSONResponse(
                {
                    "detail": "JetStream did not acknowledge every event; resend the batch "
                    "(events already stored are dropped as duplicates)",
                    "not_acknowledged": failed,
                    **(
                        {"refused": refused[:MAX_LISTED_ERRORS], "refused_count": len(refused)}
                        if refused
                        else {}
                    ),
                },
                status_code=503,
                headers={"Retry-After": "1"},
            )
        if refused:
            return JSONResponse(
                {
                    "detail": "JetStream refused these events for good (resending cannot "
                    "help); the others were published",
                    "refused": refused[:MAX_LISTED_ERRORS],
                    "refused_count": len(refused),
                    "accepted": len(acked),
                    "duplicates": duplicates,
                },
                status_code=422,
            )
        return JSONResponse({"accepted": len(outgoing), "duplicates": duplicates}, status_code=202)

    return router
