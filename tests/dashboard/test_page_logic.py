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
        " response: 'Paid.', started_at: new Date().toISOString()}"
    )
    cases = {
        "{}": True,
        "{status: 'failed', agent_name: 'a'}": True,
        "{status: 'running'}": False,
        "{triggered_by: 'schedule'}": False,
        "{search: 'invoice'}": True,
        "{search: 'paid'}": True,
        "{search: 'refund'}": False,
        "{hours: '1'}": True,
        # A link's filters: comma lists as in the API, and a project given as a list.
        "{status: 'running,failed'}": True,
        "{status: 'running,success'}": False,
        "{agent_name: 'b,a', triggered_by: 'api'}": True,
        "{start_time: '2000-01-01T00:00:00Z'}": True,
        "{start_time: '2999-01-01T00:00:00Z'}": False,
        "{end_time: '2000-01-01T00:00:00Z'}": False,
        # What a summary does not carry (here its project) is no reason to leave it out.
        "{project: ['billing']}": True,
        "{workflow: ['a,b']}": True,
        # "other" is every trigger the API does not know (and none), as in the API.
        "{triggered_by: 'other'}": False,
    }
    for filters, expected in cases.items():
        assert await run(page, "filters.js", f"m.matches({exec_}, {filters})") is expected, filters
    old = "{agent_name: 'a', status: 'success', started_at: '2020-01-01T00:00:00Z'}"
    assert await run(page, "filters.js", f"m.matches({old}, {{hours: '24'}})") is False
    # A summary's own project does rule it out; a list of projects is matched value by value.
    billed = "{agent_name: 'a', status: 'running', project: 'p,1'}"
    assert await run(page, "filters.js", f"m.matches({billed}, {{project: ['p,1']}})") is True
    assert await run(page, "filters.js", f"m.matches({billed}, {{project: ['p']}})") is False
    # Unknown triggers (and none) are "other".
    for trigger, expected in (("'cron'", True), ("'api'", False), ("undefined", True)):
        cron = f"{{agent_name: 'a', status: 'running', triggered_by: {trigger}}}"
        got = await run(page, "filters.js", f"m.matches({cron}, {{triggered_by: 'other,api'}})")
        assert got is True, trigger
        got = await run(page, "filters.js", f"m.matches({cron}, {{triggered_by: 'other'}})")
        assert got is expected, trigger
    # Search looks at message and response as the API does: a summary carries no response from
    # the list, and text cut at 200 characters may match past the cut.
    search = "{search: 'zebra'}"
    for summary, expected in {
        "{status: 'success', message: 'Plain task'}": True,
        "{status: 'success', message: 'Plain task', response: 'a ZEBRA'}": True,
        "{status: 'success', message: 'Plain task', response: 'ok'}": False,
        "{status: 'success', message: 'x'.repeat(200), response: 'ok'}": True,
    }.items():
        assert await run(page, "filters.js", f"m.matches({summary}, {search})") is expected, summary
    # The status and agent a row carries can take it out of the list; nothing else can.
    ruled = {
        "{status: 'running'}": True,
        "{status: 'success,failed'}": False,
        "{agent_name: 'b'}": True,
        "{triggered_by: 'schedule', search: 'nothing like it'}": False,
    }
    for filters, expected in ruled.items():
        assert await run(page, "filters.js", f"m.ruledOut({exec_}, {filters})") is expected, filters
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
        "m.listParams({hours: '6', start_time: '2026-01-01T09:00:00Z', project: ['p']},"
        " Date.parse('2026-01-01T12:00:00Z'))",
    )
    assert later == {"start_time": "2026-01-01T09:00:00Z", "project": ["p"]}
    earlier = await run(
        page,
        "filters.js",
        "m.listParams({hours: '1', start_time: '2026-01-01T09:00:00Z'},"
        " Date.parse('2026-01-01T12:00:00Z'))",
    )
    assert earlier == {"start_time": "2026-01-01T11:00:00.000Z"}
    # A range that is no number of hours is no range (it used to throw, leaving a blank list).
    assert await run(page, "filters.js", "m.listParams({hours: 'abc', status: 'failed'})") == {
        "status": "failed"
    }


