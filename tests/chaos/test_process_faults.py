"""Faults 1 and 2: ingest SIGKILLed (before commit; after commit but before ack) and SIGTERMed."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import astuple, dataclass

import asyncpg
import nats
from nats.js import JetStreamContext

from shared.db import connect
from shared.subjects import Subjects
from tests.chaos.harness import ChaosResult, Scale, ingest_counter, settle
from tests.chaos.infra import port_of, proxy_to, url_through
from tests.chaos.load import Load, make_events
from tests.ingest.pulled import acks_pending_settle
from tests.procs import Service, running, start_service, wait_ready

#: A proxy latency that holds data until the connection is reset (i.e. forever).
HELD = 3600.0
#: Kills more, at most, when a planned one missed its window.
EXTRA_AIMS = 3


@dataclass
class Windows:
    """What the server held unacknowledged when ingest died, split by whether it was stored."""

    delivered_not_committed: int = 0
    committed_not_acked: int = 0


async def _classify_unacked(
    js: JetStreamContext, subjects: Subjects, conn: asyncpg.Connection, org: str
) -> tuple[int, int]:
    """What the dead process held, read at the server: (delivered not committed, committed not
    acked).

    Every message above the consumer's ack floor that is not in the events table (which records
    each event's stream seq) was delivered but not committed: a valid event is acked only after
    its commit. The server's ack-pending count minus those is what was committed but not acked.
    """
    info = await js.consumer_info(subjects.events_stream, "ingest")
    floor, delivered = info.ack_floor.stream_seq, info.delivered.stream_seq
    if delivered <= floor:
        return 0, 0
    stored = await conn.fetchval(
        "SELECT count(*) FROM events WHERE org=$1 AND stream_seq > $2 AND stream_seq <= $3",
        org,
        floor,
        delivered,
    )
    uncommitted = delivered - floor - stored
    return uncommitted, max(0, info.num_ack_pending - uncommitted)


async def _progress(conn: asyncpg.Connection, org: str, beyond: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n: int = await conn.fetchval("SELECT count(*) FROM events WHERE org=$1", org)
        if n > beyond or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.05)


async def _until_window(
    js: JetStreamContext,
    subjects: Subjects,
    conn: asyncpg.Connection,
    org: str,
    which: int,
    timeout: float = 15,
) -> None:
    """Wait until the server shows the window `which` (0: delivered not committed, 1: committed
    not acked) open, or `timeout` passes; the caller's measurement after the kill decides."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await _classify_unacked(js, subjects, conn, org))[which] > 0:
            return
        await asyncio.sleep(0.05)


