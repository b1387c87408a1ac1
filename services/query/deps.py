"""Request dependencies: who calls (token → scope), inside an org-scoped RLS transaction."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from cachetools import TTLCache
from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from nats.aio.client import Client as NatsClient

from services.query import repo
from services.query.metrics import QueryMetrics
from services.query.ratelimit import RateLimiter
from services.query.settings import QuerySettings
from shared.access import Scope, load_scope
from shared.auth import AuthError, Claims, decode_token


@dataclass
class QueryState:
    """What the composition root builds once per app and every request shares."""

    settings: QuerySettings
    metrics: QueryMetrics
    limiter: RateLimiter
    stats_cache: TTLCache[Any, dict[str, Any]]
    pool: asyncpg.Pool | None = None
    nats: NatsClient | None = None


@dataclass(frozen=True, slots=True)
class Ctx:
    """One request's connection (in its transaction, RLS on) and the caller's scope."""

    conn: asyncpg.Connection
    scope: Scope
    state: QueryState


def get_state(request: Request) -> QueryState:
    state: QueryState = request.app.state.query
    return state


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def authenticate(request: Request, state: QueryState) -> Claims:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing bearer token")
    settings = state.settings
    secret = settings.jwt_secret.get_secret_value()
    try:
        if settings.jwks_url:  # fetching keys blocks: keep it off the event loop
            return await run_in_threadpool(
                decode_token, token.strip(), secret=secret, jwks_url=settings.jwks_url
            )
        return decode_token(token.strip(), secret=secret)
    except AuthError as exc:
        raise _unauthorized(str(exc)) from None


async def caller(request: Request) -> AsyncIterator[Ctx]:
    """Authenticate, rate-limit, then hold a connection in a transaction bound to the org."""
    state = get_state(request)
    claims = await authenticate(request, state)
    wait = state.limiter.check(f"{claims.org}/{claims.sub}")
    if wait is not None:
        state.metrics.rate_limited.inc()
        raise HTTPException(
            429,
            detail="rate limit exceeded",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    if state.pool is None:
        raise HTTPException(503, detail="database not ready")
    async with state.pool.acquire() as conn, conn.transaction():
        await repo.enter_org(conn, claims.org)
        scope = await load_scope(conn, claims)
        yield Ctx(conn=conn, scope=scope, state=state)


CallerDep = Annotated[Ctx, Depends(caller)]
StateDep = Annotated[QueryState, Depends(get_state)]


def require_fleet_wide(ctx: Ctx) -> None:
    if not ctx.scope.fleet_wide:
        raise HTTPException(403, detail="clients may use only the per-agent endpoints")


def require_agent_visible(ctx: Ctx, agent_name: str) -> None:
    if not ctx.scope.allows(agent_name):
        raise HTTPException(403, detail=f"agent {agent_name!r} is not visible to you")
