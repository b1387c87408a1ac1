"""A database that hangs (a partition, not a refusal) while sockets are open, on real parts.

The sweep that keeps open connections' access current must not wait on it forever: each scope
load times out, and a caller whose scope stays unconfirmed for a whole TTL is closed with 1013,
as a failing lookup is. A handshake meanwhile gets 1013 within the timeout. Postgres is reached
through a TCP proxy that stops passing bytes while its connections stay open.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import websockets

from services.notifier.app import Notifier
from shared.subjects import Subjects
from tests.chaos.infra import Proxy, port_of, proxy_to, url_through
from tests.notifier.helpers import close_code, connect_live, running, settings_for, token, ws_url

TTL_S = 0.5
LOAD_TIMEOUT_S = 0.3


async def test_a_hung_database_closes_open_sockets_with_1013_and_refuses_new_ones(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    async with proxy_to(port_of(database_url)) as proxy:
        settings = settings_for(
            nats_url,
            url_through(database_url, proxy.port),
            subjects,
            scope_ttl_s=TTL_S,
            scope_load_timeout_s=LOAD_TIMEOUT_S,
        )
        async with running(settings) as app:
            try:
                await _partitioned(app, proxy, org)
            finally:
                proxy.latency = 0.0
                proxy.reset_all()  # let the pool close: its connections see a reset


async def _partitioned(app: Notifier, proxy: Proxy, org: str) -> None:
    # A client's scope is read from the database (an admin's needs no table).
    ws, _ = await connect_live(app.port, token(org, "cust", "client"))
    proxy.latency = 3600.0  # nothing gets through, nothing is closed
    partitioned = time.monotonic()
    assert await close_code(ws, limit_s=10) == 1013
    # Within a TTL of failed reloads, each cut short by the timeout, plus the sweep's tick.
    assert time.monotonic() - partitioned < TTL_S * 2 + LOAD_TIMEOUT_S * 3 + 2
    failures = app.metrics.registry.get_sample_value("notifier_scope_load_failures_total")
    assert (failures or 0) >= 1

    # A handshake's failed lookup is counted too: with no socket open, it is the only sign.
    before = app.metrics.registry.get_sample_value("notifier_scope_load_failures_total") or 0
    started = time.monotonic()
    fresh = await websockets.connect(
        ws_url(app.port),
        subprotocols=["bearer", token(org, "other", "client")],  # type: ignore[list-item]
    )
    assert await close_code(fresh, limit_s=10) == 1013
    assert time.monotonic() - started < LOAD_TIMEOUT_S + 2
    after = app.metrics.registry.get_sample_value("notifier_scope_load_failures_total")
    assert after == before + 1


async def test_a_client_that_gives_up_during_a_slow_lookup_is_no_error(
    nats_url: str,
    database_url: str,
    subjects: Subjects,
    org: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reconnect storm on a slow database: clients that leave before their access is known
    are a normal end, not a handler failure logged at ERROR once per socket."""
    async with proxy_to(port_of(database_url)) as proxy:
        settings = settings_for(nats_url, url_through(database_url, proxy.port), subjects)
        async with running(settings) as app:
            proxy.latency = 0.3
            for i in range(4):
                tok = token(org, f"c{i}", "client")
                # Half of them ask in the URL, so they start without waiting for a first frame.
                ws = await (
                    websockets.connect(ws_url(app.port, f"token={tok}&resume_from=0&status=failed"))
                    if i % 2
                    else websockets.connect(ws_url(app.port), subprotocols=["bearer", tok])  # type: ignore[list-item]
                )
                ws.transport.abort()
            await asyncio.sleep(1.5)  # every lookup has ended
            proxy.latency = 0.0
            assert not app.hub.clients
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
