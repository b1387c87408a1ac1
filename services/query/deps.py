"""Request dependencies: who calls (token → scope), inside an org-scoped RLS transaction."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from cachetools import TTLCache
from fastapi import Depends, HTTPException, Request
from nats.aio.client import Client as NatsClient

from services.query.metrics import QueryMetrics
from services.query.settings import QuerySettings
from shared.access import Scope, enter_org, load_scope
from shared.auth import AuthError, AuthUnavailable, Claims, Role, verify_token
from shared.client_address import client_address
from shared.ratelimit import RateLimiter, address_key

log = logging.getLogger(__name__)


@dataclass
class QueryState:
    """What the composition root builds once per app and every request shares."""

    settings: QuerySettings
    metrics: QueryMetrics
    limiter: RateLimiter
    #: Failed authentications per client address (`settings.auth_failure_*`).
    auth_failures: RateLimiter
    stats_cache: TTLCache[Any, Any]
    #: Users' and clients' scopes by (org, sub, role), for `settings.scope_ttl_s`.
    scope_cache: TTLCache[tuple[str, str, str], Scope] | None = None
    #: Capped list counts by (scope, filters), for `settings.count_ttl_s`.
    count_cache: TTLCache[Any, tuple[int, bool]] | None = None
    pool: asyncpg.Pool | None = None
    nats: NatsClient | None = None
    #: Bumped per org whenever its cached scopes are dropped: a scope read before the drop
    #: (its transaction may predate the change) is then not cached after it.
    scope_generation: dict[str, int] = field(default_factory=dict)
    #: The database checks of the last /readyz that reached the database (see routes/health).
    last_readiness: dict[str, bool] | None = None
    #: Stats cache keys being recomputed in the background, and those tasks.
    refreshing: set[Any] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    #: Exports streaming now (`settings.export_concurrency`), each holding one connection.
    export_slots: asyncio.Semaphore = field(init=False)
    #: Each org's share of them (`settings.export_per_org`), held or waited for; an org's
    #: entry goes once no export of it holds or waits.
    org_export_slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.export_slots = asyncio.Semaphore(self.settings.export_concurrency)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background, held until it ends (cancelled at shutdown)."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def forget_scopes(self, org: str) -> None:
        """Drop the cached scopes of one org (its agents' owners or shares changed)."""
        self.scope_generation[org] = self.scope_generation.get(org, 0) + 1
        if self.scope_cache is not None:
            for key in [k for k in self.scope_cache if k[0] == org]:
                self.scope_cache.pop(key, None)


@dataclass(frozen=True, slots=True)
class Ctx:
    """One request's connection (in its transaction, RLS on) and the caller's scope."""

    conn: asyncpg.Connection
    scope: Scope
    state: QueryState
    #: Set by handlers that change owners or shares: cached scopes are dropped after COMMIT.
    changes: list[str] = field(default_factory=list)

    def scopes_changed(self) -> None:
        self.state.forget_scopes(self.scope.org)  # now, and again once the change is visible
        self.changes.append(self.scope.org)


@dataclass(frozen=True, slots=True)
class Caller:
    """A caller known without a database round trip when their scope is cached (or admin).

    For answers served from a cache, and for handlers that wait on something else (a NATS
    request, a request body): `connect()` opens the org-bound RLS transaction only for the
    statements, so no pooled connection is held while they wait.
    """

    claims: Claims
    scope: Scope
    state: QueryState

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Ctx]:
        async with _transaction(self.state, self.claims.org) as conn:
            ctx = Ctx(conn=conn, scope=self.scope, state=self.state)
            yield ctx
        for org in ctx.changes:  # committed: nobody can reload the old scope any more
            self.state.forget_scopes(org)


def get_state(request: Request) -> QueryState:
    state: QueryState = request.app.state.query
    return state


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _too_many(detail: str, wait: float) -> HTTPException:
    return HTTPException(429, detail=detail, headers={"Retry-After": str(max(1, math.ceil(wait)))})


def _failed(request: Request, state: QueryState) -> None:
    """Count a failed authentication from the client's address; 429 once its budget is used
    up. The address is the peer's, or the client a trusted proxy names (`trusted_proxies`);
    worked out here, on failures only, not for every request."""
    address = address_key(
        client_address(
            request.client.host if request.client else None,
            request.headers.getlist("x-forwarded-for"),
            state.settings.trusted_proxies,
        )
    )
    wait = state.auth_failures.check(address)
    if wait is not None:
        state.metrics.auth_limited.inc()
        raise _too_many("too many failed authentications from this address", wait)


