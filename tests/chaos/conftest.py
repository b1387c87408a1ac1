"""Fixtures of the fault matrix: its size (short, or long with `--chaos-long`) and results."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.harness import ChaosResult, Scale, write_table


@pytest.fixture(scope="session")
def scale(request: pytest.FixtureRequest) -> Scale:
    return Scale.pick(bool(request.config.getoption("--chaos-long", default=False)))


@pytest.fixture(scope="session")
def chaos_results(scale: Scale) -> Iterator[list[ChaosResult]]:
    """Every fault run appends its row; the table is written when the session ends."""
    results: list[ChaosResult] = []
    yield results
    if results:
        write_table(sorted(results, key=lambda r: int(r.fault.split(".")[0])), scale.long)
