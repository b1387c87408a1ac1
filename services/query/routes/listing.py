"""The filtered list of executions, fleet-wide and per agent."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from services.query import repo
from services.query.cursor import CursorError, CursorKey, decode_cursor, encode_cursor
from services.query.deps import CallerDep, Ctx, require_agent_visible, require_fleet_wide
from services.query.filters import FilterError, ListQuery, parse_list_query
from services.query.views import summary
from services.query.where import after, filtered

router = APIRouter(tags=["executions"])

# Declared for OpenAPI only: the values are read (and validated) by `parse_list_query`,
# which also refuses unknown names, so a typo never widens the list.
Multi = Annotated[list[str] | None, Query()]
One = Annotated[str | None, Query()]


async def run_list(ctx: Ctx, query: ListQuery) -> dict[str, Any]:
    """One page of the list, the total count and the cursor of the next page."""
    filters, page = query.filters, query.page
    for name in filters.agent_name:
        require_agent_visible(ctx, name)
    base = filtered(ctx.scope.org, ctx.scope.agents, filters)
    where = base
    if page.cursor is not None:
        try:
            where = after(base, decode_cursor(page.cursor))
        except CursorError as exc:
            raise FilterError("cursor", str(exc)) from None
    rows = await repo.list_page(ctx.conn, where, limit=page.limit + 1, offset=page.offset)
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    total, exact = await repo.count(ctx.conn, base, cap=ctx.state.settings.exact_count_limit)
    next_cursor = None
    if has_more and rows:
        last = rows[-1]
        next_cursor = encode_cursor(CursorKey(sort_at=last["sort_at"], id=last["id"]))
    return {
        "executions": [summary(r) for r in rows],
        "total_count": total,
        "total_count_exact": exact,
        "has_more": has_more,
        "next_cursor": next_cursor,
        "filters_applied": filters.applied(),
        "limit": page.limit,
    }


@router.get("/api/executions", summary="List executions (filtered, newest first)")
async def list_executions(
    request: Request,
    ctx: CallerDep,
    agent_name: Multi = None,
    status: Multi = None,
    triggered_by: Multi = None,
    project: Multi = None,
    workflow: Multi = None,
    start_time: One = None,
    end_time: One = None,
    search: One = None,
    limit: Annotated[int | None, Query(ge=1, le=200)] = None,
    cursor: One = None,
    offset: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any]:
    """Repeated values of one filter are OR'd (`status=failed&status=running`)."""
    require_fleet_wide(ctx)
    return await run_list(ctx, parse_list_query(request.query_params.multi_items()))


@router.get("/api/agents/{name}/executions", summary="List one agent's executions")
async def list_agent_executions(
    name: str,
    request: Request,
    ctx: CallerDep,
    status: Multi = None,
    triggered_by: Multi = None,
    project: Multi = None,
    workflow: Multi = None,
    start_time: One = None,
    end_time: One = None,
    search: One = None,
    limit: Annotated[int | None, Query(ge=1, le=200)] = None,
    cursor: One = None,
    offset: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any]:
    """The same list for one agent; clients may use it for agents shared with them."""
    items = request.query_params.multi_items()
    if any(key == "agent_name" for key, _ in items):
        raise FilterError("agent_name", "the agent is given in the path")
    query = parse_list_query([*items, ("agent_name", name)])
    require_agent_visible(ctx, name)
    return await run_list(ctx, query)
