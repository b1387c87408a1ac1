"""Where benchmark results go, and how the ingest benchmark takes its medians (pure logic)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench import common
from bench.ingest import (
    COPY_COLUMNS,
    DB_NAME,
    _median_run,
    _synthetic_row,
    db_name,
    loaded_rows,
    median_rate,
    reusable,
)
from shared.db import connect


def test_quick_runs_never_write_into_bench_results(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The README and docs cite bench/results/*.json: a smoke run must not replace them.
    monkeypatch.setattr(common, "QUICK_RESULTS", tmp_path / "quick")
    path = common.write_result("ingest", {"quick": True}, quick=True)
    assert path == tmp_path / "quick" / "ingest.json"
    assert json.loads(path.read_text()) == {"quick": True}
    assert common.RESULTS not in path.parents
    assert common.results_dir(quick=False) == common.RESULTS


@pytest.mark.parametrize(
    "rates",
    [[10.0, 20.0], [10.0, 20.0, 30.0, 40.0], [5.0, 7.0, 9.0]],
)
def test_even_rounds_compare_like_ranks(rates: list[float]) -> None:
    # Ingest exactly as fast as COPY in every round must give a ratio of 1, however many
    # rounds: the upper middle run against the mean of the two middle COPYs gave 1.33.
    runs = [{"rows_per_s": r} for r in rates]
    assert _median_run(runs)["rows_per_s"] / median_rate(rates) == 1.0


def test_quick_runs_load_a_database_of_their_own() -> None:
    # `bench.ingest --quick` recreates its database with 100k rows: never the full one.
    assert db_name(quick=True) != db_name(quick=False) == DB_NAME


async def test_reuse_needs_the_full_table(fresh_database_url: str) -> None:
    # A database left by a smaller run must not be reused for a run that states >= N rows.
    name = urlsplit(fresh_database_url).path.lstrip("/")
    conn = await connect(fresh_database_url)
    try:
        rows = [_synthetic_row(i, random.Random(1)) for i in range(3)]
        await conn.copy_records_to_table("executions", records=rows, columns=COPY_COLUMNS)
    finally:
        await conn.close()
    assert await loaded_rows(name) == 3
    assert await reusable(name, 3)
    assert not await reusable(name, 4)
    assert not await reusable(f"{name}_missing", 1)


@pytest.mark.parametrize(
    ("title", "counts"),
    [
        ("postgres: 15/main: postgres fw_bench_ingest 127.0.0.1(5522) COPY", True),
        ("postgres: postgres fw_bench_ingest 127.0.0.1(5522) idle", True),
        ("postgres: 15/main: postgres fwtest_other 127.0.0.1(5523) SELECT", False),
        ("postgres: 15/main: walwriter", True),
        ("postgres: 15/main: checkpointer", True),
        ("postgres: 15/main: autovacuum worker fw_bench_ingest", True),
        ("postgres: 15/main: autovacuum worker fwtest_other", False),
        ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", True),
    ],
)
def test_postgres_cpu_counts_the_bench_database_only(title: str, counts: bool) -> None:
    assert common.postgres_title_counts(title, "fw_bench_ingest") is counts
    assert common.postgres_title_counts(title, None)


def test_cpu_used_ignores_processes_that_ended() -> None:
    # A backend that exits during the window (another tenant's, a closed pool's) had used
    # 50 s before it; a difference of totals made the window's Postgres CPU -49 s.
    before = {1: 50.0, 2: 10.0}
    after = {2: 10.5, 3: 0.5}
    assert common.cpu_used(before, after) == pytest.approx(1.0)


async def test_other_databases_backends_are_not_counted(
    fresh_database_url: str, database_url: str
) -> None:
    ours, theirs = common.database_of(fresh_database_url), common.database_of(database_url)
    busy = await connect(database_url)
    try:
        await busy.execute("SELECT 1")
        before = [common.postgres_cpu(ours), common.postgres_cpu(theirs)]
        await busy.fetchval("SELECT count(*) FROM generate_series(1, 4000000)")
        after = [common.postgres_cpu(ours), common.postgres_cpu(theirs)]
    finally:
        await busy.close()
    spent = common.cpu_used(before[1], after[1])
    assert spent > 0.2, spent  # the busy backend's query, counted for its database
    assert common.cpu_used(before[0], after[0]) < spent / 2


@pytest.mark.parametrize(
    ("args", "counts"),
    [
        (["/venv/bin/nats-server", "-js", "-sd", "/tmp/x", "-a", "127.0.0.1", "-p", "4333"], True),
        (["nats-server", "--port=4333"], True),
        (["nats-server", "-js", "-p", "4222"], False),
        (["nats-server", "-c", "/etc/nats/nats-server.conf"], False),
    ],
)
def test_nats_cpu_counts_the_benchmarks_own_server_only(args: list[str], counts: bool) -> None:
    # The machine's shared nats-server serves other people's tests during a run.
    assert common.nats_args_count(args, 4333) is counts
    assert common.nats_args_count(args, None)
