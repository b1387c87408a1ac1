"""Health statistics: fleet stats (cached per scope), timeline, workflow and project stats."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response

from services.query import repo
from services.query.deps import (
    Caller,
    CallerDep,
    Ctx,
    LightCallerDep,
    require_agent_visible,
    require_fleet_wide,
)
from services.query.filters import (
    FilterError,
    ListFilters,
    group_params,
    parse_filter_items,
    parse_filters,
    single,
)
from services.query.filters import parse_int as parse_bounded
from services.query.routes.paths import SentPathRoute
from services.query.stats import Bucket, fill_timeline, fold_stats
from services.query.views import json_bytes, summary
from services.query.where import filtered

log = logging.getLogger(__name__)
router = APIRouter(tags=["statistics"])
#: A timeline start this much before its window is still the window's start (clocks and the
#: time between computing and sending it), not a 422.
WINDOW_EDGE_SLACK = timedelta(minutes=1)
#: One workflow's or project's stats: a name may hold `/` (`team/etl`), sent percent-encoded
#: as one segment (`team%2Fetl`), so these routes match on the path as sent.
named = APIRouter(tags=["statistics"], route_class=SentPathRoute)

Multi = Annotated[list[str] | None, Query()]
One = Annotated[str | None, Query()]


def _window(hours: int) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)


def _with_start(filters: ListFilters, start: datetime) -> ListFilters:
    """The window's start, unless the caller sent a start_time (checked to lie within the
    window or its slack): then the rows are those the list gives for the same filters."""
    if filters.start_time is not None:
        return filters
    return replace(filters, start_time=start)


async def compute_stats(ctx: Ctx, hours: int, agents: tuple[str, ...]) -> dict[str, Any]:
    filters = ListFilters(agent_name=agents, start_time=_window(hours))
    where = filtered(ctx.scope.org, ctx.scope.agents, filters)
    live = filtered(ctx.scope.org, ctx.scope.agents, ListFilters(agent_name=agents))
    groups = await repo.stats_groups(ctx.conn, where)
    running = await repo.running_count(ctx.conn, live)
    names = await repo.display_names(ctx.conn, ctx.scope.org)
    return fold_stats(groups, running_now=running, display_names=names)


@router.get("/api/executions/stats", summary="Fleet statistics over the last hours")
async def stats(
    request: Request,
    caller: LightCallerDep,
    hours: Annotated[int | None, Query(ge=1, le=168)] = None,
    agent_name: Multi = None,
) -> Response:
    """Cached for a few seconds per caller scope; `computed_at` says when it was computed.

    A hit touches no database (admins' scopes need none, others' are cached): the answer is
    kept encoded.
    """
    require_fleet_wide(caller)
    # Only these two: any other name (a filter the stats cannot apply) is a 422 naming it.
    grouped = group_params(request.query_params.multi_items(), frozenset({"agent_name", "hours"}))
    filters = parse_filters({k: v for k, v in grouped.items() if k == "agent_name"})
    hours_value = parse_bounded("hours", single(grouped, "hours"), default=24, low=1, high=168)
    for name in filters.agent_name:
        require_agent_visible(caller, name)
    key = (caller.scope.cache_key, hours_value, tuple(sorted(filters.agent_name)))
    state = caller.state
    cached: tuple[float, bytes] | None = state.stats_cache.get(key)
    if cached is not None:
        state.metrics.cache.labels("stats", "hit").inc()
        computed, body = cached
        if time.monotonic() - computed > state.settings.stats_ttl_s / 2:
            _refresh_ahead(caller, key, hours_value, filters.agent_name)
        return Response(body, media_type="application/json")
    state.metrics.cache.labels("stats", "miss").inc()
    body = await _compute_and_cache(caller, key, hours_value, filters.agent_name)
    return Response(body, media_type="application/json")


async def _compute_and_cache(
    caller: Caller, key: Any, hours: int, agents: tuple[str, ...]
) -> bytes:
    state = caller.state
    # Stamped before the figures are read: they are at least this new, and no newer.
    begun, computed_at = time.monotonic(), datetime.now(UTC)
    async with caller.connect() as ctx:
        result = await compute_stats(ctx, hours, agents)
    result.update(
        hours=hours,
        agent_name=list(agents) or None,
        computed_at=computed_at.isoformat().replace("+00:00", "Z"),
        cache_ttl_s=state.settings.stats_ttl_s,
    )
    body = json_bytes(result)
    cached: tuple[float, bytes] | None = state.stats_cache.get(key)
    # Not over figures read later: a slow background refresh ending after a newer answer was
    # stored would bring back older totals for a whole TTL.
    if cached is None or cached[0] <= begun:
        state.stats_cache[key] = (begun, body)
    return body


def _refresh_ahead(caller: Caller, key: Any, hours: int, agents: tuple[str, ...]) -> None:
    """Past half its life, an entry is recomputed in the background (one task per key), so
    that callers polling stats keep getting answers under `stats_ttl_s` old without waiting."""
    state = caller.state
    if key in state.refreshing:
        return
    state.refreshing.add(key)

    async def refresh() -> None:
        try:
            await _compute_and_cache(caller, key, hours, agents)
        except Exception:  # the next miss computes in the foreground and reports
            log.warning("background stats refresh failed", exc_info=True)
        finally:
            state.refreshing.discard(key)

    state.spawn(refresh())


@router.get("/api/executions/timeline", summary="Executions per hour or day, zero-filled")
async def timeline(
    request: Request,
    ctx: CallerDep,
    hours: Annotated[int | None, Query(ge=1, le=720)] = None,
    bucket: Annotated[Bucket | None, Query()] = None,
    agent_name: Multi = None,
    status: Multi = None,
    triggered_by: Multi = None,
    project: Multi = None,
    workflow: Multi = None,
    search: One = None,
) -> dict[str, Any]:
    require_fleet_wide(ctx)
    filters, extra = parse_filter_items(
        request.query_params.multi_items(), extra=frozenset({"hours", "bucket"})
    )
    hours_value = parse_bounded("hours", single(extra, "hours"), default=24, low=1, high=720)
    bucket_value = single(extra, "bucket")
    bucket_value = "hour" if bucket_value is None else bucket_value
    if bucket_value not in ("hour", "day"):
        raise FilterError("bucket", "must be hour or day")
    for name in filters.agent_name:
        require_agent_visible(ctx, name)
    now = datetime.now(UTC)
    start = now - timedelta(hours=hours_value)
    if filters.start_time is not None and filters.start_time < start - WINDOW_EDGE_SLACK:
        # The buckets cover `hours`; an earlier start would be cut off while
        # `filters_applied` still named it. The window's own start, as a client computed
        # it a moment earlier, is within the slack (and the window begins at `start`).
        raise FilterError(
            "start_time",
            f"is before the timeline's window (the last {hours_value} hours); "
            "raise hours (up to 720) or leave start_time out",
        )
    where = filtered(ctx.scope.org, ctx.scope.agents, _with_start(filters, start))
    rows = await repo.timeline(ctx.conn, where, "day" if bucket_value == "day" else "hour")
    kind: Bucket = "day" if bucket_value == "day" else "hour"
    if filters.start_time is not None and filters.start_time < start:
        # A start_time within the slack counts its rows as the list does (cutting the moment
        # before `start` off made the buckets add up to less than the list's total_count),
        # so the buckets begin where they may fall.
        start = filters.start_time
    return {
        "bucket": kind,
        "hours": hours_value,
        "buckets": fill_timeline(rows, start=start, end=now, bucket=kind),
        "filters_applied": filters.applied(),
    }


def _group_row(row: Any) -> dict[str, Any]:
    finished = row["finished"]
    average = row["avg_duration_ms"]  # NULL: no run measured; 0.0 is a measured value
    return {
        "name": row["name"],
        "runs": row["runs"],
        "workflows": row["workflows"],
        "avg_duration_ms": round(average, 1) if average is not None else None,
        "errors": row["errors"],
        "success_rate": round(row["successes"] / finished, 4) if finished else None,
        "last_run_at": row["last_run_at"],
    }


async def _group_detail(ctx: Ctx, key: str, name: str, hours: int | None) -> dict[str, Any]:
    if "\x00" in name:
        # No stored name holds NUL (PostgreSQL text cannot): none ran, as for a missing
        # execution id; never a 422 about a `workflow` query parameter nobody sent.
        raise HTTPException(404, detail=f"no executions of {key} {name!r}")
    start = _window(hours) if hours is not None else None
    filters = (
        ListFilters(workflow=(name,), start_time=start)
        if key == "workflow"
        else ListFilters(project=(name,), start_time=start)
    )
    where = filtered(ctx.scope.org, ctx.scope.agents, filters)
    groups, _ = await repo.group_stats(ctx.conn, where, key)
    if not groups:
        raise HTTPException(404, detail=f"no executions of {key} {name!r}")
    result = _group_row(groups[0])
    component = await repo.top_component(ctx.conn, where)
    result["most_used_component"] = dict(component) if component else None
    if key == "workflow":
        result["recent_runs"] = [summary(r) for r in await repo.recent(ctx.conn, where)]
    else:
        top = await repo.top_workflow(ctx.conn, where)
        result["most_used_workflow"] = dict(top) if top else None
        longest = await repo.longest(ctx.conn, where)
        result["longest_run"] = summary(longest) if longest else None
    result["hours"] = hours
    return result


def _hours(request: Request) -> int | None:
    raw = single(group_params(request.query_params.multi_items(), frozenset({"hours"})), "hours")
    return None if raw is None else parse_bounded("hours", raw, default=0, low=1, high=24 * 400)


async def _group_list(ctx: Ctx, request: Request, key: str) -> dict[str, Any]:
    require_fleet_wide(ctx)
    hours = _hours(request)
    filters = ListFilters(start_time=_window(hours) if hours is not None else None)
    where = filtered(ctx.scope.org, ctx.scope.agents, filters)
    where.add(f"{key} IS NOT NULL")
    rows, truncated = await repo.group_stats(ctx.conn, where, key)
    return {f"{key}s": [_group_row(r) for r in rows], "hours": hours, "truncated": truncated}


HoursParam = Annotated[int | None, Query(ge=1, le=24 * 400)]


@router.get("/api/workflows", summary="Statistics per workflow")
async def workflows(request: Request, ctx: CallerDep, hours: HoursParam = None) -> dict[str, Any]:
    return await _group_list(ctx, request, "workflow")


@named.get("/api/workflows/{name}/stats", summary="One workflow's statistics")
async def workflow_stats(
    name: str, request: Request, ctx: CallerDep, hours: HoursParam = None
) -> dict[str, Any]:
    require_fleet_wide(ctx)
    return await _group_detail(ctx, "workflow", name, _hours(request))


@router.get("/api/projects", summary="Statistics per project")
async def projects(request: Request, ctx: CallerDep, hours: HoursParam = None) -> dict[str, Any]:
    return await _group_list(ctx, request, "project")


@named.get("/api/projects/{name}/stats", summary="One project's statistics")
async def project_stats(
    name: str, request: Request, ctx: CallerDep, hours: HoursParam = None
) -> dict[str, Any]:
    require_fleet_wide(ctx)
    return await _group_detail(ctx, "project", name, _hours(request))


router.include_router(named)
