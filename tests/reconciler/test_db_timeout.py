"""A database that stops answering fails the reconciler's pass after `db_timeout_seconds`
instead of hanging it; once the database answers again, the next pass works.

Real Postgres behind an in-process TCP proxy that stops passing bytes (a partition: neither
side sees the link close, so without a timeout the query waits for the kernel's keepalive).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from services.reconciler.app import build_reconciler, close_reconciler
from services.reconciler.settings import ReconcilerSettings
from tests.chaos.infra import port_of, proxy_to, url_through


async def test_a_pass_against_a_silent_database_fails_in_time_then_recovers(
    database_url: str,
) -> None:
    async with proxy_to(port_of(database_url)) as proxy:
        settings = ReconcilerSettings(
            database_url=url_through(database_url, proxy.port),
            db_timeout_seconds=1.0,
            http_base_url="http://127.0.0.1:9",  # nothing listens: lookups are engine errors
            http_error_attempts=1,
        )
        reconciler = await build_reconciler(settings, nc=None)
        try:
            proxy.latency = 3600.0
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reconciler.run_pass(fix=False), timeout=20)
            assert time.monotonic() - started < 5, "the pass waited past its database timeout"
            proxy.latency = 0.0
            proxy.reset_all()
            report = await asyncio.wait_for(reconciler.run_pass(fix=False), timeout=20)
            assert report.duration_s < 10
        finally:
            proxy.latency = 0.0
            proxy.reset_all()
            await close_reconciler(reconciler)
