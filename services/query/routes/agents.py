"""Agent management: the caller's visible agents, their owner/display name, and shares.

A share's user id may hold `/` (`corp/alice`): it travels percent-encoded as one path segment
(`corp%2Falice`), and these routes match on the path as sent (`SentPathRoute`).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import ConfigDict, Field

from services.query import repo
from services.query.body import BodyModel, json_body, openapi_body
from services.query.deps import CallerDep, Ctx, LightCallerDep
from services.query.routes.paths import SentPathRoute
from shared.auth import Role
from shared.events import is_valid_name

router = APIRouter(tags=["agents"], route_class=SentPathRoute)
_NO_NUL = r"^[^\x00]*$"


class AgentUpdate(BodyModel):
    """Fields to set; those left out keep their value, those sent as null are cleared."""

    model_config = ConfigDict(extra="forbid")

    # No NUL: PostgreSQL text cannot hold it.
    display_name: str | None = Field(default=None, min_length=1, max_length=200, pattern=_NO_NUL)
    owner: str | None = Field(default=None, min_length=1, max_length=200, pattern=_NO_NUL)
    project: str | None = Field(default=None, min_length=1, max_length=200, pattern=_NO_NUL)


def _check_name(name: str) -> None:
    if not is_valid_name(name):
        raise HTTPException(
            422,
            detail=[
                {
                    "loc": ["path", "name"],
                    "msg": "must match [A-Za-z0-9_-]{1,64}",
                    "type": "value_error",
                }
            ],
        )


@router.get("/api/agents", summary="The agents visible to the caller")
async def list_agents(ctx: CallerDep) -> dict[str, Any]:
    rows = await repo.agents(ctx.conn, ctx.scope.org, ctx.scope.agents)
    admin = ctx.scope.role is Role.ADMIN
    agents = []
    for row in rows:
        agent = dict(row)
        # Who else sees an agent is for its admins and owner, not for everyone it is shared with.
        if not admin and agent["owner"] != ctx.scope.user:
            agent.pop("shared_with")
        agents.append(agent)
    return {"agents": agents}


@router.put(
    "/api/agents/{name}",
    summary="Set an agent's owner, display name or project",
    openapi_extra=openapi_body(AgentUpdate, required=True),
)
async def put_agent(name: str, request: Request, caller: LightCallerDep) -> dict[str, Any]:
    """The body (`AgentUpdate`) is read only for an authenticated admin."""
    _check_name(name)
    if caller.scope.role is not Role.ADMIN:
        raise HTTPException(403, detail="only admins manage agents")
    body = await json_body(request, AgentUpdate, required=True)
    async with caller.connect() as ctx:
        try:
            row = await repo.upsert_agent(
                ctx.conn,
                ctx.scope.org,
                name,
                display_name=body.display_name,
                owner=body.owner,
                project=body.project,
                given=frozenset(body.model_fields_set),
            )
        except asyncpg.ForeignKeyViolationError:
            raise HTTPException(404, detail=f"organization {ctx.scope.org!r} not found") from None
        if "owner" in body.model_fields_set:
            ctx.scopes_changed()
    return dict(row)


async def _may_share(ctx: Ctx, name: str) -> None:
    _check_name(name)
    agent = await repo.agent(ctx.conn, ctx.scope.org, name)
    if ctx.scope.role is Role.ADMIN:
        if agent is None:
            raise HTTPException(404, detail=f"agent {name!r} not found")
        return
    if not ctx.scope.allows(name):
        # As the per-agent list answers (DESIGN.md: 403 for an agent the caller may not see),
        # whether or not it exists: its existence is not revealed either way.
        raise HTTPException(403, detail=f"agent {name!r} is not in your scope")
    if agent is None:
        raise HTTPException(404, detail=f"agent {name!r} not found")
    if agent["owner"] != ctx.scope.user or ctx.scope.role is not Role.USER:
        raise HTTPException(403, detail="only admins and the agent's owner manage its shares")


def _check_user(user: str) -> None:
    if not 1 <= len(user) <= 200 or "\x00" in user:
        raise HTTPException(
            422,
            detail=[
                {
                    "loc": ["path", "user"],
                    "msg": "1 to 200 characters, no NUL",
                    "type": "value_error",
                }
            ],
        )


@router.put(
    "/api/agents/{name}/shares/{user}", summary="Share an agent with a user", status_code=204
)
async def put_share(name: str, user: str, ctx: CallerDep) -> Response:
    _check_user(user)
    await _may_share(ctx, name)
    await repo.put_share(ctx.conn, ctx.scope.org, name, user)
    ctx.scopes_changed()
    return Response(status_code=204)


@router.delete("/api/agents/{name}/shares/{user}", summary="Stop sharing an agent", status_code=204)
async def delete_share(name: str, user: str, ctx: CallerDep) -> Response:
    _check_user(user)
    await _may_share(ctx, name)
    if not await repo.delete_share(ctx.conn, ctx.scope.org, name, user):
        raise HTTPException(404, detail=f"agent {name!r} is not shared with {user!r}")
    ctx.scopes_changed()
    return Response(status_code=204)
