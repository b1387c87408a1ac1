"""Small operator commands that belong to no single service: migrate, token."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import asyncpg
from pydantic import TypeAdapter, ValidationError

from shared.auth import Role, Subject, mint_token
from shared.db import connect
from shared.events import is_valid_name
from shared.migrate import migrate
from shared.settings import CommonSettings
from shared.urls import redacted

#: How long an operator command waits for PostgreSQL to answer (asyncpg alone waits 60 s).
DB_CONNECT_TIMEOUT_S = 10.0


async def connect_database(
    database_url: str, *, setting: str = "DATABASE_URL or --database-url"
) -> asyncpg.Connection:
    """A connection for an operator command, or ConnectionError naming the database and the
    setting to check when the server does not answer (refused, unknown host, silent)."""
    try:
        async with asyncio.timeout(DB_CONNECT_TIMEOUT_S):
            return await connect(database_url)
    except (ValueError, OverflowError) as exc:  # asyncpg reading the URL (a port of letters)
        raise ConnectionError(
            f"database URL {redacted(database_url)} cannot be read ({exc}); check {setting}"
        ) from None
    except (OSError, TimeoutError) as exc:
        detail = (
            f"no answer within {DB_CONNECT_TIMEOUT_S:g} s"
            if isinstance(exc, TimeoutError)
            else f"{type(exc).__name__}: {exc}"
        )
        raise ConnectionError(
            f"database at {redacted(database_url)} unreachable ({detail}); is PostgreSQL "
            f"running? check {setting}"
        ) from None


async def _migrate(database_url: str) -> list[str]:
    conn = await connect_database(database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def migrate_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="fleetwatch migrate", description="apply the schema")
    parser.add_argument("--database-url", help="default: $DATABASE_URL")
    args = parser.parse_args(argv)
    url = args.database_url or CommonSettings().database_url
    applied = asyncio.run(_migrate(url))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def _name(value: str) -> str:
    if not is_valid_name(value):
        raise argparse.ArgumentTypeError(f"{value!r} is no org name (letters, digits, _ and -)")
    return value


_SUBJECT: TypeAdapter[str] = TypeAdapter(Subject)


def _user(value: str) -> str:
    try:
        return _SUBJECT.validate_python(value)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} cannot be a token's subject: {exc.errors()[0]['msg']}"
        ) from None


def _seconds(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is no whole number of seconds") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return seconds


def token_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fleetwatch token",
        description="mint a development HS256 token signed with $FLEETWATCH_JWT_SECRET; "
        "prints only the token on stdout",
    )
    parser.add_argument("--org", required=True, type=_name, help="the org the token acts in")
    parser.add_argument("--user", required=True, type=_user, help="the token's subject")
    parser.add_argument("--role", required=True, choices=[r.value for r in Role], help="its role")
    parser.add_argument("--ttl", type=_seconds, default=86_400, help="seconds (default one day)")
    args = parser.parse_args(argv)
    secret = CommonSettings().jwt_secret.get_secret_value()
    print(mint_token(secret=secret, org=args.org, user=args.user, role=args.role, ttl_s=args.ttl))
    return 0
