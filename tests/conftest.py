"""Fixtures for every tier: a fresh database per module, a fresh subject prefix per test.

Tests use the servers named by `NATS_URL` and `DATABASE_URL` (defaults: the local ones),
so CI and a developer's session can share them without seeing each other's data.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import pytest
import pytest_asyncio
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared.db import connect
from shared.migrate import migrate
from shared.settings import DEFAULT_DATABASE_URL, DEFAULT_NATS_URL
from shared.subjects import Subjects

NATS_URL = os.environ.get("NATS_URL", DEFAULT_NATS_URL)
DATABASE_URL = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)


def pytest_addoption(parser: pytest.Parser) -> None:
    # Registered here (the top-level conftest) so that `pytest tests/chaos --chaos-long` works.
    parser.addoption(
        "--chaos-long",
        action="store_true",
        default=False,
        help="run the long versions of the fault matrix and write bench/results/chaos.md",
    )


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def nats_url() -> str:
    return NATS_URL


@pytest_asyncio.fixture(scope="session")
async def template_db() -> AsyncIterator[str]:
    """A migrated database, copied for each test module (CREATE DATABASE ... TEMPLATE)."""
    name = f"fwtpl_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(DATABASE_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await connect(with_database(DATABASE_URL, name))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    try:
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _create_db(template: str) -> str:
    name = f"fwtest_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(DATABASE_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return name


async def _drop_db(name: str) -> None:
    admin = await asyncpg.connect(DATABASE_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest_asyncio.fixture(scope="module")
async def database_url(template_db: str) -> AsyncIterator[str]:
    """A migrated database of this test module's own."""
    name = await _create_db(template_db)
    try:
        yield with_database(DATABASE_URL, name)
    finally:
        await _drop_db(name)


@pytest_asyncio.fixture
async def fresh_database_url(template_db: str) -> AsyncIterator[str]:
    """A migrated database of this one test's own (for tests that count whole tables)."""
    name = await _create_db(template_db)
    try:
        yield with_database(DATABASE_URL, name)
    finally:
        await _drop_db(name)


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def org() -> str:
    """An organization name no other test uses."""
    return f"org-{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture
async def subjects(nats_url: str) -> AsyncIterator[Subjects]:
    """A subject prefix (and so streams) of this test's own; its streams are deleted after."""
    found = Subjects(f"t{uuid.uuid4().hex[:10]}")
    try:
        yield found
    finally:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for stream in (found.events_stream, found.dlq_stream):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)
        await nc.close()


@pytest_asyncio.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """A JetStream context on a connection of this test's own, closed after it."""
    nc = await nats.connect(nats_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@pytest.fixture
def service_env(nats_url: str, database_url: str, subjects: Subjects) -> dict[str, str]:
    """Environment for a service process started by a test."""
    env = dict(os.environ)
    env.update(
        NATS_URL=nats_url,
        DATABASE_URL=database_url,
        FLEETWATCH_SUBJECT_PREFIX=subjects.prefix,
        FLEETWATCH_JWT_SECRET="fleetwatch-test-secret-0123456789abcdef",
    )
    return env
