"""`fleetwatch admin`: create orgs and users, set agent owner/display name, manage shares."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import asyncpg
from pydantic import TypeAdapter, ValidationError

from shared.auth import Role, Subject
from shared.commands import connect_database
from shared.events import is_valid_name
from shared.settings import CommonSettings

_SUBJECT: TypeAdapter[str] = TypeAdapter(Subject)

CREATE_ORG = """
INSERT INTO organizations (org, display_name) VALUES ($1, $2)
ON CONFLICT (org) DO UPDATE SET display_name = coalesce(EXCLUDED.display_name,
                                                        organizations.display_name)
"""
PUT_USER = """
INSERT INTO users (org, user_id, role, display_name) VALUES ($1, $2, $3, $4)
ON CONFLICT (org, user_id) DO UPDATE SET role = EXCLUDED.role,
    display_name = coalesce(EXCLUDED.display_name, users.display_name)
"""
PUT_AGENT = """
INSERT INTO agents (org, name, display_name, owner, project) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (org, name) DO UPDATE SET
    display_name = coalesce(EXCLUDED.display_name, agents.display_name),
    owner = coalesce(EXCLUDED.owner, agents.owner),
    project = coalesce(EXCLUDED.project, agents.project)
"""
ADD_SHARE = (
    "INSERT INTO agent_shares (org, agent_name, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
)
REMOVE_SHARE = "DELETE FROM agent_shares WHERE org = $1 AND agent_name = $2 AND user_id = $3"


def _name(text: str) -> str:
    if not is_valid_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} must match [A-Za-z0-9_-]{{1,64}}")
    return text


def _user(text: str) -> str:
    """A user id as a token's `sub` carries it: a value no token can hold matches nobody."""
    try:
        return _SUBJECT.validate_python(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be 1 to 200 characters without control characters, as a token's subject"
        ) from None


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetwatch admin", description=__doc__)
    parser.add_argument("--database-url", help="default: $DATABASE_URL")
    sub = parser.add_subparsers(dest="command", required=True)
    org = sub.add_parser("org", help="create an organization (or rename it)")
    org.add_argument("org", type=_name)
    org.add_argument("--display-name", type=_text)
    user = sub.add_parser("user", help="create a user or change their role")
    user.add_argument("--org", required=True, type=_name)
    user.add_argument("--user", required=True, type=_user)
    user.add_argument("--role", required=True, choices=[r.value for r in Role])
    user.add_argument("--display-name", type=_text)
    agent = sub.add_parser("agent", help="set an agent's owner, display name or project")
    agent.add_argument("--org", required=True, type=_name)
    agent.add_argument("--agent", required=True, type=_name)
    agent.add_argument("--owner", type=_user)
    agent.add_argument("--display-name", type=_text)
    agent.add_argument("--project", type=_text)
    for name, help_ in (("share", "share an agent with a user"), ("unshare", "stop sharing")):
        share = sub.add_parser(name, help=help_)
        share.add_argument("--org", required=True, type=_name)
        share.add_argument("--agent", required=True, type=_name)
        # Unsharing takes any id: a share stored before ids were checked can still be removed.
        share.add_argument("--user", required=True, type=_user if name == "share" else str)
    return parser


async def run(args: argparse.Namespace, database_url: str) -> str:
    """Apply one command; return what to print."""
    conn = await connect_database(database_url)
    try:
        if args.command == "org":
            await conn.execute(CREATE_ORG, args.org, args.display_name)
            return f"organization {args.org} ready"
        if args.command == "user":
            await conn.execute(PUT_USER, args.org, args.user, args.role, args.display_name)
            return f"user {args.user} is {args.role} of {args.org}"
        if args.command == "agent":
            await conn.execute(
                PUT_AGENT, args.org, args.agent, args.display_name, args.owner, args.project
            )
            return f"agent {args.agent} of {args.org} updated"
        if args.command == "share":
            await conn.execute(ADD_SHARE, args.org, args.agent, args.user)
            return f"agent {args.agent} shared with {args.user}"
        status = await conn.execute(REMOVE_SHARE, args.org, args.agent, args.user)
        if not status.endswith(" 1"):
            raise LookupError(f"agent {args.agent} was not shared with {args.user}")
        return f"agent {args.agent} no longer shared with {args.user}"
    finally:
        await conn.close()


def main(argv: Sequence[str] = ()) -> int:
    args = _parser().parse_args(list(argv))
    url = args.database_url or CommonSettings().database_url
    try:
        print(asyncio.run(run(args, url)))
    except asyncpg.ForeignKeyViolationError as exc:
        print(f"fleetwatch admin: unknown organization or agent ({exc.detail})", file=sys.stderr)
        return 1
    except LookupError as exc:
        print(f"fleetwatch admin: {exc}", file=sys.stderr)
        return 1
    return 0
