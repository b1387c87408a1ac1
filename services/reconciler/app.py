"""Wiring of the reconciler: pool, NATS, engines, the leader loop, the step-sync responder, HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import nats
import orjson
from fastapi import FastAPI, Response
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.reconciler.engines import Engine
from services.reconciler.engines.http import HttpEngine, HttpEngineConfig
from services.reconciler.engines.temporal import TemporalEngine
from services.reconciler.leader import LeaderLock, lock_key
from services.reconciler.loop import Reconciler, policy_from
from services.reconciler.metrics import ReconcilerMetrics
from services.reconciler.publish import EventPublisher
from services.reconciler.settings import ReconcilerSettings
from shared.db import create_pool
from shared.shutdown import drain_or_close_nats
from shared.streams import ensure_streams
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)


async def build_engines(settings: ReconcilerSettings) -> dict[str, Engine]:
    """The engines the settings enable (Temporal by address, HTTP by base URL)."""
    engines: dict[str, Engine] = {}
    if settings.temporal_address:
        engines[settings.temporal_engine_name] = await TemporalEngine.connect(
            settings.temporal_address,
            settings.temporal_namespace,
            name=settings.temporal_engine_name,
            timeout_seconds=settings.temporal_timeout_seconds,
        )
    if settings.http_base_url:
        engines[settings.http_engine_name] = HttpEngine(
            HttpEngineConfig(
                base_url=settings.http_base_url,
                name=settings.http_engine_name,
                run_path=settings.http_run_path,
                list_path=settings.http_list_path,
                list_max_pages=settings.http_list_max_pages,
                status_field=settings.http_status_field,
                status_map=settings.http_status_map,
                timeout_seconds=settings.http_timeout_seconds,
                not_found_attempts=settings.http_not_found_attempts,
                error_attempts=settings.http_error_attempts,
                backoff_seconds=settings.http_backoff_seconds,
                max_connections=settings.concurrency,
                headers=settings.http_headers,
            )
        )
    return engines


async def build_reconciler(
    settings: ReconcilerSettings, nc: NatsClient | None, metrics: ReconcilerMetrics | None = None
) -> Reconciler:
    """Pool, engines and (given a NATS connection) a publisher, as one Reconciler."""
    publisher = None
    if nc is not None:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        publisher = EventPublisher(js, settings.subjects)
    pool = await create_pool(
        settings.database_url,
        min_size=1,
        max_size=4,
        command_timeout=settings.db_timeout_seconds,
    )
    try:
        engines = await build_engines(settings)
    except BaseException:
        await pool.close()
        raise
    return Reconciler(
        pool,
        engines,
        publisher,
        policy_from(settings),
        metrics=metrics,
        concurrency=settings.concurrency,
        breaker_threshold=settings.engine_error_breaker,
        engine_pass_timeout_s=settings.engine_pass_timeout_seconds,
        lookback=timedelta(seconds=settings.lookback_seconds),
        component_window=timedelta(seconds=settings.component_sync_window_seconds),
        on_demand_ttl=timedelta(seconds=settings.on_demand_sync_ttl_seconds),
        component_engines=[settings.temporal_engine_name] if settings.temporal_address else [],
    )


async def close_reconciler(reconciler: Reconciler) -> None:
    for engine in reconciler.engines.values():
        await engine.close()
    await reconciler.pool.close()


def sync_handler(reconciler: Reconciler) -> Callable[[Msg], Awaitable[None]]:
    """The responder for `<prefix>.rpc.reconciler.sync_components`."""

    async def handle(msg: Msg) -> None:
        try:
            request = orjson.loads(msg.data)
            org, execution_id = str(request["org"]), str(request["execution_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            reply = {"ok": False, "error": 'expected {"org": ..., "execution_id": ...}'}
        else:
            try:
                result = await reconciler.sync_components(org, execution_id, "on_demand")
                reply = {
                    "ok": result.ok,
                    "steps": result.steps,
                    "published": result.published,
                    "error": result.error,
                }
            except Exception as exc:
                log.exception("step sync of %s/%s failed", org, execution_id)
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        await msg.respond(orjson.dumps(reply))

    return handle


#: Wait between attempts to reach NATS, Postgres and the engines at startup.
START_RETRY_SECONDS = 5.0


@dataclass
class ReconcilerState:
    reconciler: Reconciler | None = None
    nc: NatsClient | None = None
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


async def _connect(
    settings: ReconcilerSettings, state: ReconcilerState, metrics: ReconcilerMetrics
) -> Reconciler | None:
    """NATS, pool and engines, retried until they answer (an engine may start after us)."""
    while not state.stop.is_set():
        try:
            if state.nc is None:
                keepalive = settings.nats_keepalive
                state.nc = await nats.connect(
                    settings.nats_url,
                    max_reconnect_attempts=-1,
                    ping_interval=keepalive.ping_interval,
                    max_outstanding_pings=keepalive.max_outstanding_pings,
                )
            return await build_reconciler(settings, state.nc, metrics)
        except Exception as exc:  # any dependency down: say why in /readyz and retry
            state.error = f"{type(exc).__name__}: {exc}"
            log.error("reconciler cannot start yet: %s", state.error)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_RETRY_SECONDS):
                await state.stop.wait()
    return None


async def _serve(
    settings: ReconcilerSettings, state: ReconcilerState, metrics: ReconcilerMetrics
) -> None:
    reconciler = await _connect(settings, state, metrics)
    if reconciler is None:
        return
    assert state.nc is not None
    state.reconciler, state.error = reconciler, None
    await state.nc.subscribe(
        settings.subjects.sync_components(), queue="reconciler", cb=sync_handler(reconciler)
    )
    leader = LeaderLock(
        settings.database_url,
        lock_key(settings.leader_lock_key, settings.subject_prefix),
        lease_s=settings.leader_lease_seconds,
    )
    await reconciler.run(leader, settings.interval_seconds, fix=settings.fix, stop=state.stop)


#: Seconds the stop waits for a pass in progress to end before cancelling it. A pass can run
#: for minutes on a hung dependency (an engine's lookups stop after
#: `engine_pass_timeout_seconds`, a query after `db_timeout_seconds`), and Kubernetes sends
#: SIGKILL 30 s after SIGTERM (deploy/k8s/base/reconciler.yaml).
STOP_PASS_S = 10.0

#: Seconds each later step of the stop (NATS, the engines and the pool) may take.
_STOP_STEP_S = 5.0


async def _stop_within_budget(state: ReconcilerState) -> None:
    """End the loop, NATS and the reconciler within the grace period, saying what was cut off.

    A pass cut short publishes nothing more; the next leader's pass checks the same rows."""
    if state.task is not None:
        await asyncio.wait({state.task}, timeout=STOP_PASS_S)
        if not state.task.done():
            log.warning("stop cut off the pass in progress after %.0f s", STOP_PASS_S)
        # Cancelled even when done (a no-op then): the error the loop ended with is returned
        # and logged, not raised, so the stop goes on to close NATS and the pool.
        try:
            async with asyncio.timeout(_STOP_STEP_S):
                error = await cancel_and_wait(state.task)
        except TimeoutError:
            error = None
            log.warning("the reconciler loop did not end within %.0f s of its cancel", _STOP_STEP_S)
        if error is not None:
            log.error("reconciler loop failed: %r", error)
    if state.nc is not None:
        # Drained: the sync responder's requests in hand get their answers.
        await drain_or_close_nats(state.nc, _STOP_STEP_S)
    if state.reconciler is not None:
        pool = state.reconciler.pool
        try:
            async with asyncio.timeout(_STOP_STEP_S):
                await close_reconciler(state.reconciler)
        except TimeoutError:
            log.warning(
                "database pool not closed within %.0f s (a query still holds a connection); "
                "terminating its connections",
                _STOP_STEP_S,
            )
            pool.terminate()


def create_app(settings: ReconcilerSettings) -> FastAPI:
    metrics = ReconcilerMetrics()
    state = ReconcilerState()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.task = asyncio.create_task(_serve(settings, state, metrics))
        try:
            yield
        finally:
            state.stop.set()
            await _stop_within_budget(state)

    app = FastAPI(title="fleetwatch reconciler", lifespan=lifespan)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        # A route, not a mounted app: a mount answers `/metrics` with a 307 to `/metrics/`.
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        ready = state.reconciler is not None and state.nc is not None and state.nc.is_connected
        if not ready:
            response.status_code = 503
        return {
            "ready": ready,
            "leader": state.reconciler.is_leader if state.reconciler else False,
            "engines": sorted(state.reconciler.engines) if state.reconciler else [],
            "error": state.error,
        }

    return app
