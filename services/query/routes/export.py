"""Export of a filtered list as CSV or NDJSON, streamed batch by batch."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from services.query import repo
from services.query.deps import Ctx, StreamCallerDep, require_agent_visible, require_fleet_wide
from services.query.filters import (
    FilterError,
    ListFilters,
    parse_filter_items,
    search_pattern,
    single,
)
from services.query.search import search_candidates
from services.query.where import among, filtered

router = APIRouter(tags=["executions"])

Multi = Annotated[list[str] | None, Query()]
One = Annotated[str | None, Query()]

COLUMNS = (
    "id",
    "agent_name",
    "agent_display_name",
    "project",
    "workflow",
    "status",
    "triggered_by",
    "message",
    "response",
    "error",
    "error_type",
    "started_at",
    "completed_at",
    "duration_ms",
    "cost",
    "tokens_in",
    "tokens_out",
    "engine",
    "external_id",
    "parent_execution_id",
)
_MEDIA = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}


#: A CSV cell starting with one of these is read as a formula by spreadsheet programs
#: (`=HYPERLINK(...)` in a message would run when the export is opened): OWASP's advice is
#: to prefix it with `'`, which the spreadsheet shows as text. NDJSON keeps values as they are.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


def csv_chunk(rows: list[dict[str, Any]], *, header: bool) -> str:
    buffer = io.StringIO()
    # RFC 4180's CRLF: the writer quotes a cell holding any character of the terminator, so a
    # lone CR in a cell (which readers take for a line end) is quoted too.
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header:
        writer.writerow(COLUMNS)
    writer.writerows([_cell(row[c]) for c in COLUMNS] for row in rows)
    return buffer.getvalue()


def ndjson_chunk(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(
        orjson.dumps({c: row[c] for c in COLUMNS}, option=orjson.OPT_UTC_Z) + b"\n" for row in rows
    )


async def _stream(
    ctx: Ctx, filters: ListFilters, fmt: Literal["csv", "ndjson"]
) -> AsyncIterator[bytes | str]:
    # The request's own connection and transaction: `StreamCallerDep` holds them until the
    # body is sent, so an export never waits on the pool for a second one (a pool of N
    # exporting requests each waiting for another connection would never move again).
    settings = ctx.state.settings
    counter = ctx.state.metrics.exported_rows.labels(fmt)
    org, agents = ctx.scope.org, ctx.scope.agents
    first = True
    where = filtered(org, agents, filters)
    walk = None
    if filters.search is not None:
        # As the list: a selective term's candidate ids by primary key (migration 0014),
        # a common term's ILIKE over the list walked in order.
        candidates = await search_candidates(ctx, filters)
        if candidates is not None:
            where = among(where, candidates)
        else:
            where = filtered(org, agents, replace(filters, search=None))
            walk = search_pattern(filters.search)
    batches = repo.export_batches(
        ctx.conn,
        where,
        batch=settings.export_batch_size,
        max_bytes=settings.export_batch_bytes,
        search=walk,
    )
    async for rows in batches:
        yield csv_chunk(rows, header=first) if fmt == "csv" else ndjson_chunk(rows)
        first = False
        counter.inc(len(rows))
    if first and fmt == "csv":
        yield csv_chunk([], header=True)


@router.get("/api/executions/export", summary="Export the filtered list (CSV or NDJSON)")
async def export(
    request: Request,
    ctx: StreamCallerDep,
    format: Annotated[Literal["csv", "ndjson"] | None, Query()] = None,
    agent_name: Multi = None,
    status: Multi = None,
    triggered_by: Multi = None,
    project: Multi = None,
    workflow: Multi = None,
    start_time: One = None,
    end_time: One = None,
    search: One = None,
) -> StreamingResponse:
    """Every matching row, newest first, streamed: memory holds one batch at a time."""
    require_fleet_wide(ctx)
    filters, extra = parse_filter_items(
        request.query_params.multi_items(), extra=frozenset({"format"})
    )
    fmt = single(extra, "format")
    fmt = "csv" if fmt is None else fmt
    if fmt not in _MEDIA:
        raise FilterError("format", "must be csv or ndjson")
    for name in filters.agent_name:
        require_agent_visible(ctx, name)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kind: Literal["csv", "ndjson"] = "csv" if fmt == "csv" else "ndjson"
    return StreamingResponse(
        _stream(ctx, filters, kind),
        media_type=_MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="executions-{stamp}.{fmt}"'},
    )
