"""Each listed run once: the HTTP engine's listing pages may overlap, so a run can be listed
twice, even queued on one page and started on the next. Keyed by its start as well, it was
counted twice, and a row that does not name its execution then matched two candidates and
went uncorrected. Runs of two orgs under one id, and an id an engine reuses (two starts),
stay apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.reconciler.engines import EngineRun
from services.reconciler.engines.http import add_listed
from shared.events import Status

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def _listed(*runs: EngineRun) -> list[EngineRun]:
    found: dict[tuple[str, str | None, str | None], list[EngineRun]] = {}
    for run in runs:
        add_listed(found, run)
    return [run for same in found.values() for run in same]


def _run(status: Status, started: datetime | None, org: str = "acme") -> EngineRun:
    return EngineRun(engine="http", external_id="42", status=status, started_at=started, org=org)


def test_a_run_queued_on_one_page_and_started_on_the_next_is_listed_once_started() -> None:
    queued = _run(Status.PENDING, None)
    started = _run(Status.RUNNING, T0)
    assert _listed(queued, started) == [started]
    assert _listed(started, queued) == [started]


def test_the_sighting_further_along_wins() -> None:
    running = _run(Status.RUNNING, T0)
    done = _run(Status.SUCCESS, T0)
    assert _listed(running, done) == [done]
    assert _listed(done, running) == [done]


def test_two_starts_or_two_orgs_are_two_runs() -> None:
    first = _run(Status.SUCCESS, T0)
    again = _run(Status.RUNNING, T0 + timedelta(hours=1))
    assert _listed(first, again) == [first, again]
    other_org = _run(Status.SUCCESS, T0, org="globex")
    assert _listed(first, other_org) == [first, other_org]
