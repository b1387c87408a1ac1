"""Fixtures of the fuzzers: one seeded `fleetwatch query` process per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.isolation.world import World, seeded_query
from tests.procs import Service


@pytest_asyncio.fixture(scope="module")
async def world_query(nats_url: str, database_url: str) -> AsyncIterator[tuple[Service, World]]:
    async with seeded_query(nats_url, database_url) as found:
        yield found
