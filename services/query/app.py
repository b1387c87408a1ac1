"""Composition root of the query service: pool, NATS client, routes, metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import nats
from cachetools import TTLCache
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.query.deps import QueryState
from services.query.filters import FilterError
from services.query.metrics import LatencyMiddleware, QueryMetrics
from services.query.routes import agents, detail, export, health, listing, statistics
from services.query.settings import QuerySettings
from shared.db import create_pool
from shared.ratelimit import RateLimiter
from shared.shutdown import close_pool
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Seconds the stop waits for the pool to close (every connection handed back) before
#: terminating the connections; see GRACEFUL_SHUTDOWN_S in services/query/main.py.
STOP_POOL_S = 5.0

#: The dashboard keeps its token in localStorage: no script but its own may run, no other
#: site may frame it (a click on "Stop" under a decoy), and no URL of it leaves in a Referer.
#: Inline style attributes are allowed (bar widths); the live feed's socket may be on another
#: port or host (`notifier_url`), hence ws:/wss:.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


#: The API's own documentation pages (FastAPI's Swagger UI and ReDoc) load their script and
#: styles from a CDN and start with an inline script: the dashboard's policy would blank them.
#: They hold no token and no data; the other headers still apply.
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})


class SecurityHeadersMiddleware:
    """Adds SECURITY_HEADERS to every HTTP answer (API, page, static files, errors); the CSP
    to all but the API documentation pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = SECURITY_HEADERS
        if scope.get("path") in DOCS_PATHS:
            wanted = [h for h in SECURITY_HEADERS if h[0] != b"content-security-policy"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [h for h in wanted if h[0] not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _connect_nats(state: QueryState) -> None:
    """Keep trying: reads work without NATS, only terminate and component sync need it."""
    while True:
        try:
            state.nats = await nats.connect(
                state.settings.nats_url,
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                ping_interval=state.settings.nats_keepalive.ping_interval,
                max_outstanding_pings=state.settings.nats_keepalive.max_outstanding_pings,
                name="fleetwatch-query",
            )
            return
        except Exception as exc:  # unreachable broker: retry until it answers
            log.warning("NATS not reachable yet (%r); retrying", exc)
            await asyncio.sleep(2)


def _filter_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FilterError)
    detail = [{"loc": [exc.where, exc.field], "msg": exc.message, "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=422)


def _cancelled(request: Request, exc: Exception) -> JSONResponse:
    """A statement Postgres cancelled (`statement_timeout`, or an operator): 503, not 500."""
    assert isinstance(exc, asyncpg.QueryCanceledError)
    state: QueryState = request.app.state.query
    state.metrics.busy.labels("statement").inc()
    limit = state.settings.statement_timeout_s
    log.warning("statement cancelled on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {
            "detail": f"the query ran longer than {limit:g} s and was cancelled; "
            "narrow the filters or try again"
        },
        status_code=503,
        headers={"Retry-After": "5"},
    )


def _server_settings(settings: QuerySettings) -> dict[str, str]:
    return {
        # Generic plans cannot use the trigram index for `ILIKE $n` nor pick the index a
        # filter's value deserves; planning each query costs well under a millisecond.
        "plan_cache_mode": "force_custom_plan",
        "statement_timeout": str(round(settings.statement_timeout_s * 1000)),
    }


def create_app(settings: QuerySettings) -> FastAPI:
    metrics = QueryMetrics()
    state = QueryState(
        settings=settings,
        metrics=metrics,
        limiter=RateLimiter(
            per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst
        ),
        auth_failures=RateLimiter(
            per_minute=settings.auth_failure_per_minute,
            burst=settings.auth_failure_burst,
            max_callers=settings.auth_failure_addresses,
        ),
        stats_cache=TTLCache(maxsize=4096, ttl=settings.stats_ttl_s or 1e-9),
        scope_cache=TTLCache(maxsize=50_000, ttl=settings.scope_ttl_s)
        if settings.scope_ttl_s
        else None,
        count_cache=TTLCache(maxsize=10_000, ttl=settings.count_ttl_s)
        if settings.count_ttl_s
        else None,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.pool = await create_pool(
            settings.database_url,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            server_settings=_server_settings(settings),
        )
        connecting = asyncio.create_task(_connect_nats(state))
        try:
            yield
        finally:
            for task in list(state.tasks):  # background stats refreshes
                task.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)
            await cancel_and_wait(connecting)
            if state.nats is not None:
                await state.nats.close()
            # A request cancelled while the database did not answer may still hold one.
            await close_pool(state.pool, STOP_POOL_S)

    app = FastAPI(
        title="fleetwatch query API",
        version="1.0",
        description="Every execution across a fleet of agents: list, stats, detail, export.",
        lifespan=lifespan,
    )
    app.state.query = state
    app.add_exception_handler(FilterError, _filter_error)
    app.add_exception_handler(asyncpg.QueryCanceledError, _cancelled)
    # Order matters: the fixed paths (stats, timeline, export) before `/{execution_id}`.
    for module in (health, statistics, export, listing, detail, agents):
        app.include_router(module.router)
    if settings.static_dir.is_dir():
        app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    return app