async def read_filters(page: Page, query: str, remembered: bool = True) -> Any:
    """readFilters() with `query` in the address bar (and what localStorage holds)."""
    await page.evaluate("q => history.replaceState(null, '', '/js/format.js' + q)", query)
    return await run(
        page, "filters.js", f"m.readFilters({{remembered: {str(remembered).lower()}}})"
    )


async def test_filters_read_from_the_url(modules_page: Page) -> None:
    page = modules_page
    try:
        # Repeated project and workflow values stay apart (a name may hold a comma); the API
        # gets them repeated, as it splits commas for agent, status and trigger only.
        assert await read_filters(
            page, "?project=p1&project=p2,x&status=failed&status=running"
        ) == {
            "project": ["p1", "p2,x"],
            "status": "failed,running",
        }
        written = await run(
            page,
            "filters.js",
            "(m.writeFilters({project: ['p1', 'p2,x'], status: 'failed'}),"
            " [...new URLSearchParams(location.search)])",
        )
        assert sorted(written) == [["project", "p1"], ["project", "p2,x"], ["status", "failed"]]
        # A range that is no number of hours is dropped.
        assert await read_filters(page, "?hours=abc&status=failed") == {"status": "failed"}
        # A bare URL remembers the last filters, except when going back through history.
        await page.evaluate(
            "localStorage.setItem('fleetwatch.filters', '{\"status\": \"failed\"}')"
        )
        assert await read_filters(page, "") == {"status": "failed"}
        assert await read_filters(page, "", remembered=False) == {}
    finally:
        await page.evaluate("localStorage.clear(); history.replaceState(null, '', '/js/format.js')")


@pytest_asyncio.fixture(scope="module")
async def new_york_page(browser: Browser, static_url: str) -> AsyncIterator[Page]:
    """The modules in a browser five hours west of UTC."""
    context = await browser.new_context(timezone_id="America/New_York", locale="en-US")
    page = await context.new_page()
    await page.goto(f"{static_url}/js/format.js")
    try:
        yield page
    finally:
        await context.close()


async def test_times_without_offset_are_utc_as_in_the_api(new_york_page: Page) -> None:
    page = new_york_page
    # Started at 12:00 UTC (07:00 in New York); the link's start_time 10:00 is UTC to the API.
    exec_ = "{agent_name: 'a', status: 'running', started_at: '2026-01-05T12:00:00Z'}"
    for filters, expected in {
        "{start_time: '2026-01-05T10:00:00'}": True,
        "{start_time: '2026-01-05T10:00'}": True,
        "{start_time: '2026-01-05'}": True,
        "{start_time: '2026-01-05T13:00:00'}": False,
        "{end_time: '2026-01-05T12:30:00'}": True,
        "{end_time: '2026-01-05T12:00:00'}": False,
    }.items():
        assert await run(page, "filters.js", f"m.matches({exec_}, {filters})") is expected, filters


async def test_day_buckets_are_named_in_utc(new_york_page: Page) -> None:
    """A day bucket starts at midnight UTC: in New York that is the evening before."""
    page = new_york_page
    labels = await run(
        page,
        "charts.js",
        """(() => {
          const svg = m.timelineChart(m.timelineBuckets({buckets: [
            {bucket: '2026-02-03T00:00:00Z', success: 1},
            {bucket: '2026-02-04T00:00:00Z', success: 2},
            {bucket: '2026-02-05T00:00:00Z', failed: 3}]}), {bucket: 'day'});
          return {
            axis: [...svg.querySelectorAll('text.axis')].map(t => t.textContent).slice(-3),
            titles: [...svg.querySelectorAll('title')].map(t => t.textContent),
          };
        })()""",
    )
    assert labels == {
        "axis": ["Feb 3", "Feb 4", "Feb 5"],
        "titles": ["2/3/2026: 1 success", "2/4/2026: 2 success", "2/5/2026: 3 failed"],
    }


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


