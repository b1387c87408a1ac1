"""The page's pure logic (formatting, filters, retry classes, chart buckets), run in Chromium.

No services: a plain static file server hands out the modules, and the test imports them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page

pytestmark = pytest.mark.browser

STATIC = Path(__file__).resolve().parents[2] / "services" / "query" / "static"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def static_url() -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(STATIC))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest_asyncio.fixture(scope="module")
async def modules_page(browser: Browser, static_url: str) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{static_url}/js/format.js")
    try:
        yield page
    finally:
        await context.close()


async def run(page: Page, module: str, body: str) -> Any:
    """Evaluate `body` (an expression over `m`, the imported module) in the page."""
    return await page.evaluate(
        f"async () => {{ const m = await import('/js/{module}'); return {body}; }}"
    )


async def test_formatting(modules_page: Page) -> None:
    page = modules_page
    assert await run(
        page, "format.js", "[m.duration(450), m.duration(12345), m.duration(125000)]"
    ) == [
        "450 ms",
        "12 s",
        "2 m 5 s",
    ]
    assert await run(
        page, "format.js", "[m.cost(0), m.cost(0.004), m.cost(1.5), m.cost(null)]"
    ) == [
        "$0",
        "$0.0040",
        "$1.50",
        "—",
    ]
    assert (
        await run(page, "format.js", "m.relativeTime(new Date(Date.now() - 90000).toISOString())")
        == "2 min ago"
    )
    assert await run(page, "format.js", "m.relativeTime(new Date().toISOString())") == "just now"
    assert (
        await run(page, "format.js", "m.tokens({tokens_in: 12345, tokens_out: 7})") == "12.3k / 7"
    )
    assert await run(page, "format.js", "m.firstLine('one\\ntwo')") == "one"


async def test_filters_match_live_rows_as_the_api_would(modules_page: Page) -> None:
    page = modules_page
    exec_ = (
        "{agent_name: 'a', status: 'failed', triggered_by: 'api', message: 'Pay Invoice 7',"
        " started_at: new Date().toISOString()}"
    )
    cases = {
        "{}": True,
        "{status: 'failed', agent_name: 'a'}": True,
        "{status: 'running'}": False,
        "{triggered_by: 'schedule'}": False,
        "{search: 'invoice'}": True,
        "{search: 'refund'}": False,
        "{hours: '1'}": True,
        # A link's filters: comma lists as in the API, and fields a summary lacks never match.
        "{status: 'running,failed'}": True,
        "{status: 'running,success'}": False,
        "{agent_name: 'b,a', triggered_by: 'api'}": True,
        "{project: 'billing'}": False,
        "{start_time: '2000-01-01T00:00:00Z'}": True,
        "{start_time: '2999-01-01T00:00:00Z'}": False,
        "{end_time: '2000-01-01T00:00:00Z'}": False,
    }
    for filters, expected in cases.items():
        assert await run(page, "filters.js", f"m.matches({exec_}, {filters})") is expected, filters
    old = "{agent_name: 'a', status: 'success', started_at: '2020-01-01T00:00:00Z'}"
    assert await run(page, "filters.js", f"m.matches({old}, {{hours: '24'}})") is False
    params = await run(
        page,
        "filters.js",
        "m.listParams({hours: '6', status: 'failed', search: ''},"
        " Date.parse('2026-01-01T12:00:00Z'))",
    )
    assert params == {"status": "failed", "start_time": "2026-01-01T06:00:00.000Z"}
    # A link's start_time is kept when it starts later than the range, else the range wins.
    later = await run(
        page,
        "filters.js",
        "m.listParams({hours: '6', start_time: '2026-01-01T09:00:00Z', project: 'p'},"
        " Date.parse('2026-01-01T12:00:00Z'))",
    )
    assert later == {"start_time": "2026-01-01T09:00:00Z", "project": "p"}
    earlier = await run(
        page,
        "filters.js",
        "m.listParams({hours: '1', start_time: '2026-01-01T09:00:00Z'},"
        " Date.parse('2026-01-01T12:00:00Z'))",
    )
    assert earlier == {"start_time": "2026-01-01T11:00:00.000Z"}


async def test_retry_classes_follow_the_design(modules_page: Page) -> None:
    page = modules_page
    cases = {
        "{attempt: 1, retry_policy: 'none'}": None,
        "{attempt: 2, retry_policy: 'none'}": "unexpected",
        "{attempt: 2, retry_policy: 'exponential', max_attempts: 3}": "expected",
        "{attempt: 4, retry_policy: 'fixed', max_attempts: 3}": "unexpected",
        "{attempt: 9, retry_policy: 'forever'}": "expected",
        "{attempt: 2, retry_policy: 'none', retry_class: 'expected'}": "expected",
    }
    for component, expected in cases.items():
        assert await run(page, "detail.js", f"m.retryClass({component})") == expected, component


async def test_timeline_buckets_read_the_api_shape(modules_page: Page) -> None:
    page = modules_page
    data = (
        "{bucket: 'hour', buckets: [{bucket: '2026-01-01T10:00:00Z', total: 3, success: 2,"
        " failed: 1, running: 0, pending: 0, cancelled: 0, cost: 0.25}]}"
    )
    buckets = await run(page, "charts.js", f"m.timelineBuckets({data})")
    assert buckets == [
        {
            "time": "2026-01-01T10:00:00Z",
            "counts": {"success": 2, "failed": 1, "cancelled": 0, "running": 0, "pending": 0},
            "cost": 0.25,
        }
    ]
