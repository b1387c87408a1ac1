"""Review findings, against real HTTP engines and the real Postgres: a row lacking its run id
is not failed while the engine lists a run naming it without an org (with or without an org
filter), a listing's unreadable runs are not reported again once the listing is gone, and the
CLI refuses an engine filter that names no configured engine."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import nats
import pytest

from services.reconciler import repo
from services.reconciler.engines.http import HttpEngine
from services.reconciler.leader import LeaderLock
from services.reconciler.loop import Reconciler
from services.reconciler.rules import Action, Kind
from shared import cli
from shared.subjects import Subjects
from tests.chaos.infra import port_of, proxy_to, url_through
from tests.reconciler.helpers import (
    FAILING,
    INSERT,
    ago,
    http_engine,
    insert_row,
    make_reconciler,
    stream_messages,
)
from tests.reconciler.http_engine import EngineState

LEASE_S = 1.5


@pytest.mark.parametrize("org_filter", [False, True])
async def test_a_row_is_not_failed_while_a_listed_run_naming_no_org_names_it(
    engine: tuple[EngineState, HttpEngine],
    database_url: str,
    db: asyncpg.Connection,
    org: str,
    org_filter: bool,
) -> None:
    """Engines that know no org (most HTTP engines) list the run with its execution id only:
    the event with its run id was lost, the engine still runs it, so it must not be failed."""
    state, adapter = engine
    await insert_row(db, org, "lost", engine="http", external_id=None, age_s=3600)
    state.add(f"{org}-lost-run", "running", started_at=ago(1800), execution_id="lost")
    reconciler = await make_reconciler(
        database_url, {"http": adapter}, None, Subjects("x"), FAILING
    )
    try:
        filters = repo.Filters(org=org) if org_filter else None
        report = await reconciler.run_pass(filters, fix=False)
    finally:
        await reconciler.pool.close()
    (decision,) = [d for d in report.decisions if d.execution_id == "lost" and d.org == org]
    assert (decision.kind, decision.action) == (Kind.MISSING_EXTERNAL_ID, Action.FLAG)
    assert decision.publish_status is None
    assert f"lists run '{org}-lost-run' (running)" in decision.reason


async def test_unreadable_runs_of_an_old_listing_are_not_reported_again(
    database_url: str, org: str
) -> None:
    """A listing that is gone (404, itself one engine error) has no unreadable runs; those of
    the last listing must not be flagged and counted as engine errors on every later pass."""
    state = EngineState()
    state.runs["listing"] = {"runs": [{"id": f"{org}-odd", "status": "exploded"}]}
    async with http_engine(state, list_path="/runs/listing") as adapter:
        reconciler = await make_reconciler(database_url, {"http": adapter}, None, Subjects("x"))
        try:
            first = await reconciler.run_pass(fix=False)
            assert any(
                "unknown status 'exploded'" in d.reason
                for d in first.decisions
                if d.kind is Kind.ENGINE_ERROR
            )
            del state.runs["listing"]
            errors_before = reconciler.metrics.engine_errors.labels("http")._value.get()
            second = await reconciler.run_pass(fix=False)
            errors_after = reconciler.metrics.engine_errors.labels("http")._value.get()
        finally:
            await reconciler.pool.close()
    (gone,) = [d.reason for d in second.decisions if d.kind is Kind.ENGINE_ERROR]
    assert "HTTP 404, no listing there" in gone
    assert "exploded" not in gone
    assert errors_after == errors_before + 1


def test_cli_refuses_an_engine_filter_naming_no_configured_engine(
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--engine temporl` (a typo) must not report "0 checked, 0 mismatches" as if all were well."""
    monkeypatch.setenv("RECONCILER_HTTP_BASE_URL", "http://127.0.0.1:9")
    assert cli.main(["reconcile", "--dry-run", "--engine", "temporl"]) == 2
    assert "temporl" in capsys.readouterr().err


