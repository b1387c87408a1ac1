"""Which plan a search takes: a selective term's candidate ids, or a common term's walk."""

from __future__ import annotations

from services.query import repo
from services.query.deps import Ctx
from services.query.filters import ListFilters, search_pattern
from services.query.where import search_agents


async def search_candidates(ctx: Ctx, filters: ListFilters) -> list[str] | None:
    """For a search, the matching ids among the agents the caller lists if the term is
    selective there (fewer than `search_candidates`), else None: the list keeps its ordered
    scan with the ILIKE. Judged on visible rows only (migration 0014), so neither the plan
    nor the count it gives (exact, or a bounded lower bound) reveals rows the caller cannot
    see."""
    cap = ctx.state.settings.search_candidates
    if filters.search is None or cap <= 0:
        return None
    agents = search_agents(ctx.scope.agents, filters.agent_name)
    return await repo.search_candidates(
        ctx.conn, search_pattern(filters.search), cap=cap, agents=agents
    )
