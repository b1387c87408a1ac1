"""Fixtures of the ingest tests that drive the handler on the real NATS JetStream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext

from services.ingest.settings import IngestSettings
from shared.streams import ensure_streams
from shared.subjects import Subjects


@dataclass(frozen=True)
class Wired:
    """Ingest settings for this test's subjects, and a connection whose streams exist."""

    settings: IngestSettings
    nc: Client
    js: JetStreamContext


@contextlib.asynccontextmanager
async def streams_of(nats_url: str, database_url: str, subjects: Subjects) -> AsyncIterator[Wired]:
    """A connection to NATS on which the ingest streams of `subjects` exist."""
    settings = IngestSettings(
        nats_url=nats_url, database_url=database_url, subject_prefix=subjects.prefix
    )
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        yield Wired(settings, nc, js)
    finally:
        await nc.close()


@pytest_asyncio.fixture
async def wired(nats_url: str, database_url: str, subjects: Subjects) -> AsyncIterator[Wired]:
    async with streams_of(nats_url, database_url, subjects) as found:
        yield found