def test_cli_find_running_refuses_fix(
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`find-running --fix` would list and publish nothing: refused, not silently ignored."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["reconcile", "find-running", "--fix"])
    assert exited.value.code == 2


async def test_a_later_run_under_a_reused_id_does_not_correct_a_finished_row(
    engine: tuple[EngineState, HttpEngine],
    database_url: str,
    nats_url: str,
    db: asyncpg.Connection,
    org: str,
    subjects: Subjects,
) -> None:
    """Yesterday's nightly succeeded; today's run under the same id failed and has no row
    with that id yet (its event is on its way, or it lacks its run id, or another team ran
    it). It names no execution: it is not yesterday's, whose success must stand."""
    state, adapter = engine
    state.add("nightly", "failed", started_at=ago(600), completed_at=ago(60), error="today's")
    await db.execute(
        INSERT, org, "yesterday", "agent-1", "success", "http", "nightly",
        datetime.now(UTC) - timedelta(hours=24), datetime.now(UTC) - timedelta(hours=23),
    )  # fmt: skip
    nc = await nats.connect(nats_url)
    reconciler = await make_reconciler(database_url, {"http": adapter}, nc.jetstream(), subjects)
    try:
        report = await reconciler.run_pass(fix=True)
    finally:
        await reconciler.pool.close()
        await nc.close()
    mine = [d for d in report.decisions if d.org == org and d.execution_id == "yesterday"]
    assert [d for d in mine if d.action is Action.PUBLISH] == []
    assert await stream_messages(nats_url, subjects) == []


async def test_a_leader_that_lost_its_lock_stops_claiming_it_before_its_next_pass(
    database_url: str,
) -> None:
    """Between passes (`INTERVAL_SECONDS`, 30 s by default) a leader whose lease ran out must
    not go on saying it leads (`reconciler_leader`, `/readyz`) while another replica does."""
    key = random.randint(-(2**63), 2**63 - 1)
    async with proxy_to(port_of(database_url)) as proxy:
        lock = LeaderLock(url_through(database_url, proxy.port), key, lease_s=LEASE_S)
        other = LeaderLock(database_url, key, lease_s=LEASE_S)
        reconciler = await make_reconciler(database_url, {}, None, Subjects("x"))
        stop = asyncio.Event()
        task = asyncio.create_task(reconciler.run(lock, 60.0, fix=False, stop=stop))
        try:
            deadline = time.monotonic() + 10
            while _leader_gauge(reconciler) != 1:
                assert time.monotonic() < deadline, "never became leader"
                await asyncio.sleep(0.05)
            proxy.latency = 3600.0  # partitioned from Postgres: the lease runs out
            partitioned = time.monotonic()
            while not await other.try_acquire():
                assert time.monotonic() - partitioned < 4 * LEASE_S, "the lock was never freed"
                await asyncio.sleep(0.1)
            while reconciler.is_leader or _leader_gauge(reconciler) != 0:
                assert time.monotonic() - partitioned < 4 * LEASE_S, "two replicas claim to lead"
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            proxy.latency = 0.0
            await asyncio.wait_for(task, 10)
            await other.release()
            await reconciler.pool.close()


def _leader_gauge(reconciler: Reconciler) -> float:
    value = reconciler.metrics.registry.get_sample_value("reconciler_leader")
    assert value is not None
    return value


async def test_an_engine_answer_past_the_size_limit_is_an_engine_error_not_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An engine (or a proxy before it) that streams an endless or huge answer must not make
    the reconciler hold it all: past the limit the lookup fails, the connection is dropped."""
    import services.reconciler.engines.http_client as http_client
    from services.reconciler.engines import EngineError
    from services.reconciler.engines.http import HttpEngineConfig
    from services.reconciler.settings import DEFAULT_STATUS_MAP

    monkeypatch.setattr(http_client, "MAX_BODY_BYTES", 1 << 20, raising=False)
    body = b'{"id": "big", "status": "running", "pad": "' + b"x" * (4 << 20) + b'"}'

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        writer.write(head + body)
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    adapter = HttpEngine(
        HttpEngineConfig(
            base_url=f"http://127.0.0.1:{port}", status_map=DEFAULT_STATUS_MAP, backoff_seconds=0
        )
    )
    try:
        with pytest.raises(EngineError, match="larger than"):
            await adapter.get_run("big")
    finally:
        await adapter.close()
        server.close()


@pytest.mark.parametrize("org_filter", [False, True])
async def test_a_finished_row_is_checked_alike_with_or_without_an_org_filter(
    engine: tuple[EngineState, HttpEngine],
    database_url: str,
    db: asyncpg.Connection,
    org: str,
    org_filter: bool,
) -> None:
    """`fleetwatch reconcile --org O` must find the drift of O's rows that a full pass finds:
    a run that names no org (most HTTP engines) may be O's row's."""
    state, adapter = engine
    state.add(f"{org}-job", "failed", started_at=ago(1800), completed_at=ago(1200), error="x")
    await db.execute(
        INSERT, org, "done", "agent-1", "success", "http", f"{org}-job",
        datetime.now(UTC) - timedelta(seconds=1800), datetime.now(UTC) - timedelta(seconds=1200),
    )  # fmt: skip
    reconciler = await make_reconciler(database_url, {"http": adapter}, None, Subjects("x"))
    try:
        filters = repo.Filters(org=org) if org_filter else None
        report = await reconciler.run_pass(filters, fix=False)
    finally:
        await reconciler.pool.close()
    mine = [(d.execution_id, d.kind, d.action) for d in report.decisions if d.org == org]
    assert mine == [("done", Kind.STATUS_MISMATCH, Action.PUBLISH)]


async def test_a_silent_engines_listing_delays_the_pass_by_at_most_its_time_limit(
    engine: tuple[EngineState, HttpEngine], database_url: str, db: asyncpg.Connection, org: str
) -> None:
    """`ENGINE_PASS_TIMEOUT_SECONDS` bounds what a silent engine costs the others' corrections:
    its listing (here 3 attempts of 1 s) counts against that limit too, not after it."""
    from services.reconciler.engines.http import HttpEngineConfig
    from services.reconciler.settings import DEFAULT_STATUS_MAP
    from tests.reconciler.helpers import silent_server

    state, good = engine
    state.add(f"{org}-job", "succeeded")
    await insert_row(db, org, "g1", engine="http", external_id=f"{org}-job")
    async with silent_server() as url:
        silent = HttpEngine(
            HttpEngineConfig(
                base_url=url,
                name="silent",
                status_map=DEFAULT_STATUS_MAP,
                timeout_seconds=1.0,
                backoff_seconds=0.01,
            )
        )
        reconciler = await make_reconciler(
            database_url,
            {"http": good, "silent": silent},
            None,
            Subjects("x"),
            engine_pass_timeout_s=0.5,
        )
        try:
            report = await reconciler.run_pass(fix=False)
        finally:
            await reconciler.pool.close()
            await silent.close()
    # Within its 0.5 s limit, the pass takes ~0.5 s; a listing not held to it takes its 3
    # attempts of 1 s (at least 3 s): below that, the rest is slack for a loaded machine.
    assert report.duration_s < 2.8, report.duration_s
    (g1,) = [d for d in report.decisions if d.org == org and d.execution_id == "g1"]
    assert g1.kind is Kind.STATUS_MISMATCH
    listing = [d.reason for d in report.decisions if d.engine == "silent"]
    assert len(listing) == 1, listing
    assert "no listing within 0.5 s" in listing[0]
