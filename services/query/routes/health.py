"""Liveness, readiness, the dashboard page and its config."""

from __future__ import annotations

import functools
import logging
from typing import Any

import asyncpg
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.query.deps import StateDep
from shared.migrate import load_migrations

log = logging.getLogger(__name__)
router = APIRouter()

#: Whether the connecting user may take the role of scoped reads (false before migrations):
#: from PostgreSQL 16 a member may lack the SET option, which `set_config('role', ...)` needs.
APP_ROLE_USABLE = (
    "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fleetwatch_app') "
    "THEN false WHEN current_setting('server_version_num')::int >= 160000 "
    "THEN pg_has_role('fleetwatch_app', 'SET') ELSE pg_has_role('fleetwatch_app', 'MEMBER') END"
)

SCHEMA_VERSION = "SELECT max(version) FROM schema_migrations"
#: How long /readyz waits for a pooled connection before calling the pool busy.
READY_ACQUIRE_TIMEOUT_S = 2.0
_DATABASE_CHECKS = ("database", "app_role", "schema")


@functools.cache
def required_schema() -> int:
    """The newest migration this release ships: its statements need that schema (the
    tables, and `search_candidates()` in its current form)."""
    return max(m.version for m in load_migrations())


async def _schema_version(conn: asyncpg.Connection) -> int | None:
    try:
        version: int | None = await conn.fetchval(SCHEMA_VERSION)
    except asyncpg.UndefinedTableError:  # never migrated
        return None
    return version


@router.get("/healthz", tags=["health"], summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="The database answers, migrated (NATS is reported)")
async def readyz(state: StateDep) -> JSONResponse:
    checks: dict[str, Any] = {
        "database": False,
        # Every scoped read switches to this role: a user that may not fails every call.
        "app_role": False,
        # This release's migrations applied (`fleetwatch migrate`): else every call fails.
        "schema": False,
        "nats": bool(state.nats and state.nats.is_connected),
    }
    busy = False
    if state.pool is not None:
        try:
            async with state.pool.acquire(timeout=READY_ACQUIRE_TIMEOUT_S) as conn:
                checks["database"] = await conn.fetchval("SELECT 1") == 1
                checks["app_role"] = await conn.fetchval(APP_ROLE_USABLE) is True
                version = await _schema_version(conn)
                checks["schema"] = version is not None and version >= required_schema()
            state.last_readiness = {k: checks[k] for k in _DATABASE_CHECKS}
        except TimeoutError:
            # Every connection is serving a request: load, not an outage. Not ready here, every
            # replica under the same burst would leave the Service at once; the last full
            # answer stands (none yet: not ready). A dead database fails the requests, whose
            # connections the pool then drops, so the next check reaches it and says so.
            busy = True
            checks.update(state.last_readiness or {})
        except Exception:  # any failure means "not ready", never a crash
            log.debug("readiness check failed", exc_info=True)
    # Terminate needs NATS, but reads do not: only the database decides readiness.
    ready = all(checks[k] for k in _DATABASE_CHECKS)
    body = {"ready": ready, **checks, "busy": busy}
    return JSONResponse(body, status_code=200 if ready else 503)


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
