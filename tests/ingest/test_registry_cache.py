"""RegistryCache: what was written lately is skipped, and comes back when it matters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.ingest.registry import Registration, RegistryCache

T = datetime(2026, 5, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def wanted(seen: datetime, project: str | None = "billing") -> Registration:
    return Registration(
        orgs={"acme"},
        agents={("acme", "bot"): (project, seen)},
        projects={("acme", "billing")},
        workflows={("acme", "daily"): "billing"},
    )


def test_everything_is_pending_until_remembered() -> None:
    cache = RegistryCache(clock=Clock())
    first = cache.pending(wanted(T))
    assert first == wanted(T)
    # Not committed yet (the transaction may still fail): still pending.
    assert cache.pending(wanted(T)) == wanted(T)
    cache.remember(first)
    assert not cache.pending(wanted(T + timedelta(milliseconds=500)))


def test_agent_comes_back_when_last_seen_moves_past_the_resolution() -> None:
    cache = RegistryCache(clock=Clock(), resolution=timedelta(seconds=1))
    cache.remember(wanted(T))
    later = cache.pending(wanted(T + timedelta(seconds=2)))
    assert later.agents == {("acme", "bot"): ("billing", T + timedelta(seconds=2))}
    assert not later.orgs
    assert not later.projects
    assert not later.workflows


def test_agent_comes_back_when_it_first_gets_a_project() -> None:
    cache = RegistryCache(clock=Clock())
    cache.remember(wanted(T, project=None))
    assert cache.pending(wanted(T)).agents == {("acme", "bot"): ("billing", T)}
    cache.remember(wanted(T))
    assert not cache.pending(wanted(T, project=None))


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = RegistryCache(ttl_s=60, clock=clock)
    cache.remember(wanted(T))
    clock.now = 59.0
    assert not cache.pending(wanted(T))
    clock.now = 61.0
    assert cache.pending(wanted(T)) == wanted(T)


def test_the_cache_is_bounded() -> None:
    cache = RegistryCache(clock=Clock(), max_entries=10)
    for i in range(30):
        cache.remember(Registration(orgs={f"org-{i}"}))
    assert cache.pending(Registration(orgs={"org-0"})).orgs == {"org-0"}
    assert len(cache._written) <= 11


def test_forget_makes_everything_pending_again() -> None:
    cache = RegistryCache(clock=Clock())
    cache.remember(wanted(T))
    cache.forget()
    assert cache.pending(wanted(T)) == wanted(T)
