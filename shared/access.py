"""Who may see what (DESIGN.md "Access"): the caller's scope, computed once per request."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from shared.auth import Claims, Role

# Users see the agents they own plus those shared with them; clients only the shared ones.
USER_AGENTS = """
SELECT name FROM agents WHERE org = $1 AND owner = $2
UNION
SELECT agent_name FROM agent_shares WHERE org = $1 AND user_id = $2
"""
CLIENT_AGENTS = "SELECT agent_name AS name FROM agent_shares WHERE org = $1 AND user_id = $2"

#: The start of every scoped read (the query service's, the notifier's scope): the application
#: role, whose row-level-security policies (migration 0003) show only the rows of the org set
#: here. The services connect as the tables' owner, to whom the policies do not apply.
ENTER_ORG = (
    "SELECT set_config('role', 'fleetwatch_app', true), set_config('fleetwatch.org', $1, true)"
)


async def enter_org(conn: asyncpg.Connection, org: str) -> None:
    """Switch this transaction to the app role with `org` set: RLS then filters every read."""
    await conn.execute(ENTER_ORG, org)


@dataclass(frozen=True, slots=True)
class Scope:
    """The rows a caller may see: one org, and either all its agents or a fixed set."""

    org: str
    user: str
    role: Role
    #: None for admins (every agent of the org); otherwise exactly these agents.
    agents: frozenset[str] | None

    def allows(self, agent_name: str) -> bool:
        return self.agents is None or agent_name in self.agents

    @property
    def fleet_wide(self) -> bool:
        """May use the fleet-wide list, stats and export (clients may not)."""
        return self.role is not Role.CLIENT

    @property
    def cache_key(self) -> tuple[str, str, str]:
        """Equal for callers who see the same rows (all admins of an org share one key)."""
        if self.agents is None:
            return (self.org, "*", "")
        return (self.org, self.role.value, ",".join(sorted(self.agents)))


async def load_scope(conn: asyncpg.Connection, claims: Claims) -> Scope:
    """The caller's scope from their token and the agents/shares tables."""
    if claims.role is Role.ADMIN:
        agents: frozenset[str] | None = None
    else:
        sql = CLIENT_AGENTS if claims.role is Role.CLIENT else USER_AGENTS
        agents = frozenset(r["name"] for r in await conn.fetch(sql, claims.org, claims.sub))
    return Scope(org=claims.org, user=claims.sub, role=claims.role, agents=agents)
