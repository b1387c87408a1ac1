"""Numbered SQL migrations, applied once each and recorded in `schema_migrations`."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any fixed number: it only has to keep two migrators of one database apart.
_LOCK_KEY = 7_465_321_104
# How long one migration may wait for a table lock before it gives up (and rolls back). A
# DDL lock waiting behind an open writer queues every later writer behind itself, so a
# stuck wait stalls ingest; and the backend of a killed migrate Job waits on unnoticed,
# holding the migration lock that its retry then waits for. Failing lets the retry try again.
LOCK_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The migrations shipped in `shared/migrations`, in order."""
    found = []
    for entry in resources.files("shared.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; return the names applied. Safe to run concurrently."""
    applied: list[str] = []
    # Locked before the table is created too: two `CREATE TABLE IF NOT EXISTS` at once on a
    # fresh database can both find it missing, and the second fails on its type's name.
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in load_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                # Local to this transaction: the wait for the migration lock above is meant to
                # be long, as another migrator is busy there.
                await conn.execute(
                    "SELECT set_config('lock_timeout', $1, true)", f"{int(LOCK_TIMEOUT_S * 1000)}ms"
                )
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("applied migration %s", migration.name)
            applied.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied
