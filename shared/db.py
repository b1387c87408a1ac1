"""The asyncpg pool every service uses, with JSON codecs set once."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _jsonb_encode(value: Any) -> bytes:
    # jsonb's binary format is a version byte (1) followed by the JSON text.
    return b"\x01" + orjson.dumps(value)


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary codecs, so that COPY (binary) works with JSON columns too.
    await conn.set_type_codec(
        "jsonb",
        encoder=_jsonb_encode,
        decoder=_jsonb_decode,
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec("json", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


#: Seconds a new pooled connection may take (TCP, TLS, authentication).
CONNECT_TIMEOUT_S = 10.0


async def create_pool(
    database_url: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any
) -> asyncpg.Pool:
    """A pool whose connections speak JSON through orjson.

    A new connection gives up after `CONNECT_TIMEOUT_S` (asyncpg waits 60 s): a database that
    swallows packets would otherwise hold a request, or a batch of a service being stopped,
    past Kubernetes' 30 s grace period."""
    kwargs.setdefault("timeout", CONNECT_TIMEOUT_S)
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        **kwargs,
    )
    assert pool is not None
    return pool


async def connect(database_url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_url)
    await _init_connection(conn)
    return conn