async def test_sigkill_before_commit_and_after_commit_before_ack(
    js: JetStreamContext,
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    fresh_database_url: str,
    scale: Scale,
    chaos_results: list[ChaosResult],
) -> None:
    """SIGKILL ingest under load, repeatedly, each kill aimed at one of the two windows.

    Ingest reaches PostgreSQL and NATS through proxies. For a "before commit" kill the
    database link is held, so the batch in hand cannot commit; for an "after commit, before
    ack" kill ingest's client→server NATS link is held, so acks of committed batches cannot
    leave. Once the server shows the window open the process is SIGKILLed and the proxies drop
    what they held, as if it had never left the dead process. Where each kill landed is
    measured at the server afterwards (see `_classify_unacked`), not assumed. (Kills at random
    moments hit the before-commit window only by luck: a write takes milliseconds.)
    """
    # Events for far longer than the kills take; the load stops once they are done.
    events = make_events(org, int(scale.rate * 60), seed=11)
    nats_port = int(service_env["NATS_URL"].rsplit(":", 1)[1])
    env = {
        **service_env,
        **scale.ingest_env(),
        "INGEST_BATCH_SIZE": "100",
        "INGEST_BATCH_TIMEOUT": "0.02",
    }
    windows = Windows()
    conn = await connect(fresh_database_url)
    load = Load(service_env["NATS_URL"], subjects, events, rate=scale.rate)
    service: Service | None = None
    try:
        async with (
            proxy_to(nats_port) as nats_proxy,
            proxy_to(port_of(fresh_database_url)) as db_proxy,
        ):
            env["NATS_URL"] = url_through(service_env["NATS_URL"], nats_proxy.port)
            env["DATABASE_URL"] = url_through(fresh_database_url, db_proxy.port)
            service = start_service("ingest", env)
            await wait_ready(service.url)
            await load.start()
            stored = 0
            # Each planned kill aims at one window; a window an aim missed gets up to
            # EXTRA_AIMS more. (Holding the NATS link also holds the next pull request: when
            # the hold falls between two fetches, nothing is delivered, so nothing commits
            # and the committed-not-acked window cannot open before the kill.)
            aims = [kill % 2 for kill in range(max(2, scale.kills))]
            extra = 0
            while aims:
                which = aims.pop(0)
                stored = await _progress(conn, org, stored + 50)
                if which == 0:
                    db_proxy.latency = HELD
                else:
                    nats_proxy.up_latency = HELD
                await _until_window(js, subjects, conn, org, which)
                service.kill(signal.SIGKILL)
                await asyncio.to_thread(service.wait)
                # Measured while the proxies still hold: nothing the dead process sent counts.
                uncommitted, unacked = await _classify_unacked(js, subjects, conn, org)
                windows.delivered_not_committed += uncommitted
                windows.committed_not_acked += unacked
                for proxy in (db_proxy, nats_proxy):
                    proxy.reset_all()
                db_proxy.latency, nats_proxy.up_latency = 0.0, None
                service = start_service("ingest", env, port=service.port)
                await wait_ready(service.url)
                if not aims and extra < EXTRA_AIMS:
                    aims = [w for w, n in enumerate(astuple(windows)) if n == 0]
                    extra += 1
            load.stop()
            lifted = time.monotonic()
            # The last restarted process absorbs the redeliveries of the last kill.
            result = await settle(
                conn,
                org,
                load,
                fault="1. SIGKILL ingest (before commit / after commit, before ack)",
                lifted_at=lifted,
                results=chaos_results,
                notes=f"{max(2, scale.kills)} aimed kills; at the kills "
                f"{windows.delivered_not_committed} msgs delivered-not-committed, "
                f"{windows.committed_not_acked} committed-not-acked",
            )
            result.absorbed = await ingest_counter(service.url, "duplicate")
    finally:
        await load.close()
        if service is not None:
            service.kill()
            await asyncio.to_thread(service.wait)
        await conn.close()
    assert windows.delivered_not_committed > 0, "no kill landed before a commit"
    assert windows.committed_not_acked > 0, "no kill landed between commit and ack"


async def test_sigterm_under_load_drains_in_flight_batches(
    subjects: Subjects,
    service_env: dict[str, str],
    org: str,
    fresh_database_url: str,
    scale: Scale,
    chaos_results: list[ChaosResult],
) -> None:
    """SIGTERM: the process exits 0 after finishing its batch; nothing it took comes back."""
    events = make_events(org, scale.events, seed=12)
    env = {**service_env, **scale.ingest_env(), "DATABASE_URL": fresh_database_url}
    env["INGEST_BATCH_SIZE"] = "100"
    conn = await connect(fresh_database_url)
    load = Load(service_env["NATS_URL"], subjects, events, rate=scale.rate)
    first = start_service("ingest", env)
    try:
        await wait_ready(first.url)
        await load.start()
        await _progress(conn, org, len(events) // 3)
        first.kill(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, 30)
        # uvicorn re-raises the signal it caught once shutdown is done.
        assert code in (0, -signal.SIGTERM), first.log()[-2000:]
        failed_batches = first.log().count("batch failed")
        nc = await nats.connect(service_env["NATS_URL"])
        try:
            js = nc.jetstream()
            # The server applies the last acks asynchronously; nobody pulls meanwhile, so the
            # count can only fall. Well within ack_wait, so no expiry plays a part.
            left_pending = await acks_pending_settle(
                lambda: js.consumer_info(subjects.events_stream, "ingest"), within=2.0
            )
        finally:
            await nc.close()
        async with running("ingest", env, port=first.port) as second:
            lifted = time.monotonic()
            result = await settle(
                conn,
                org,
                load,
                fault="2. SIGTERM ingest under load",
                lifted_at=lifted,
                results=chaos_results,
                notes=f"exit code {code}; {left_pending} msgs left unacked at exit; "
                f"{failed_batches} batches failed during shutdown",
            )
            result.absorbed = await ingest_counter(second.url, "duplicate")
        assert failed_batches == 0, "a batch failed while draining (see the ingest log)"
        assert left_pending == 0, "a drained ingest left messages unacknowledged"
        assert result.absorbed == 0, "a drained batch was redelivered"
    finally:
        await load.close()
        first.kill()
        await conn.close()
