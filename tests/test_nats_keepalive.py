"""The services' links to NATS, cut without a reset (a NAT or firewall forgetting them), are
noticed by the keepalive (`FLEETWATCH_NATS_PING_INTERVAL_S`, 3 unanswered PINGs) and
reconnected. With nats-py's defaults (a PING every 120 s, 2 unanswered) such a link looked
alive for 4-6 minutes: ingest fetched nothing and the notifier told clients the feed was live.

The cut is a proxy that stops passing bytes while both ends stay open."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from pydantic import ValidationError

from shared.db import connect
from shared.settings import CommonSettings
from shared.subjects import Subjects
from tests.chaos.infra import port_of, proxy_to, url_through
from tests.notifier.helpers import connect_live, execution_event, jetstream, publish, token
from tests.notifier.helpers import running as notifier_running
from tests.notifier.helpers import settings_for as notifier_settings
from tests.notifier.test_outage_review3 import until_status
from tests.procs import running

#: Held back this long, a chunk never arrives: the link is silent, yet open on both ends.
FROZEN_S = 3600.0


async def _count(conn: asyncpg.Connection, org: str) -> int:
    found: int = await conn.fetchval("SELECT count(*) FROM executions WHERE org = $1", org)
    return found


async def _until_count(conn: asyncpg.Connection, org: str, count: int, limit_s: float) -> float:
    started = time.monotonic()
    while await _count(conn, org) < count:
        if time.monotonic() - started > limit_s:
            raise AssertionError(f"fewer than {count} executions after {limit_s} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_ingest_drops_a_silent_link_and_takes_what_was_published_meanwhile(
    nats_url: str, database_url: str, service_env: dict[str, str], subjects: Subjects, org: str
) -> None:
    async with proxy_to(port_of(nats_url, 4222)) as proxy:
        env = {
            **service_env,
            "NATS_URL": url_through(nats_url, proxy.port),
            "FLEETWATCH_NATS_PING_INTERVAL_S": "1",
        }
        conn = await connect(database_url)
        try:
            async with running("ingest", env), jetstream(nats_url) as js:
                await publish(js, subjects, execution_event(org, "a"))
                await _until_count(conn, org, 1, limit_s=15)
                proxy.latency = FROZEN_S  # ingest's link goes silent; no one is told
                await publish(js, subjects, execution_event(org, "a"))  # straight to NATS
                await asyncio.sleep(0.5)
                proxy.latency = 0.0  # new connections get through; the old one stays silent
                # ~4 unanswered PINGs of 1 s, a reconnect, then the pull goes on (seconds, where
                # nats-py's defaults took minutes; generous for a loaded machine).
                took = await _until_count(conn, org, 2, limit_s=25)
                assert took < 20, took
        finally:
            await conn.close()


async def test_the_notifier_tells_clients_when_its_link_goes_silent(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    async with proxy_to(port_of(nats_url, 4222)) as proxy:
        settings = notifier_settings(
            url_through(nats_url, proxy.port),
            database_url,
            subjects,
            nats_ping_interval_s=1,
        )
        async with notifier_running(settings) as app:
            live, _ = await connect_live(app.port, token(org, "boss", "admin"))
            proxy.latency = FROZEN_S
            # ~4 unanswered PINGs of 1 s, then up to connect_timeout (2 s) to close the link.
            down, _ = await until_status(live, limit_s=20)
            assert down["live"] is False
            proxy.latency = 0.0
            back, _ = await until_status(live, limit_s=20)
            assert back == {"type": "feed_status", "live": True}
            await live.close()


@pytest.mark.parametrize("bad", ["0", "-5", "1.5", "601", "soon"])
def test_the_ping_interval_setting_is_checked(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("FLEETWATCH_NATS_PING_INTERVAL_S", bad)
    with pytest.raises(ValidationError, match="FLEETWATCH_NATS_PING_INTERVAL_S"):
        CommonSettings()


def test_the_ping_interval_defaults_to_ten_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETWATCH_NATS_PING_INTERVAL_S", raising=False)
    keepalive = CommonSettings().nats_keepalive
    assert (keepalive.ping_interval, keepalive.max_outstanding_pings) == (10, 3)
