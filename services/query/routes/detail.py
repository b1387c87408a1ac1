"""One execution: detail with its steps and children, its log, and the terminate command.

An execution id may hold any character, `/` included (`wf/run-1`), so it travels as one
percent-encoded path segment (`wf%2Frun-1`) and these routes match on the path as sent.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import nats.errors
import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse
from pydantic import Field

from services.query import repo
from services.query.body import BodyModel, json_body, openapi_body
from services.query.deps import Caller, CallerDep, Ctx, LightCallerDep
from services.query.routes.paths import SentPathRoute
from services.query.views import component, retry_counts, summary
from shared.auth import Role
from shared.events import Status, TerminateReply, TerminateRequest

log = logging.getLogger(__name__)
router = APIRouter(tags=["executions"], route_class=SentPathRoute)

_TERMINAL = frozenset({Status.SUCCESS.value, Status.FAILED.value, Status.CANCELLED.value})


def _not_found(execution_id: str) -> HTTPException:
    return HTTPException(404, detail=f"execution {execution_id!r} not found")


def _possible_id(execution_id: str) -> bool:
    """Could be stored: 1 to 200 characters, no NUL (PostgreSQL text cannot hold it)."""
    return 1 <= len(execution_id) <= 200 and "\x00" not in execution_id


async def _visible(ctx: Ctx, execution_id: str) -> Any:
    """The row, or 404 alike for a missing id, another org's id or an agent out of scope."""
    if not _possible_id(execution_id):
        raise _not_found(execution_id)
    row = await repo.detail(ctx.conn, ctx.scope.org, execution_id, ctx.scope.agents)
    # The SQL reads under the scope already; this is the second lock, should a query change.
    if row is None or not ctx.scope.allows(row["agent_name"]):
        raise _not_found(execution_id)
    return row


async def _ask_reconciler(caller: Caller, execution_id: str) -> bool:
    """Ask the reconciler to fetch an engine run's steps; any failure is only a missed chance.

    Called with no connection held: the wait (up to `sync_timeout_s`) must not keep a pooled
    connection and its transaction from the other requests.
    """
    nc = caller.state.nats
    if nc is None or not nc.is_connected:
        return False
    payload = orjson.dumps({"org": caller.scope.org, "execution_id": execution_id})
    try:
        await nc.request(
            caller.state.settings.subjects.sync_components(),
            payload,
            timeout=caller.state.settings.sync_timeout_s,
        )
    except (nats.errors.Error, TimeoutError) as exc:
        log.debug("component sync for %s skipped: %r", execution_id, exc)
        return False
    return True


@router.get("/api/executions/{execution_id}", summary="One execution with its steps")
async def execution_detail(execution_id: str, caller: LightCallerDep) -> dict[str, Any]:
    org = caller.scope.org
    async with caller.connect() as ctx:
        row = await _visible(ctx, execution_id)
        steps = await repo.components(ctx.conn, org, execution_id, row["agent_name"])
        parts = [component(r) for r in steps]
        kids, more_kids = await repo.children(ctx.conn, org, execution_id, ctx.scope.agents)
        children = [summary(r) for r in kids]
    engine_run = bool(row["engine"] and row["external_id"])
    if not parts and engine_run and await _ask_reconciler(caller, execution_id):
        # A fresh transaction sees what the reconciler's events made ingest commit meanwhile.
        async with caller.connect() as ctx:
            steps = await repo.components(ctx.conn, org, execution_id, row["agent_name"])
            parts = [component(r) for r in steps]
    detail = dict(row)
    detail.update(
        components=parts,
        retries=retry_counts(parts),
        children=children,
        children_truncated=more_kids,
        log_url=f"/api/executions/{quote(execution_id, safe='')}/log" if row["has_log"] else None,
        engine_url=engine_url(caller.state.settings.engine_urls, row["engine"], row["external_id"]),
    )
    return detail


def engine_url(
    templates: dict[str, str], engine: str | None, external_id: str | None
) -> str | None:
    """The link to an execution's run in its engine, when one is configured for that engine."""
    template = templates.get(engine or "")
    if template is None or not external_id:
        return None
    return template.replace("{external_id}", quote(external_id, safe=""))


@router.get(
    "/api/executions/{execution_id}/log",
    summary="The full execution log (transcript)",
    response_class=PlainTextResponse,
)
async def execution_log(execution_id: str, ctx: CallerDep) -> PlainTextResponse:
    if not _possible_id(execution_id):
        raise _not_found(execution_id)
    row = await repo.execution_log(ctx.conn, ctx.scope.org, execution_id, ctx.scope.agents)
    if row is None or not ctx.scope.allows(row["agent_name"]):
        raise _not_found(execution_id)
    if row["execution_log"] is None:
        raise HTTPException(404, detail=f"execution {execution_id!r} has no log")
    return PlainTextResponse(row["execution_log"])


class TerminateBody(BodyModel):
    reason: str | None = Field(default=None, max_length=500)


@router.post(
    "/api/executions/{execution_id}/terminate",
    summary="Ask the agent to stop it",
    openapi_extra=openapi_body(TerminateBody, required=False),
)
async def terminate(execution_id: str, request: Request, caller: LightCallerDep) -> dict[str, Any]:
    """Sends the terminate command; the agent later publishes `execution_cancelled`.

    The body (`TerminateBody`, optional) is read once the caller is authenticated, and the
    row is checked in a short transaction: no connection is held while the agent answers.
    """
    body = await json_body(request, TerminateBody, required=False)
    async with caller.connect() as ctx:
        row = await _visible(ctx, execution_id)
    metrics = caller.state.metrics.terminate
    if caller.scope.role is Role.CLIENT:
        raise HTTPException(403, detail="clients may not terminate executions")
    if row["status"] in _TERMINAL:
        metrics.labels("already_finished").inc()
        raise HTTPException(409, detail=f"execution already {row['status']}")
    nc = caller.state.nats
    if nc is None or not nc.is_connected:
        metrics.labels("no_broker").inc()
        raise HTTPException(503, detail="agent unreachable: message broker unavailable")
    command = TerminateRequest(
        execution_id=execution_id,
        requested_by=caller.scope.user,
        reason=body.reason if body else None,
    )
    subject = caller.state.settings.subjects.terminate(caller.scope.org, row["agent_name"])
    try:
        msg = await nc.request(
            subject,
            command.model_dump_json().encode(),
            timeout=caller.state.settings.terminate_timeout_s,
        )
    except nats.errors.NoRespondersError:
        metrics.labels("unreachable").inc()
        raise HTTPException(
            503, detail=f"agent unreachable: no responder for {row['agent_name']!r}"
        ) from None
    except (nats.errors.TimeoutError, TimeoutError):
        metrics.labels("timeout").inc()
        raise HTTPException(
            504, detail=f"agent unreachable: {row['agent_name']!r} did not answer in time"
        ) from None
    except nats.errors.Error as exc:  # the connection dropped, the buffer is full, ...
        metrics.labels("no_broker").inc()
        raise HTTPException(
            503, detail=f"agent unreachable: message broker error ({type(exc).__name__})"
        ) from None
    try:
        reply = TerminateReply.model_validate_json(msg.data)
    except ValueError:
        metrics.labels("bad_reply").inc()
        raise HTTPException(502, detail="the agent sent an unreadable reply") from None
    metrics.labels("accepted" if reply.accepted else "refused").inc()
    return {"execution_id": execution_id, "accepted": reply.accepted, "reason": reply.reason}
