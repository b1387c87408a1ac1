"""Liveness, readiness, the dashboard page and its config."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.query.deps import StateDep

router = APIRouter()


@router.get("/healthz", tags=["health"], summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="The database answers (NATS is reported)")
async def readyz(state: StateDep) -> JSONResponse:
    checks: dict[str, Any] = {
        "database": False,
        "nats": bool(state.nats and state.nats.is_connected),
    }
    if state.pool is not None:
        try:
            async with state.pool.acquire(timeout=2) as conn:
                checks["database"] = await conn.fetchval("SELECT 1") == 1
        except Exception:  # any failure means "not ready", never a crash
            checks["database"] = False
    # Terminate needs NATS, but reads do not: only the database decides readiness.
    ready = checks["database"]
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics", include_in_schema=False)
async def metrics(state: StateDep) -> Response:
    body = generate_latest(state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/config", tags=["health"], summary="Settings the dashboard page needs")
async def config(state: StateDep) -> dict[str, Any]:
    return {"notifier_url": state.settings.notifier_url}


@router.get("/", include_in_schema=False)
async def index(state: StateDep) -> FileResponse:
    page = state.settings.static_dir / "index.html"
    if not page.is_file():
        raise HTTPException(404, detail="dashboard not installed")
    return FileResponse(page, headers={"Cache-Control": "no-cache"})
