"""Per-org API keys of the HTTP gateway: make, check, store (hash only), and the CLI.

A key reads `fwk_<key_id>_<secret>`; the database keeps the key id and the sha256 of the
whole key, so a leaked table holds nothing a caller can present. The secret carries
256 bits of randomness, which makes a plain (unsalted) hash sufficient.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.events import is_valid_name
from shared.settings import CommonSettings

PREFIX = "fwk"

INSERT_ORG = "INSERT INTO organizations (org) VALUES ($1) ON CONFLICT (org) DO NOTHING"
INSERT_KEY = "INSERT INTO api_keys (org, key_id, key_hash, label) VALUES ($1, $2, $3, $4)"
SELECT_ACTIVE = "SELECT org, key_hash FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL"
LIST_KEYS = """
SELECT key_id, label, created_at, revoked_at FROM api_keys WHERE org = $1 ORDER BY created_at
"""
REVOKE_KEY = """
UPDATE api_keys SET revoked_at = now()
WHERE key_id = $1 AND org = $2 AND revoked_at IS NULL RETURNING key_id
"""


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    key: str
    key_hash: str


@dataclass(frozen=True, slots=True)
class KeyRow:
    key_id: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def make_key() -> NewKey:
    key_id = secrets.token_hex(8)
    key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id=key_id, key=key, key_hash=hash_key(key))


def key_id_of(key: str) -> str | None:
    """The key id a presented key names, or None when it is not shaped like one of ours."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != PREFIX or not key_id or not secret or len(key) > 200:
        return None
    if not all(c in "0123456789abcdef" for c in key_id):
        return None
    return key_id


def named_key_id(text: str) -> str:
    """The key id an operator named: the id `list` shows, or a whole key (`fwk_<id>_<secret>`,
    e.g. the one that leaked) or its `fwk_<id>` start, pasted as it is."""
    text = text.strip()
    prefix, sep, rest = text.partition("_")
    if prefix == PREFIX and sep:
        return rest.partition("_")[0]
    return text


def matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)


# -- database ----------------------------------------------------------------------------------


async def create_key(conn: asyncpg.Connection, org: str, label: str | None) -> NewKey:
    new = make_key()
    async with conn.transaction():
        await conn.execute(INSERT_ORG, org)
        await conn.execute(INSERT_KEY, org, new.key_id, new.key_hash, label)
    return new


async def org_for_key(conn: asyncpg.Connection | asyncpg.Pool, key: str) -> str | None:
    """The org an active key belongs to, or None for a missing, wrong or revoked key."""
    key_id = key_id_of(key)
    if key_id is None:
        return None
    row = await conn.fetchrow(SELECT_ACTIVE, key_id)
    if row is None or not matches(key, row["key_hash"]):
        return None
    return str(row["org"])


async def list_keys(conn: asyncpg.Connection, org: str) -> list[KeyRow]:
    return [KeyRow(**dict(r)) for r in await conn.fetch(LIST_KEYS, org)]


async def revoke_key(conn: asyncpg.Connection, org: str, key_id: str) -> bool:
    return await conn.fetchval(REVOKE_KEY, key_id, org) is not None


# -- CLI ---------------------------------------------------------------------------------------


def _org(value: str) -> str:
    if not is_valid_name(value):
        raise argparse.ArgumentTypeError(f"{value!r} is no org name (letters, digits, _ and -)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetwatch apikey", description="manage per-org API keys of the HTTP gateway"
    )
    parser.add_argument("--database-url", help="default: $DATABASE_URL")
    commands = parser.add_subparsers(dest="command", required=True)
    org_help = "the org the key belongs to"
    create = commands.add_parser("create", help="make a key and print it (shown only once)")
    create.add_argument("--org", required=True, type=_org, help=f"{org_help} (made if new)")
    create.add_argument("--label", help="a note to tell keys apart in `list`")
    listing = commands.add_parser("list", help="list an org's keys (never the keys themselves)")
    listing.add_argument("--org", required=True, type=_org, help=org_help)
    revoke = commands.add_parser("revoke", help="revoke a key by its id (or the key itself)")
    revoke.add_argument("--org", required=True, type=_org, help=org_help)
    revoke.add_argument(
        "key_id", type=named_key_id, help="the id `list` shows, or the whole key (fwk_...)"
    )
    return parser


async def _run(args: argparse.Namespace) -> int:
    from shared.commands import connect_database  # the CLI's, not the gateway's, import

    conn = await connect_database(args.database_url or CommonSettings().database_url)
    try:
        if args.command == "create":
            new = await create_key(conn, args.org, args.label)
            print(new.key)
            return 0
        if args.command == "list":
            for row in await list_keys(conn, args.org):
                state = f"revoked {row.revoked_at.isoformat()}" if row.revoked_at else "active"
                print(f"{row.key_id}\t{row.label or '-'}\t{row.created_at.isoformat()}\t{state}")
            return 0
        if await revoke_key(conn, args.org, args.key_id):
            print(f"revoked {args.key_id}")
            return 0
        print(f"fleetwatch apikey: no active key {args.key_id} in org {args.org}", file=sys.stderr)
        return 1
    finally:
        await conn.close()


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    return asyncio.run(_run(args))
