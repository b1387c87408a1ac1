"""Numbered SQL migrations, applied once each and recorded in `schema_migrations`."""

from __future__ import annotations

import hashlib
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


#: Earlier texts of migrations mended in place, as applied to databases then: the same schema,
#: so no warning. 0002 could not apply where pg_trgm lives off the search_path.
_EARLIER_CHECKSUMS: dict[int, frozenset[str]] = {
    2: frozenset({"7ef2128f16a3516c2e11554c21b4ba0fd8647fd84056e90675c30adeb21e1d69"}),
}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The migrations shipped in `shared/migrations`, in order."""
    found = []
    for entry in resources.files("shared.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(
                Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8"))
            )
        elif entry.name.endswith(".sql"):
            # Skipped in silence, it was never applied anywhere, and nothing said so.
            raise RuntimeError(
                f"migration file {entry.name!r} is not named NNNN_lowercase_words.sql "
                "(four digits, then a-z, 0-9 and _): rename it, or it is never applied"
            )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


_HAS_CHECKSUM = """
SELECT EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = 'schema_migrations'::regclass AND attname = 'checksum'
                 AND NOT attisdropped)
"""


async def _check_recorded(
    conn: asyncpg.Connection, recorded: dict[int, str | None], shipped: list[Migration]
) -> None:
    """Warn about applied migrations whose file has changed since, and about applied ones this
    code does not ship (a newer fleetwatch migrated the database); record the checksums of
    migrations applied before checksums were kept."""
    known = {m.version: m for m in shipped}
    unknown = sorted(set(recorded) - set(known))
    if unknown:
        log.warning(
            "the database holds migrations this fleetwatch does not ship (%s): a newer "
            "version migrated it, and this one may not understand its schema",
            ", ".join(f"{v:04d}" for v in unknown),
        )
    for version, checksum in sorted(recorded.items()):
        migration = known.get(version)
        if migration is None:
            continue
        if checksum is None:
            await conn.execute(
                "UPDATE schema_migrations SET checksum = $2 WHERE version = $1",
                version,
                migration.checksum,
            )
        elif checksum != migration.checksum and checksum not in _EARLIER_CHECKSUMS.get(
            version, frozenset()
        ):
            log.warning(
                "migration %s differs from the one applied to this database (checksum %s, "
                "now %s); it is not applied again: put a schema change in a new migration",
                migration.name,
                checksum[:12],
                migration.checksum[:12],
            )


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
        if not await conn.fetchval(_HAS_CHECKSUM):
            await conn.execute("ALTER TABLE schema_migrations ADD COLUMN checksum text")
        recorded = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        shipped = load_migrations()
        await _check_recorded(conn, recorded, shipped)
        done = set(recorded)
        for migration in shipped:
            if migration.version in done:
                continue
            try:
                async with conn.transaction():
                    # Local to this transaction: the wait for the migration lock above is meant
                    # to be long, as another migrator is busy there.
                    await conn.execute(
                        "SELECT set_config('lock_timeout', $1, true)",
                        f"{int(LOCK_TIMEOUT_S * 1000)}ms",
                    )
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except Exception as exc:
                # The error alone ("canceling statement due to lock timeout") named neither
                # the migration nor what state it left.
                log.error(
                    "migration %s failed (%s) and was rolled back; %s; running "
                    "`fleetwatch migrate` again retries it",
                    migration.name,
                    type(exc).__name__,
                    f"this run applied before it: {', '.join(applied)}"
                    if applied
                    else "this run applied nothing before it",
                )
                if conn.is_closed():
                    # asyncpg's error is then about the transaction's end on a closed
                    # connection ("cannot call Transaction.__aexit__()"), not the loss.
                    raise ConnectionError(
                        f"the database connection was lost while applying {migration.name} "
                        "(it was rolled back)"
                    ) from exc
                raise
            log.info("applied migration %s", migration.name)
            applied.append(migration.name)
    finally:
        if not conn.is_closed():
            # A connection lost mid-run took the session lock with it; unlocking on it would
            # raise and hide the error that matters.
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied
