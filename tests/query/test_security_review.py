"""Security review of the query service's answers: the dashboard page (whose token sits in
localStorage) and the API carry headers that keep other sites' scripts, frames and
Referers away from it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.query.app import create_app
from services.query.settings import QuerySettings


@pytest.mark.parametrize("path", ["/", "/static/index.html", "/api/executions"])
async def test_every_answer_carries_the_security_headers(tmp_path: Path, path: str) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>fw</title>")
    app = create_app(QuerySettings(static_dir=tmp_path))  # no lifespan: no database needed
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://q") as client:
        response = await client.get(path)
    assert response.status_code in (200, 401)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy
    assert "unsafe-eval" not in policy
    assert "'unsafe-inline'" not in policy.split("script-src", 1)[1].split(";")[0]


async def test_the_api_docs_pages_are_not_blanked_by_the_dashboards_policy(
    tmp_path: Path,
) -> None:
    """Swagger UI loads its script from a CDN and starts with an inline one: under the
    dashboard's CSP, `/docs` rendered blank."""
    app = create_app(QuerySettings(static_dir=tmp_path))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://q") as client:
        docs = await client.get("/docs")
        page = await client.get("/api/executions")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text
    assert "content-security-policy" not in docs.headers
    assert docs.headers["x-frame-options"] == "DENY"
    assert "content-security-policy" in page.headers
