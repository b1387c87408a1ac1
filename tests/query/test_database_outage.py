"""The database away or behind: /readyz says so, and requests get 503 with Retry-After, not 500.

The database is reached through a TCP relay of the test's own, so that the test can cut it
(every open connection reset, new ones refused) and restore it, as a failover or a restart
of Postgres would, without touching the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest_asyncio

from services.query.app import create_app
from services.query.settings import QuerySettings
from shared.db import connect
from shared.migrate import migrate
from tests.conftest import DATABASE_URL, with_database
from tests.query.helpers import add_org, insert, make_rows, settings_for, token

ORG = "outage-org"
ADMIN = token(ORG, "ada", "admin")


class Relay:
    """A TCP relay to the database's server that can be cut and restored on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()


@pytest_asyncio.fixture
async def relay(database_url: str) -> AsyncIterator[Relay]:
    parts = urlsplit(database_url)
    found = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
    await found.start()
    try:
        yield found
    finally:
        with contextlib.suppress(Exception):
            await found.cut()


def _through(database_url: str, port: int) -> str:
    parts = urlsplit(database_url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@contextlib.asynccontextmanager
async def _client(settings: QuerySettings) -> AsyncIterator[httpx.AsyncClient]:
    """As `helpers.client_for`, but an unhandled error is the 500 a real server sends."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
            yield client


async def test_requests_get_503_while_the_database_is_away(
    database_url: str, nats_url: str, relay: Relay
) -> None:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        await insert(conn, make_rows(ORG, ("a1",), 5, seed=9))
    finally:
        await conn.close()
    settings = settings_for(
        _through(database_url, relay.port), nats_url, pool_min_size=2, pool_max_size=2
    )
    async with _client(settings) as client:
        assert (await client.get("/api/executions", headers=ADMIN)).status_code == 200
        await relay.cut()
        for path in ("/api/executions", "/api/executions/stats", "/api/executions/x1"):
            for _ in range(3):  # pooled connections that died, then new ones refused
                reply = await client.get(path, headers=ADMIN)
                assert reply.status_code == 503, (path, reply.status_code, reply.text)
                assert reply.headers["retry-after"]
        assert (await client.get("/readyz")).status_code == 503
        await relay.start()  # same port: the database is back
        replies = [await client.get("/api/executions", headers=ADMIN) for _ in range(3)]
        assert replies[-1].status_code == 200


async def test_a_connection_killed_under_a_request_is_503(database_url: str, nats_url: str) -> None:
    """Postgres ends the pooled connections (a restart, `pg_terminate_backend`): a request
    that finds its connection dead gets 503, never 500, and the pool reconnects at once."""
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        settings = settings_for(database_url, nats_url, pool_min_size=2, pool_max_size=2)
        async with _client(settings) as client:
            assert (await client.get("/api/executions", headers=ADMIN)).status_code == 200
            for _ in range(3):
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                # Each dead pooled connection fails one request at most.
                replies = [await client.get("/api/executions", headers=ADMIN) for _ in range(3)]
                for reply in replies:
                    assert reply.status_code in (200, 503), reply.text
                    if reply.status_code == 503:
                        assert reply.headers["retry-after"]
                assert replies[-1].status_code == 200, [r.status_code for r in replies]
    finally:
        await conn.close()


async def test_readyz_is_503_until_the_schema_is_migrated(nats_url: str) -> None:
    """On a database without this release's migrations every API call would fail."""
    name = f"fwbare_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(DATABASE_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(DATABASE_URL, name)
    try:
        async with _client(settings_for(url, nats_url)) as client:
            reply = await client.get("/readyz")
            assert reply.status_code == 503, reply.text
            assert reply.json()["schema"] is False
            conn = await connect(url)
            try:
                await migrate(conn)
                latest = await conn.fetchrow(
                    "DELETE FROM schema_migrations WHERE version = "
                    "(SELECT max(version) FROM schema_migrations) RETURNING version, name"
                )
                behind = await client.get("/readyz")  # an older release's schema
                assert behind.status_code == 503, behind.text
                assert behind.json()["schema"] is False
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", *latest
                )
            finally:
                await conn.close()
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["schema"] is True
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_busy_pool_is_still_ready(database_url: str, nats_url: str) -> None:
    """Every pooled connection in use (a burst of slow requests) is load, not an outage:
    answering 503 there made Kubernetes take every replica out of the Service at once."""
    settings = settings_for(database_url, nats_url, pool_min_size=1, pool_max_size=1)
    async with _client(settings) as client:
        assert (await client.get("/readyz")).status_code == 200
        app_state = client._transport.app.state.query  # type: ignore[attr-defined]
        async with app_state.pool.acquire():  # the only connection, held by "a request"
            busy = await client.get("/readyz")
            assert busy.status_code == 200, busy.text
            assert busy.json()["busy"] is True
        assert (await client.get("/readyz")).json()["busy"] is False


async def test_a_busy_pool_of_a_database_never_reached_is_not_ready(
    database_url: str, nats_url: str
) -> None:
    settings = settings_for(database_url, nats_url, pool_min_size=1, pool_max_size=1)
    async with _client(settings) as client:
        app_state = client._transport.app.state.query  # type: ignore[attr-defined]
        async with app_state.pool.acquire():  # held before any readiness check passed
            assert (await client.get("/readyz")).status_code == 503
