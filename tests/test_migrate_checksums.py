"""`fleetwatch migrate` keeps each applied migration's checksum and says when the database and
the shipped files disagree, instead of passing over it in silence."""

from __future__ import annotations

import logging

import pytest

from shared.db import connect
from shared.migrate import load_migrations, migrate


async def test_an_applied_migration_edited_since_is_named_and_not_applied_again(
    fresh_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await connect(fresh_database_url)
    try:
        # As if 0002's file had been edited after this database applied it.
        await conn.execute("UPDATE schema_migrations SET checksum = 'abc123' WHERE version = 2")
        with caplog.at_level(logging.WARNING, logger="shared.migrate"):
            assert await migrate(conn) == []
        second = next(m for m in load_migrations() if m.version == 2)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert second.name in warnings[0]
        assert "new migration" in warnings[0]
        # What was applied stays recorded as applied: the warning repeats on the next run.
        assert await conn.fetchval("SELECT checksum FROM schema_migrations WHERE version = 2") == (
            "abc123"
        )
    finally:
        await conn.close()


async def test_a_database_migrated_before_checksums_gets_them_without_a_warning(
    fresh_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await connect(fresh_database_url)
    try:
        await conn.execute("ALTER TABLE schema_migrations DROP COLUMN checksum")
        with caplog.at_level(logging.WARNING, logger="shared.migrate"):
            assert await migrate(conn) == []
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        stored = dict(await conn.fetch("SELECT version, checksum FROM schema_migrations"))
        assert stored == {m.version: m.checksum for m in load_migrations()}
    finally:
        await conn.close()


async def test_migrations_a_newer_fleetwatch_applied_are_named(
    fresh_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await connect(fresh_database_url)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (9001, '9001_future.sql')"
        )
        with caplog.at_level(logging.WARNING, logger="shared.migrate"):
            assert await migrate(conn) == []
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "9001" in warnings[0]
        assert "newer" in warnings[0]
    finally:
        await conn.close()


async def test_a_database_that_applied_0002_before_its_mend_gets_no_warning(
    fresh_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """0002 was mended in place (it named pg_trgm's operator class unqualified): a database
    that applied the earlier text has the same schema and is not warned about it."""
    earlier = "7ef2128f16a3516c2e11554c21b4ba0fd8647fd84056e90675c30adeb21e1d69"
    conn = await connect(fresh_database_url)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = $1 WHERE version = 2", earlier)
        with caplog.at_level(logging.WARNING, logger="shared.migrate"):
            assert await migrate(conn) == []
        assert [r for r in caplog.records if r.levelno == logging.WARNING] == []
    finally:
        await conn.close()
