"""Small operator commands that belong to no single service: migrate, token."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from pydantic import TypeAdapter, ValidationError

from shared.auth import Role, Subject, mint_token
from shared.db import connect
from shared.events import is_valid_name
from shared.migrate import migrate
from shared.settings import CommonSettings


async def _migrate(database_url: str) -> list[str]:
    conn = await connect(database_url)
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
    seconds = int(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return seconds


def token_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fleetwatch token", description="mint a development HS256 token"
    )
    parser.add_argument("--org", required=True, type=_name)
    parser.add_argument("--user", required=True, type=_user)
    parser.add_argument("--role", required=True, choices=[r.value for r in Role])
    parser.add_argument("--ttl", type=_seconds, default=86_400, help="seconds (default one day)")
    args = parser.parse_args(argv)
    secret = CommonSettings().jwt_secret.get_secret_value()
    print(mint_token(secret=secret, org=args.org, user=args.user, role=args.role, ttl_s=args.ttl))
    return 0