async def authenticate(request: Request, state: QueryState) -> Claims:
    """The caller's claims, or 401; 429 instead of 401 once the client's address used up its
    budget of failures (`settings.auth_failure_*`): a client cycling bad tokens (guessing, or a
    broken script) gets its refusals slowed down, and a metric shows it. A good token is still
    checked and let through from such an address: clients behind one NAT share it, and one
    broken script there must not lock the others out; nor does a good token take from it."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        _failed(request, state)
        raise _unauthorized("missing bearer token")
    try:
        return await verify_token(token.strip(), state.settings)
    except AuthError as exc:
        _failed(request, state)
        raise _unauthorized(str(exc)) from None
    except AuthUnavailable as exc:
        # The token was not judged: a retry can succeed, and the client must not log out.
        raise HTTPException(503, detail=str(exc), headers={"Retry-After": "5"}) from None


async def _admitted(request: Request) -> tuple[QueryState, Claims]:
    """Authenticate and rate-limit."""
    state = get_state(request)
    claims = await authenticate(request, state)
    wait = state.limiter.check(f"{claims.org}/{claims.sub}")
    if wait is not None:
        state.metrics.rate_limited.inc()
        raise _too_many("rate limit exceeded", wait)
    return state, claims


def _busy(detail: str) -> HTTPException:
    return HTTPException(503, detail=detail, headers={"Retry-After": "1"})


#: What a database restarting, failing over or out of reach raises when the pool connects.
_UNREACHABLE: tuple[type[Exception], ...] = (
    OSError,  # refused, reset, no route, DNS
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,  # starting up or shutting down
)
DATABASE_LOST = "the database is unavailable; try again"


def _dead(conn: asyncpg.Connection) -> bool:
    try:
        closed: bool = conn.is_closed()
    except asyncpg.InterfaceError:  # the pool took its connection back when it was lost
        return True
    return closed


@asynccontextmanager
async def _transaction(
    state: QueryState, org: str, *, snapshot: bool = False
) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection in a transaction under the app role with the org set (RLS);
    with `snapshot`, a read-only one that sees the database as of its first query (an export
    paging through its rows must not miss one that moves behind its position meanwhile).

    A busy pool answers 503 after `pool_acquire_timeout_s` rather than queueing forever; a
    database out of reach, or a connection that dies under the request (Postgres restarted
    or failed over), 503 too: a retry can succeed, and the pool reconnects for it.
    """
    pool = state.pool
    if pool is None:
        raise HTTPException(503, detail="database not ready")
    try:
        conn = await pool.acquire(timeout=state.settings.pool_acquire_timeout_s)
    except TimeoutError:
        state.metrics.busy.labels("connection").inc()
        raise _busy("no database connection free; try again") from None
    except _UNREACHABLE as exc:
        log.warning("database unavailable: %r", exc)
        raise _busy(DATABASE_LOST) from None
    try:
        isolation = "repeatable_read" if snapshot else None
        async with conn.transaction(isolation=isolation, readonly=snapshot):
            if snapshot:
                # The snapshot holds back vacuum for the whole database while it is open: a
                # client that stops reading must not hold it for good.
                idle_ms = int(state.settings.export_idle_timeout_s * 1000)
                await conn.execute(
                    "SELECT set_config('idle_in_transaction_session_timeout', $1, true)",
                    f"{idle_ms}ms",
                )
            await enter_org(conn, org)
            yield conn
    except Exception as exc:
        # Whatever the driver made of it (a lost connection, a protocol state error on a
        # connection the server ended while idle), a dead connection is not the caller's bug.
        if isinstance(exc, HTTPException) or not _dead(conn):
            raise
        log.warning("database connection lost: %r", exc)
        raise _busy(DATABASE_LOST) from None
    finally:
        await pool.release(conn)


@asynccontextmanager
async def _org_export_share(state: QueryState, org: str) -> AsyncIterator[None]:
    """One of the org's `export_per_org` slots (waited for within the caller's timeout)."""
    entry = state.org_export_slots.get(org)
    if entry is None:
        entry = (asyncio.Semaphore(state.settings.export_per_org), [0])
        state.org_export_slots[org] = entry
    share, users = entry
    users[0] += 1
    try:
        await share.acquire()
        try:
            yield
        finally:
            share.release()
    finally:
        users[0] -= 1
        if users[0] == 0:
            del state.org_export_slots[org]


