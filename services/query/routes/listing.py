"""The filtered list of executions, fleet-wide and per agent."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request, Response

from services.query import repo
from services.query.cursor import CursorError, CursorKey, decode_cursor, encode_cursor
from services.query.deps import CallerDep, Ctx, require_agent_visible, require_fleet_wide
from services.query.filters import (
    FilterError,
    ListFilters,
    ListQuery,
    parse_agent_list_query,
    parse_list_query,
    search_pattern,
)
from services.query.search import search_candidates
from services.query.views import json_response, summary
from services.query.where import Where, after, among, filtered

router = APIRouter(tags=["executions"])

# Declared for OpenAPI only: the values are read (and validated) by `parse_list_query`,
# which also refuses unknown names, so a typo never widens the list.
Multi = Annotated[list[str] | None, Query()]
One = Annotated[str | None, Query()]


async def run_list(ctx: Ctx, query: ListQuery) -> Response:
    """One page of the list, the total count and the cursor of the next page."""
    filters, page = query.filters, query.page
    for name in filters.agent_name:
        require_agent_visible(ctx, name)
    base = filtered(ctx.scope.org, ctx.scope.agents, filters)
    candidates = await search_candidates(ctx, filters)
    walk = None  # a common term's pattern, applied to the list walked in order
    if candidates is not None:
        base = where = among(base, candidates)
    elif filters.search is not None:
        where = filtered(ctx.scope.org, ctx.scope.agents, replace(filters, search=None))
        walk = search_pattern(filters.search)
    else:
        where = base
    fingerprint = list_fingerprint(ctx.scope.cache_key, filters)
    if page.cursor is not None:
        try:
            key = decode_cursor(page.cursor)
        except CursorError as exc:
            raise FilterError("cursor", str(exc)) from None
        if key.filters is not None and key.filters != fingerprint:
            # Under other filters, or in another caller's view of the rows (another org, other
            # agents), it would start mid-list, silently skipping newer rows.
            raise FilterError(
                "cursor",
                "continues a list with other filters or of another caller; leave it out",
            )
        where = after(where, key)
    rows = await repo.list_page(
        ctx.conn, where, limit=page.limit + 1, offset=page.offset, search=walk
    )
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    if page.cursor is None and not has_more and (rows or page.offset == 0):
        total, exact = page.offset + len(rows), True  # the whole rest of the list is here
    else:
        proven = proven_matches(page.offset, len(rows), has_more=has_more)
        total, exact = await _count(
            ctx, filters, base, searched=candidates is not None, at_least=proven
        )
        if not exact:
            total = max(total, proven)
    next_cursor = None
    if has_more and rows:
        last = rows[-1]
        next_cursor = encode_cursor(
            CursorKey(sort_at=last["sort_at"], id=last["id"], filters=fingerprint)
        )
    return json_response(
        {
            "executions": [summary(r) for r in rows],
            "total_count": total,
            "total_count_exact": exact,
            "has_more": has_more,
            "next_cursor": next_cursor,
            "filters_applied": filters.applied(),
            "limit": page.limit,
        }
    )


def list_fingerprint(scope_key: tuple[str, ...], filters: ListFilters) -> str:
    """What a cursor carries to continue only its own list: the filters' fingerprint and the
    rows the caller may see (`Scope.cache_key`: equal for callers who see the same rows)."""
    raw = orjson.dumps([list(scope_key), filters.fingerprint()])
    return hashlib.sha256(raw).hexdigest()[:16]


def proven_matches(offset: int, shown: int, *, has_more: bool) -> int:
    """How many rows a page proves match: an empty page proves nothing, not even that the
    `offset` rows before it exist."""
    return offset + shown + int(has_more) if shown else 0


async def _count(
    ctx: Ctx,
    filters: ListFilters,
    base: Where,
    *,
    searched: bool = False,
    at_least: int = 0,
) -> tuple[int, bool]:
    """The capped count of the whole list, cached briefly per (scope, filters).

    Paging through one list and a dashboard refreshing its first page then count once per
    `count_ttl_s`, not on every request (the count may lag new rows by that long). `searched`:
    `base` holds a selective search's candidate ids, so its exact count is cheap. `at_least`:
    the rows the page proves match; an exact cached count below it (rows arrived since) is
    never served as exact, it is counted again.
    """
    cap = ctx.state.settings.exact_count_limit
    cache = ctx.state.count_cache
    key = (ctx.scope.cache_key, filters, cap)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None and not (hit[1] and hit[0] < at_least):
            ctx.state.metrics.cache.labels("count", "hit").inc()
            return hit
        ctx.state.metrics.cache.labels("count", "miss").inc()
    budget = ctx.state.settings.search_count_scan
    if filters.search is not None and budget > 0 and not searched:
        unsearched = filtered(ctx.scope.org, ctx.scope.agents, replace(filters, search=None))
        pattern = search_pattern(filters.search)
        result = await repo.search_count(ctx.conn, unsearched, pattern, budget=budget)
    else:
        result = await repo.count(ctx.conn, base, cap=cap)
    if cache is not None:
        cache[key] = result
    return result


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
) -> Response:
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
) -> Response:
    """The same list for one agent; clients may use it for agents shared with them."""
    query = parse_agent_list_query(name, request.query_params.multi_items())
    require_agent_visible(ctx, name)
    return await run_list(ctx, query)