async def test_list_order(modules_page: Page) -> None:
    """A row goes before the first row with a start that it is newer than (ties: higher id);
    rows without a start are passed over, and past them all there is no place (null)."""
    rows = """[
        {id: "p", started_at: null},
        {id: "b", started_at: "2026-02-05T10:00:00Z"},
        {id: "a", started_at: "2026-02-05T10:00:00Z"},
        {id: "c", started_at: "2026-02-05T09:00:00"},
    ]"""
    page = modules_page
    assert await run(
        page,
        "order.js",
        f"""[
            m.placeAmong({rows}, {{id: "n", started_at: "2026-02-05T11:00:00Z"}}),
            m.placeAmong({rows}, {{id: "ab", started_at: "2026-02-05T10:00:00Z"}}),
            m.placeAmong({rows}, {{id: "x", started_at: "2026-02-05T09:30:00Z"}}),
            m.placeAmong({rows}, {{id: "y", started_at: "2026-02-05T08:00:00Z"}}),
            m.placeAmong({rows}, {{id: "c", started_at: "2026-02-05T08:00:00Z"}}),
        ]""",
    ) == ["b", "a", "c", None, None]
    assert await run(page, "order.js", "m.startOf({started_at: null})") is None


async def test_durations_round_without_sixty_seconds(modules_page: Page) -> None:
    """A duration just short of a minute boundary reads as the next minute, never "1 m 60 s"."""
    assert await run(
        modules_page,
        "format.js",
        "[m.duration(119600), m.duration(59700), m.duration(9970), m.duration(3599800)]",
    ) == ["2 m 0 s", "1 m 0 s", "10 s", "1 h 0 m"]


async def test_a_read_behind_the_live_feed_is_told_apart(modules_page: Page) -> None:
    """The feed (from NATS) can be ahead of the API (the database ingest writes to): a detail
    page reads again while the API has less than the feed said (lag.js)."""
    page = modules_page
    completed = "{execution: {id: 'e', status: 'success'}}"
    step_failed = (
        "{execution: {id: 'e'}, component: {node_id: 'fetch', attempt: 2, status: 'failed'}}"
    )

    async def behind(messages: list[str], exec_: str) -> bool:
        said = "null"
        for message in messages:
            said = f"m.heard({said}, {message})"
        verdict: bool = await run(page, "lag.js", f"m.readsBehind({said}, {exec_})")
        return verdict

    running = "{id: 'e', status: 'running', components: []}"
    done = "{id: 'e', status: 'failed', components: []}"
    assert await behind([completed], running) is True
    # Any end is as far as the feed's end: the ingest rules pick which one stands.
    assert await behind([completed], done) is False
    # An older status heard after a newer one does not take the newer back.
    assert await behind([completed, "{execution: {id: 'e', status: 'running'}}"], done) is False
    attempt_1 = "{node_id: 'fetch', attempt: 1, status: 'failed'}"
    attempt_2_running = "{node_id: 'fetch', attempt: 2, status: 'running'}"
    attempt_2_failed = "{node_id: 'fetch', attempt: 2, status: 'failed'}"
    with_steps = "{{id: 'e', status: 'running', components: [{}]}}"
    assert await behind([step_failed], with_steps.format(attempt_1)) is True
    assert await behind([step_failed], with_steps.format(attempt_2_running)) is True
    assert await behind([step_failed], with_steps.format(attempt_2_failed)) is False
    # Nothing heard (a catch-up read, a poll) is never behind.
    assert await run(page, "lag.js", f"m.readsBehind(null, {running})") is False


async def test_the_success_rate_card_shows_no_rate_while_nothing_has_finished(
    modules_page: Page,
) -> None:
    """The API's `success_rate` is null when no execution in the window has finished: the card
    says "—", not the 0.0% it made of pending ones (it divided by total less running)."""
    card = (
        "m.statCards({body}, 24).find((c) => c.dataset.stat === 'success')"
        ".querySelector('.card-value').textContent"
    )
    shown = {
        body: await run(modules_page, "charts.js", card.format(body=body))
        for body in (
            "{total: 3, pending: 3, running: 0, successful: 0, success_rate: null}",
            "{total: 3, pending: 1, running: 2, successful: 0, success_rate: null}",
            "{total: 4, running: 1, successful: 2, failed: 1, success_rate: 2 / 3}",
        )
    }
    assert list(shown.values()) == ["—", "—", "66.7%"]


async def test_a_links_time_range_off_the_menu_still_gets_statistics(modules_page: Page) -> None:
    """The stats and timeline endpoints take whole hours from 1 to 168: a link's `hours=500`
    or `hours=2.5` is sent as 168 or 3 (the list keeps its own start), not as a 422."""
    got = await run(
        modules_page,
        "filters.js",
        "['500', '2.5', '0.01', '168', '6', 'abc', ''].map((h) => m.statsHours({hours: h}))",
    )
    assert got == [168, 3, 1, 168, 6, 24, 24]
