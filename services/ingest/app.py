"""Wiring of the ingest service: pool, NATS, the durable pull consumer, HTTP endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import nats
import nats.errors
from fastapi import FastAPI, Response
from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.ingest.consumer import TRANSIENT_ERRORS, BatchConsumer
from services.ingest.fleet_metrics import FleetMetrics
from services.ingest.metrics import IngestMetrics
from services.ingest.metrics_listener import metrics_listener
from services.ingest.settings import IngestSettings
from shared.db import create_pool
from shared.faststream_compat import (
    patch_fetch_takes_delivered,
    patch_next_msg_takes_queued,
    patch_pull_timeout,
    take_delivered,
)
from shared.shutdown import drain_or_close_nats
from shared.streams import ensure_streams

log = logging.getLogger(__name__)


@dataclass
class IngestState:
    """What the running service holds; set up by the lifespan."""

    pool: asyncpg.Pool | None = None
    nc: NatsClient | None = None
    js: JetStreamContext | None = None
    broker: NatsBroker | None = None
    consumer: BatchConsumer | None = None


async def _raw_batch(msg: Any) -> list[Msg]:
    # The fetched messages as they are: the handler validates their bodies itself (so bad JSON
    # reaches the DLQ) and acks them once committed.
    return list(msg.raw_message)


#: How long the start waits for a first database connection before serving without one.
_FIRST_CONNECT_TIMEOUT = 5.0


async def _connect_pool(settings: IngestSettings) -> asyncpg.Pool:
    """The pool, made whether or not Postgres answers now.

    Connections are opened on demand (`min_size=0`), so that ingest started during a
    database outage serves health, metrics and readiness (not ready) and waits for Postgres
    the way a running ingest does: batches retried, nothing acked. A database that answers
    but refuses us (a wrong password or database name) still stops the start with its error.
    """
    pool = await create_pool(settings.database_url, min_size=0, max_size=settings.db_pool_size)
    try:
        async with pool.acquire(timeout=_FIRST_CONNECT_TIMEOUT):
            pass
    except TRANSIENT_ERRORS as exc:
        log.warning("database unreachable (%r); ingest waits for it", exc)
    except BaseException:
        await pool.close()
        raise
    return pool


def build_broker(settings: IngestSettings, consumer_ref: IngestState) -> NatsBroker:
    patch_pull_timeout()
    patch_fetch_takes_delivered()
    patch_next_msg_takes_queued()
    broker = NatsBroker(
        settings.nats_url,
        graceful_timeout=30.0,
        log_level=logging.DEBUG,
        max_reconnect_attempts=-1,
        # A link cut without a reset is dropped and reconnected (shared/nats_keepalive.py).
        ping_interval=settings.nats_keepalive.ping_interval,
        max_outstanding_pings=settings.nats_keepalive.max_outstanding_pings,
        # The handler takes the decoded batch as is: no argument casting or dependency
        # injection per fetch (its Context look-up ran in a worker thread each time).
        apply_types=False,
    )
    subjects = settings.subjects

    @broker.subscriber(
        subjects.all_events,
        stream=JStream(subjects.events_stream, declare=False),
        durable=settings.durable,
        pull_sub=PullSub(
            batch_size=settings.batch_size, timeout=settings.batch_timeout, batch=True
        ),
        config=ConsumerConfig(ack_wait=settings.ack_wait, max_ack_pending=settings.max_ack_pending),
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_batch,
    )
    async def ingest_batch(messages: list[Msg]) -> None:
        assert consumer_ref.consumer is not None
        await consumer_ref.consumer.submit(messages)

    del ingest_batch
    return broker


async def _poll_lag(state: IngestState, settings: IngestSettings, metrics: IngestMetrics) -> None:
    while True:
        try:
            assert state.js is not None
            # nats-py's own request timeout (5 s) bounds a read while NATS is away.
            info = await state.js.consumer_info(settings.subjects.events_stream, settings.durable)
            metrics.consumer_pending.set(info.num_pending or 0)
            metrics.consumer_ack_pending.set(info.num_ack_pending or 0)
            metrics.consumer_read_at.set_to_current_time()
        except Exception as exc:  # lag is best effort; never stop the service for it
            # Unknown, not the last value read: a lag frozen at 0 while NATS is away would
            # look healthy (the read timestamp says since when; an alert watches it).
            metrics.consumer_pending.set(math.nan)
            metrics.consumer_ack_pending.set(math.nan)
            log.debug("consumer info unavailable: %s", exc)
        await asyncio.sleep(settings.lag_poll_interval)


async def _poll_running(pool: asyncpg.Pool, fleet: FleetMetrics, settings: IngestSettings) -> None:
    """Running and stuck executions per org, for the fleet gauges and the stuck alert."""
    while True:
        try:
            await fleet.refresh_running(pool)
        except Exception as exc:  # best effort, like the lag
            log.debug("running executions unavailable: %s", exc)
        await asyncio.sleep(settings.running_poll_interval)


async def _stop_consuming(
    broker: NatsBroker, consumer: BatchConsumer, settings: IngestSettings
) -> None:
    """Stop the pull loop without dropping a batch it has fetched (see BatchConsumer.submit)."""
    await consumer.drain()
    # Under load the loop parks in the handler within one batch window; when the stream is
    # idle it never does, and there is nothing in flight to lose.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(settings.batch_timeout * 4 + 0.2):
            await consumer.parked.wait()
    stopping = asyncio.create_task(broker.stop())
    subscribers = list(broker.subscribers)
    for _ in range(200):  # the subscriber flips `running` first thing in its stop()
        if not any(getattr(sub, "running", False) for sub in subscribers):
            break
        await asyncio.sleep(0.01)
    # The last pull request may still bring messages after its fetch has ended, into the
    # subscription's queue, where no fetch takes them now. Wait out its window and finish
    # them here rather than leave them unacknowledged until ack_wait.
    await asyncio.sleep(settings.batch_timeout + 0.05)
    for sub in subscribers:
        leftovers = take_delivered(getattr(sub, "subscription", None), settings.max_ack_pending)
        if leftovers:
            log.info("finishing %d messages delivered after the last fetch", len(leftovers))
            await consumer.finish(leftovers)
    consumer.release.set()
    try:
        await stopping
    except nats.errors.Error as exc:
        # NATS away: nats-py refuses to drain a connection that is reconnecting. The batches
        # still in flight end below (their acks fail; the messages are delivered again).
        log.warning("broker stopped without draining its connection: %r", exc)
    await consumer.drain()


#: Seconds the stop may spend draining (batches in flight, the NATS connection, the pool).
#: Kubernetes gives ingest 40 s after SIGTERM: preStop's 5 s, uvicorn's 25 s for open HTTP
#: requests (GRACEFUL_SHUTDOWN_S in main.py), these 5 and the cut-off's 2 leave 3 to spare
#: (deploy/k8s/base/ingest.yaml). Past them it is SIGKILL anyway.
STOP_DRAIN_S = 5.0

#: Seconds the stop may spend after cutting the drain off, for the batches it cut off to end.
_CUT_OFF_WAIT_S = 2.0


async def _stop_within_budget(
    broker: NatsBroker,
    consumer: BatchConsumer,
    nc: NatsClient,
    pool: asyncpg.Pool,
    settings: IngestSettings,
) -> None:
    """Drain, or give up after `STOP_DRAIN_S` and close hard, saying what was cut off.

    A batch blocked in Postgres (a table lock, a stuck query; there is no statement timeout
    on the writer) never ends on its own: the drain would wait for it, and `pool.close()`
    for its connection, until SIGKILL, logging nothing. Cutting it off loses nothing: its
    messages are not acked, and JetStream delivers them again after ack_wait.
    """
    stage = "the batches in flight"
    try:
        async with asyncio.timeout(STOP_DRAIN_S):
            await _stop_consuming(broker, consumer, settings)
            stage = "the NATS drain"
            await drain_or_close_nats(nc)
            stage = "the database pool's close"
            await pool.close()
        return
    except TimeoutError:
        pass
    # The timeout cancelled what it waited for (a batch blocked in Postgres among it).
    log.warning(
        "stop cut off after %.0f s waiting for %s; closing NATS and the database connections "
        "now (unacknowledged messages will be delivered again)",
        STOP_DRAIN_S,
        stage,
    )
    # Terminating the connections ends any query still blocked on them, so nothing holds
    # the event loop's final clean-up.
    pool.terminate()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_CUT_OFF_WAIT_S):
            await consumer.drain()
    if not nc.is_closed:
        await nc.close()


def create_app(settings: IngestSettings, metrics: IngestMetrics | None = None) -> FastAPI:
    metrics = metrics or IngestMetrics.create()
    state = IngestState()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with metrics_listener(settings.host, settings.metrics_port, metrics.registry):
            async with consume():
                yield

    @contextlib.asynccontextmanager
    async def consume() -> AsyncIterator[None]:
        state.nc = await nats.connect(
            settings.nats_url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            ping_interval=settings.nats_keepalive.ping_interval,
            max_outstanding_pings=settings.nats_keepalive.max_outstanding_pings,
        )
        state.js = state.nc.jetstream()
        await ensure_streams(state.js, settings, update=True)
        state.pool = await _connect_pool(settings)
        fleet = FleetMetrics(metrics.registry)
        state.consumer = BatchConsumer(
            pool=state.pool,
            js=state.js,
            subjects=settings.subjects,
            metrics=metrics,
            retry_min=settings.retry_min,
            retry_max=settings.retry_max,
            fleet=fleet,
            max_in_flight=settings.max_in_flight,
            batch_size=settings.batch_size,
            keepalive_interval=settings.ack_wait / 3,
        )
        state.broker = build_broker(settings, state)
        await state.broker.start()
        lag_task = asyncio.create_task(_poll_lag(state, settings, metrics))
        running_task = asyncio.create_task(_poll_running(state.pool, fleet, settings))
        log.info("ingest consuming %s as %r", settings.subjects.all_events, settings.durable)
        try:
            yield
        finally:
            # Drain: finish the batches in flight while the broker's connection (their acks
            # travel on it) is still open, then stop fetching, then close.
            state.consumer.stopping.set()
            lag_task.cancel()
            running_task.cancel()
            await _stop_within_budget(state.broker, state.consumer, state.nc, state.pool, settings)

    app = FastAPI(title="fleetwatch ingest", lifespan=lifespan)
    app.state.ingest = state

    if settings.metrics_port is None:  # else on a port of its own (metrics_listener)

        @app.get("/metrics", include_in_schema=False)
        async def metrics_endpoint() -> Response:
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, Any]:
        checks = {"nats": bool(state.nc and state.nc.is_connected), "database": False}
        if state.pool is not None:
            with contextlib.suppress(Exception):
                async with state.pool.acquire(timeout=2) as conn:
                    checks["database"] = await conn.fetchval("SELECT true")
        ready = all(checks.values())
        response.status_code = 200 if ready else 503
        return {"ready": ready, **checks}

    _include_gateway(app, settings, state)
    return app


def _include_gateway(app: FastAPI, settings: IngestSettings, state: IngestState) -> None:
    """The HTTP gateway for publishers that cannot speak NATS, when present."""
    try:
        module = importlib.import_module("services.ingest.gateway")
    except ImportError:
        return

    def get_pool() -> asyncpg.Pool:
        assert state.pool is not None
        return state.pool

    def get_js() -> JetStreamContext:
        assert state.js is not None
        return state.js

    app.include_router(
        module.create_gateway_router(
            settings,
            get_pool,
            get_js,
            concurrency=settings.gateway_concurrency,
            body_budget=settings.gateway_body_budget_mb * 1024 * 1024,
            wait_s=settings.gateway_wait_s,
        )
    )