@asynccontextmanager
async def export_slot(state: QueryState, org: str) -> AsyncIterator[None]:
    """One of `export_concurrency` slots, and of the org's `export_per_org`, waited for
    before any connection is taken."""
    async with AsyncExitStack() as held:
        waiting_for = f"this organization's {state.settings.export_per_org} exports at once"
        try:
            async with asyncio.timeout(state.settings.pool_acquire_timeout_s):
                await held.enter_async_context(_org_export_share(state, org))
                waiting_for = "exports at once"
                await state.export_slots.acquire()
        except TimeoutError:
            state.metrics.busy.labels("export").inc()
            raise _busy(f"too many {waiting_for}; try again") from None
        try:
            yield
        finally:
            state.export_slots.release()


def _scope_key(claims: Claims) -> tuple[str, str, str]:
    return (claims.org, claims.sub, claims.role.value)


def cached_scope(state: QueryState, claims: Claims) -> Scope | None:
    """The scope without a query: admins see the whole org; others if cached."""
    if claims.role is Role.ADMIN:
        return Scope(org=claims.org, user=claims.sub, role=claims.role, agents=None)
    if state.scope_cache is None:
        return None
    return state.scope_cache.get(_scope_key(claims))


async def resolve_scope(state: QueryState, conn: asyncpg.Connection, claims: Claims) -> Scope:
    """The caller's scope: cached briefly, else read (in the caller's RLS transaction)."""
    scope = cached_scope(state, claims)
    if scope is None:
        generation = state.scope_generation.get(claims.org, 0)
        scope = await load_scope(conn, claims)
        unchanged = state.scope_generation.get(claims.org, 0) == generation
        if state.scope_cache is not None and unchanged:
            state.scope_cache[_scope_key(claims)] = scope
    return scope


@asynccontextmanager
async def _held(state: QueryState, claims: Claims, *, snapshot: bool = False) -> AsyncIterator[Ctx]:
    async with _transaction(state, claims.org, snapshot=snapshot) as conn:
        scope = await resolve_scope(state, conn, claims)
        ctx = Ctx(conn=conn, scope=scope, state=state)
        yield ctx
    for org in ctx.changes:  # committed: nobody can reload the old scope any more
        state.forget_scopes(org)


async def caller(request: Request) -> AsyncIterator[Ctx]:
    """Authenticate, rate-limit, then hold a connection in a transaction bound to the org."""
    state, claims = await _admitted(request)
    async with _held(state, claims) as ctx:
        yield ctx


async def streaming_caller(request: Request) -> AsyncIterator[Ctx]:
    """As `caller`, for a body streamed from the request's own connection (an export): at
    most `export_concurrency` at once, so exports cannot take the whole pool. Its batches
    read one snapshot: a row that started while the export ran moved ahead of the page the
    export had reached (its list time became its start), and was missing from the file."""
    state, claims = await _admitted(request)
    async with export_slot(state, claims.org), _held(state, claims, snapshot=True) as ctx:
        yield ctx


async def light_caller(request: Request) -> Caller:
    """Authenticate, rate-limit and resolve the scope, touching the database only on a miss."""
    state, claims = await _admitted(request)
    scope = cached_scope(state, claims)
    if scope is None:
        async with _transaction(state, claims.org) as conn:
            scope = await resolve_scope(state, conn, claims)
    return Caller(claims=claims, scope=scope, state=state)


#: Committed and released as soon as the endpoint returns (scope "function"), before the
#: response is sent: a client that got an answer to a change sees it in its next request.
CallerDep = Annotated[Ctx, Depends(caller, scope="function")]
#: Held until the response body is sent (scope "request"), so a streamed body may use it:
#: one connection per export, never a second one from the pool.
StreamCallerDep = Annotated[Ctx, Depends(streaming_caller, scope="request")]
LightCallerDep = Annotated[Caller, Depends(light_caller)]
StateDep = Annotated[QueryState, Depends(get_state)]


def require_fleet_wide(ctx: Ctx | Caller) -> None:
    if not ctx.scope.fleet_wide:
        raise HTTPException(403, detail="clients may use only the per-agent endpoints")


def require_agent_visible(ctx: Ctx | Caller, agent_name: str) -> None:
    if not ctx.scope.allows(agent_name):
        raise HTTPException(403, detail=f"agent {agent_name!r} is not visible to you")
