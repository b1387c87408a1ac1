"""The dashboard in headless Chromium against real ingest, query and notifier processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from playwright.async_api import (
    Browser,
    Page,
    Request,
    Route,
    WebSocket,
    WebSocketRoute,
    expect,
)

from shared.auth import mint_token
from tests.dashboard.conftest import Stack, reads_reach, record_reads, screenshot
from tests.dashboard.seed import CHILD_ID, DETAILED_ID, RUNNING_ID, Row

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ROWS = "tbody tr.row"


async def shown_ids(page: Page) -> list[str]:
    ids: list[str] = await page.locator(ROWS).evaluate_all("rows => rows.map(r => r.dataset.id)")
    return ids


async def settled(page: Page) -> None:
    """Wait until the list has loaded (rows shown, or the empty state)."""
    await expect(page.locator(".list-state")).to_have_attribute(
        "data-state", re.compile(r"^(ready|empty)$")
    )


async def clear_filters(page: Page) -> None:
    await page.locator("form.filters .btn-clear").click()
    await expect(page.locator(ROWS)).to_have_count(50)


async def api_top(stack: Stack) -> list[tuple[str, str]]:
    """The newest rows as the API has them (to tell a slow page from a slow ingest)."""
    headers = {"Authorization": f"Bearer {stack.token('ada', 'admin')}"}
    async with httpx.AsyncClient(base_url=stack.base_url, headers=headers) as client:
        page = (await client.get("/api/executions", params={"limit": 3})).json()
    return [(e["id"], e["status"]) for e in page["executions"]]


async def ingest_progress(stack: Stack) -> str:
    """Where the stream and ingest's consumer stand (to tell a stuck ingest from a slow page)."""
    js = stack.nc.jetstream()
    stream = await js.stream_info(stack.subjects.events_stream)
    lines = [f"stream last seq {stream.state.last_seq}"]
    for info in (await js.consumers_info(stack.subjects.events_stream)) or []:
        assert info.delivered is not None
        assert info.ack_floor is not None
        lines.append(
            f"consumer {info.name}: delivered {info.delivered.stream_seq}, "
            f"ack floor {info.ack_floor.stream_seq}, pending {info.num_pending}, "
            f"ack pending {info.num_ack_pending}, waiting {info.num_waiting}"
        )
    return "\n".join(lines)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


async def test_page_loads_with_stats_and_rows(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    total = len(stack.rows)
    await expect(page.locator(ROWS)).to_have_count(50)
    await expect(page.locator("[data-stat=total] .card-value")).to_have_text(str(total))
    failed = sum(r.status == "failed" for r in stack.rows)
    await expect(page.locator("[data-stat=failed] .card-value")).to_have_text(str(failed))
    await expect(page.locator(".summary")).to_have_text(f"Showing 50 of {total} executions")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    assert (await shown_ids(page))[:2] == [RUNNING_ID, DETAILED_ID]
    # Exact time and full message on hover; Stop only where something runs.
    first = page.locator(ROWS).first
    assert await first.locator("time").get_attribute("title")
    assert await first.locator(".c-message a").get_attribute("title") == stack.rows[0].message
    await expect(page.locator(f"{ROWS} [data-action=stop]")).to_have_count(1)
    await expect(page.locator(".chart rect.bar").first).to_be_visible()
    assert "notifier=" not in page.url
    assert "token=" not in page.url
    await screenshot(page, "01-executions")


@pytest.mark.parametrize(
    ("name", "value", "sent", "expected"),
    [
        ("status", "failed", "status", lambda r, _: r.status == "failed"),
        ("agent_name", "beta", "agent_name", lambda r, _: r.agent_name == "beta"),
        ("triggered_by", "manual", "triggered_by", lambda r, _: r.triggered_by == "manual"),
        # A time range goes to the API as the window's start, from the page's "now".
        ("hours", "1", "start_time", lambda r, since: r.started_at >= since),
    ],
)
async def test_each_filter_changes_list_and_url(
    admin_page: Page,
    stack: Stack,
    name: str,
    value: str,
    sent: str,
    expected: Callable[[Row, datetime | None], bool],
) -> None:
    page = admin_page
    await clear_filters(page)

    def listing(request: Request) -> bool:
        url = urlparse(request.url)
        return url.path == "/api/executions" and sent in parse_qs(url.query)

    before = datetime.now(UTC)
    async with page.expect_request(listing) as asked:
        await page.locator(f"select[name={name}]").select_option(value)
    after = datetime.now(UTC)
    params = parse_qs(urlparse((await asked.value).url).query)
    since = None
    if name == "hours":
        # The page takes its own "now" as it asks, a moment after the test's: a row started an
        # hour before then may be on either side of the edge. The start it sent says which.
        since = datetime.fromisoformat(params["start_time"][0])
        hour, slack = timedelta(hours=1), timedelta(seconds=1)
        assert before - hour - slack <= since <= after - hour + slack, (before, since, after)
    else:
        assert params[sent] == [value]
    wanted = [r.id for r in stack.rows if expected(r, since)]
    await expect(page).to_have_url(re.compile(rf"[?&]{name}={value}(&|$)"))
    await expect(page.locator(ROWS)).to_have_count(min(len(wanted), 50))
    assert await shown_ids(page) == wanted[:50]


async def test_search_is_debounced_and_reload_keeps_filters(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    await clear_filters(page)
    await page.locator("select[name=status]").select_option("success")
    await page.locator("input[name=search]").press_sequentially("invoice", delay=20)
    wanted = [r.id for r in stack.rows if "invoice" in r.message and r.status == "success"]
    await expect(page).to_have_url(re.compile(r"search=invoice"))
    await expect(page.locator(ROWS)).to_have_count(len(wanted))
    await screenshot(page, "02-filtered")

    await page.reload()
    await expect(page.locator(ROWS)).to_have_count(len(wanted))
    await expect(page.locator("select[name=status]")).to_have_value("success")
    await expect(page.locator("input[name=search]")).to_have_value("invoice")
    assert await shown_ids(page) == wanted

    # A bare visit restores the last filters from localStorage; "Clear filters" resets them.
    await page.goto(stack.base_url + "/")
    await expect(page).to_have_url(re.compile(r"search=invoice"))
    await expect(page.locator(ROWS)).to_have_count(len(wanted))
    await clear_filters(page)
    assert page.url == stack.base_url + "/"


async def test_a_link_keeps_filters_the_form_has_no_field_for(
    admin_page: Page, stack: Stack
) -> None:
    page = admin_page
    # Repeated values, as the API takes them: the failed and the running rows.
    await page.goto(stack.page_url(query="status=failed&status=running"))
    wanted = [r.id for r in stack.rows if r.status in ("failed", "running")]
    await expect(page.locator(ROWS)).to_have_count(min(len(wanted), 50))
    assert await shown_ids(page) == wanted[:50]
    await expect(page.locator("select[name=status]")).to_have_value("failed,running")
    # A filter the form has no field for: applied, named above the list, removable.
    await page.goto(stack.page_url(query="project=no-such-project"))
    await expect(page.locator("[data-link-filters]")).to_contain_text("project=no-such-project")
    await expect(page.locator(".list-state")).to_contain_text("No executions match")
    assert "project=no-such-project" in page.url
    await screenshot(page, "02b-link-filters")
    await page.locator("[data-link-filters] button").click()
    await expect(page.locator(ROWS)).to_have_count(50)
    await expect(page.locator("[data-link-filters]")).to_have_count(0)
    assert "project=" not in page.url


async def test_load_more_appends_without_duplicates(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    await expect(page.locator(ROWS)).to_have_count(50)
    await page.locator(".btn-more").click()
    await expect(page.locator(ROWS)).to_have_count(len(stack.rows))
    ids = await shown_ids(page)
    assert ids == [r.id for r in stack.rows]
    await expect(page.locator(".btn-more")).to_be_hidden()


async def test_live_event_appears_at_top_and_updates_in_place(
    admin_page: Page, stack: Stack
) -> None:
    page = admin_page
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    execution = {
        "id": "live-001",
        "agent_name": "alpha",
        "triggered_by": "api",
        "message": "Live task: reconcile the ledger",
        "started_at": now_iso(),
    }
    await stack.publish("execution_started", execution)
    top = page.locator(ROWS).first
    await expect(top).to_have_attribute("data-id", "live-001")
    await expect(top).to_have_attribute("data-status", "running")

    await stack.publish(
        "execution_failed",
        {"id": "live-001", "agent_name": "alpha", "error": "RateLimitError: slow down"},
    )
    await expect(top).to_have_attribute("data-status", "failed")
    await expect(page.locator(".toast-error").first).to_contain_text("failed")
    assert (await shown_ids(page)).count("live-001") == 1
    # Another agent's event under the same id is refused by ingest (the feed still carries it):
    # it does not repaint the row. The next event, once shown, proves it was received.
    await stack.publish("execution_completed", {"id": "live-001", "agent_name": "beta"})
    await stack.publish("execution_started", {"id": "live-001-next", "agent_name": "alpha"})
    await expect(top).to_have_attribute("data-id", "live-001-next")
    row = page.locator('tr[data-id="live-001"]')
    assert await row.get_attribute("data-status") == "failed"
    assert await page.evaluate("document.readyState") == "complete"
    await page.evaluate("window.scrollTo(0, 0)")
    await screenshot(page, "03-live-failure-toast")


async def test_stop_sends_the_terminate_command(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    button = page.locator(f'tr[data-id="{RUNNING_ID}"] [data-action=stop]')
    await button.click()
    await expect(button).to_have_text("Confirm stop")
    await button.click()
    await expect(page.locator(".toast-success").last).to_contain_text("Stop requested")
    assert [r["execution_id"] for r in stack.terminate_requests] == [RUNNING_ID]
    assert stack.terminate_requests[0]["requested_by"] == "ada"
    # The agent then reports the execution cancelled: the row follows, and its Stop goes away.
    row = page.locator(f'tr[data-id="{RUNNING_ID}"]')
    await expect(row).to_have_attribute("data-status", "cancelled")
    await expect(row.locator("[data-action=stop]")).to_have_count(0)


async def test_detail_page_and_compare(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    await page.locator(f'tr[data-id="{DETAILED_ID}"] .c-message a').click()
    await expect(page).to_have_url(re.compile(rf"\?execution={DETAILED_ID}$"))
    steps = page.locator(".waterfall .step")
    await expect(steps).to_have_count(4)
    await expect(page.locator(".retry-expected")).to_have_count(1)
    await expect(page.locator("pre.log")).to_contain_text("[done] 3 drafts")
    await expect(page.locator(f'.panel a[href="/?execution={CHILD_ID}"]')).to_be_visible()
    await expect(page.locator("dd[data-field=engine]")).to_have_text("temporal")
    # What the API says about the page's own parts is not a field of the execution.
    for plumbing in ("children_truncated", "has_log", "engine_url"):
        await expect(page.locator(f"[data-field={plumbing}]")).to_have_count(0)
    await steps.nth(1).locator("summary").click()
    await expect(steps.nth(1).locator(".pre-error")).to_have_text("HTTP 503 from mail server")
    await screenshot(page, "04-detail", full_page=True)

    await page.locator(".compare-form input").fill("seed-002")
    await page.locator(".compare-form button").click()
    await expect(page.locator("table.compare")).to_be_visible()
    await expect(page.locator("tr[data-field=agent_name].differs")).to_have_count(1)
    await screenshot(page, "05-compare", full_page=True)
    await page.go_back()
    await page.go_back()
    await expect(page.locator(ROWS).first).to_be_visible()


async def test_a_live_refresh_of_the_detail_keeps_what_the_reader_opened(
    browser: Browser, stack: Stack
) -> None:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        detail = f"/api/executions/{DETAILED_ID}"
        reads = record_reads(page, detail)
        sent = record_reads(page, detail, when="request")
        # When the burst's frames reach the page (test's clock): to wait for all, and to say how
        # spread out they came should the page read too often.
        heard: list[float] = []

        def on_frame(payload: str | bytes) -> None:
            text = payload if isinstance(payload, str) else payload.decode(errors="replace")
            if '"execution_started"' in text and DETAILED_ID in text:
                heard.append(asyncio.get_running_loop().time())

        page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
        await page.goto(stack.page_url(query=f"execution={DETAILED_ID}"))
        steps = page.locator(".waterfall .step")
        await expect(steps).to_have_count(4)
        await expect(page.locator("#live")).to_have_attribute("data-state", "live")
        # The page reads the execution once more when the feed is ready: that read must not
        # pass for the burst's (a CI failure: the burst's read then came in the quiet below).
        await reads_reach(reads, 2)
        await steps.nth(1).locator("summary").click()
        await page.locator(".compare-form input").fill("seed-0")
        before = len(sent)
        burst = {"id": DETAILED_ID, "agent_name": "beta"}
        events = 6
        async with page.expect_response(lambda r: r.url.endswith(detail)) as refreshed:
            # A burst, published at once: one refresh (DETAIL_REFRESH_MS, 400 ms, gathers it).
            await asyncio.gather(
                *(stack.publish("execution_started", burst) for _ in range(events))
            )
        assert (await refreshed.value).ok
        await expect(page.locator(".loading")).to_have_count(0)
        await expect(page.locator(".waterfall .step details[open]")).to_have_count(1)
        await expect(steps.nth(1).locator("details")).to_have_attribute("open", "")
        await expect(page.locator(".compare-form input")).to_have_value("seed-0")
        async with asyncio.timeout(20):
            while len(heard) < events:
                await asyncio.sleep(0.05)
        await page.wait_for_timeout(1500)  # past the refresh the last event may have started
        # Once per burst, not once per event. A stall of the notifier or the browser between
        # frames may split the burst over two or three refresh windows, each one read.
        burst_reads = sent[before:]
        spread = [round(t - heard[0], 3) for t in heard]
        assert 1 <= len(burst_reads) <= events // 2, (len(burst_reads), spread)
    finally:
        await context.close()


async def test_a_link_cannot_point_the_live_feed_elsewhere(browser: Browser, stack: Stack) -> None:
    """The socket carries the user's token, so a crafted `?notifier=` (or one an earlier version
    remembered) must not choose where it goes: the page asks the server only."""
    handshakes: list[bytes] = []

    async def trap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshakes.append(await reader.read(4096))
        writer.close()

    server = await asyncio.start_server(trap, "127.0.0.1", 0)
    elsewhere = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{stack.base_url}/")
        await page.evaluate("url => localStorage.setItem('fleetwatch.notifier', url)", elsewhere)
        token = stack.token("ada", "admin")
        await page.goto(f"{stack.base_url}/?status=failed&notifier={elsewhere}#token={token}")
        await expect(page.locator("#live")).to_have_attribute("data-state", "live")
        assert handshakes == []
        assert await page.evaluate("localStorage.getItem('fleetwatch.notifier')") is None
    finally:
        await context.close()
        server.close()


async def test_user_sees_only_their_agents(browser: Browser, stack: Stack) -> None:
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = await context.new_page()
        await page.goto(stack.page_url(user="uma", role="user"))
        mine = {"alpha", "beta"}
        wanted = [r.id for r in stack.rows if r.agent_name in mine]
        await expect(page.locator(".summary")).to_contain_text(re.compile(r"Showing (\d+) of \1 "))
        # Seeded rows of alpha and beta, plus whatever earlier tests published for them.
        assert [i for i in await shown_ids(page) if i.startswith("seed-")] == wanted
        agents = await page.locator(ROWS).evaluate_all("rows => rows.map(r => r.dataset.agent)")
        assert set(agents) == mine
        options = await page.locator("select[name=agent_name] option").evaluate_all(
            "opts => opts.map(o => o.value)"
        )
        assert options == ["", "alpha", "beta"]
        await screenshot(page, "06-user-phone")
        await page.goto(f"{stack.base_url}/?execution={DETAILED_ID}")
        await expect(page.locator(".waterfall .step")).to_have_count(4)
        await screenshot(page, "06-user-phone-detail", full_page=True)
        await page.goto(f"{stack.base_url}/?agent_name=gamma")
        await expect(page.locator(".error-box")).to_be_visible()
        await screenshot(page, "06-user-phone-forbidden")
    finally:
        await context.close()


async def test_agent_link_empty_state_and_compare_selection(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    await page.goto(stack.base_url + "/")
    await page.locator('tr[data-agent="gamma"] .c-agent a').first.click()
    await expect(page).to_have_url(re.compile(r"\?agent_name=gamma$"))
    await expect(page.locator("select[name=agent_name]")).to_have_value("gamma")
    await settled(page)
    agents = await page.locator(ROWS).evaluate_all("rows => rows.map(r => r.dataset.agent)")
    assert set(agents) == {"gamma"}

    await page.locator("input[name=search]").fill("no such task anywhere")
    await expect(page.locator(".empty")).to_contain_text("No executions match these filters")
    await screenshot(page, "08-empty")
    await page.locator(".empty .btn").click()
    await expect(page.locator(ROWS)).to_have_count(50)

    await page.locator(f'tr[data-id="{DETAILED_ID}"] input.pick').check()
    await expect(page.locator(".list-head .btn")).to_be_hidden()
    await page.locator('tr[data-id="seed-004"] input.pick').check()
    await page.locator(".list-head .btn").click()
    await expect(page).to_have_url(re.compile(rf"\?compare={DETAILED_ID},seed-004$"))
    await expect(page.locator("table.compare tbody tr").first).to_be_visible()


async def test_sign_in_form_and_client_view(browser: Browser, stack: Stack) -> None:
    context = await browser.new_context(viewport={"width": 1100, "height": 800})
    try:
        page = await context.new_page()
        await page.goto(stack.base_url + "/")
        form = page.locator("form.signin")
        await expect(form).to_be_visible()
        await screenshot(page, "09-sign-in")
        # Signed with another secret: the API answers 401 and the form says so.
        forged = mint_token(
            secret="some-other-secret-0123456789abcdefgh", org=stack.org, user="ada", role="admin"
        )
        await form.locator("textarea").fill(forged)
        await form.locator("button").click()
        await expect(page.locator("form.signin .error-box")).to_contain_text("sign in again")

        # A client sees only the agents shared with them, through the per-agent list.
        await page.locator("form.signin textarea").fill(stack.token("cleo", "client"))
        await page.locator("form.signin button").click()
        await expect(page).to_have_url(re.compile(r"agent_name=gamma"))
        wanted = [r.id for r in stack.rows if r.agent_name == "gamma"]
        await expect(page.locator(".summary")).to_contain_text(f"of {len(wanted)}")
        await expect(page.locator(".cards")).to_have_count(0)
        options = await page.locator("select[name=agent_name] option").evaluate_all(
            "opts => opts.map(o => o.value)"
        )
        assert options == ["gamma"]
        await screenshot(page, "10-client")
    finally:
        await context.close()


async def test_polling_when_the_notifier_stops(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    await page.goto(stack.base_url + "/")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    await stack.publish(
        "execution_started",
        {
            "id": "live-002",
            "agent_name": "beta",
            "triggered_by": "schedule",
            "started_at": now_iso(),
        },
    )
    await expect(page.locator(ROWS).first).to_have_attribute("data-id", "live-002")

    await stack.stop_notifier()
    await expect(page.locator("#live")).to_have_attribute("data-state", "polling")
    await expect(page.locator("#live")).to_contain_text("polling")
    await stack.publish(
        "execution_completed",
        {"id": "live-002", "agent_name": "beta", "completed_at": now_iso(), "cost": 0.5},
    )
    await stack.publish(
        "execution_started",
        {"id": "live-003", "agent_name": "gamma", "triggered_by": "api", "started_at": now_iso()},
    )
    # The next poll (every 10 s) brings both: the new row on top, the other updated in place.
    # A busy ingest may miss one poll, so allow for two.
    try:
        await expect(page.locator(ROWS).first).to_have_attribute(
            "data-id", "live-003", timeout=25_000
        )
    except AssertionError as exc:
        newest = await api_top(stack)
        raise AssertionError(
            f"{exc}\nthe API's newest rows: {newest}\n{await ingest_progress(stack)}"
        ) from None
    row = page.locator('tr[data-id="live-002"]')
    await expect(row).to_have_attribute("data-status", "success", timeout=12_000)
    await expect(row.locator(".c-cost")).to_have_text("$0.50")
    await screenshot(page, "07-polling")


async def test_socket_resumes_when_the_notifier_returns(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    await stack.restart_notifier()
    await expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=20_000)
    # Polling stopped with the socket back: a new event can only arrive through it now.
    await stack.publish(
        "execution_started",
        {"id": "live-004", "agent_name": "alpha", "triggered_by": "mcp", "started_at": now_iso()},
    )
    await expect(page.locator(ROWS).first).to_have_attribute("data-id", "live-004", timeout=8_000)


# The tests below each open their own tab (the shared one's filters and history stay out of it)
# on the stack above, which by now also holds the rows the tests above published.


@contextlib.asynccontextmanager
async def own_page(browser: Browser, **options: Any) -> AsyncIterator[Page]:
    """A fresh tab (empty localStorage) that fails the test on an uncaught error in the page."""
    context = await browser.new_context(viewport={"width": 1400, "height": 950}, **options)
    errors: list[str] = []
    try:
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
    finally:
        # A route handler still at work would raise into the next test (review2's own_page).
        for each in context.pages:
            await each.unroute_all(behavior="ignoreErrors")
        await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


async def live(page: Page) -> None:
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")


async def listed(stack: Stack, params: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The API's list (up to 200 rows) for `params`."""
    headers = {"Authorization": f"Bearer {stack.token('ada', 'admin')}"}
    async with httpx.AsyncClient(base_url=stack.base_url, headers=headers) as client:
        answer = await client.get("/api/executions", params=[*params, ("limit", "200")])
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()["executions"]
    return rows


async def wait_listed(
    stack: Stack,
    params: Sequence[tuple[str, str]],
    wanted: Callable[[list[dict[str, Any]]], bool],
) -> None:
    """Until the API's list for `params` satisfies `wanted` (ingest has written the events)."""
    for _ in range(150):
        if wanted(await listed(stack, params)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the API never listed what was wanted for {params}")


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Until `check()` holds (events from the page reach the test a moment later)."""
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


def with_ids(*ids: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda rows: set(ids) <= {r["id"] for r in rows}


def without_ids(*ids: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda rows: not set(ids) & {r["id"] for r in rows}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def nudge(stack: Stack) -> None:
    """A live event (one no search or status filter below lets in): after it, the page
    re-reads its first page."""
    await stack.publish(
        "execution_completed",
        {"id": unique("nudge"), "agent_name": "beta", "message": "nudge", "response": "nudge"},
    )


async def test_rows_the_api_lists_are_not_filtered_again(browser: Browser, stack: Stack) -> None:
    """A poll's rows are the API's answer to the page's own filters: the page must not drop
    them with its weaker check (a search matching the response, which summaries lack)."""
    word = unique("zebra")
    hidden = unique("found")
    async with own_page(browser) as page:

        def route(ws: WebSocketRoute) -> None:
            # The page never hears of `hidden` live: only a poll can bring it.
            server = ws.connect_to_server()
            server.on_message(lambda m: None if hidden in str(m) else ws.send(m))

        await page.route_web_socket(re.compile(r"/ws"), route)
        await page.goto(stack.page_url(query=f"search={word}"))
        await live(page)
        await expect(page.locator(".empty")).to_be_visible()
        await stack.publish(
            "execution_completed",
            {
                "id": hidden,
                "agent_name": "alpha",
                "message": "A plain task",
                "response": f"Found a {word} in the logs",
                "started_at": now_iso(),
            },
        )
        await wait_listed(stack, [("search", word)], with_ids(hidden))
        await nudge(stack)
        await expect(page.locator(ROWS)).to_have_count(1)
        assert await shown_ids(page) == [hidden]
        await expect(page.locator(".summary")).to_have_text("Showing 1 of 1 executions")


async def test_the_detail_page_follows_its_execution_whatever_the_list_showed(
    browser: Browser, stack: Stack
) -> None:
    """Opened from a list filtered to agent alpha, the detail of gamma's child run still gets
    its live updates; back on the list, the feed is narrowed to alpha again."""
    parent = next(r for r in stack.rows if r.agent_name == "alpha" and r.status == "failed")
    child = unique("kid")
    await stack.publish(
        "execution_started",
        {
            "id": child,
            "agent_name": "gamma",
            "parent_execution_id": parent.id,
            "message": "A child run",
            "started_at": now_iso(),
        },
    )
    await wait_listed(stack, [("agent_name", "gamma")], with_ids(child))
    async with own_page(browser) as page:
        subscribed: list[Any] = []

        def on_socket(ws: WebSocket) -> None:
            ws.on("framesent", lambda frame: subscribed.append(json.loads(frame)["subscribe"]))

        page.on("websocket", on_socket)
        await page.goto(stack.page_url(query="agent_name=alpha"))
        await live(page)
        await page.locator(f'tr[data-id="{parent.id}"] .c-message a').click()
        await page.locator(f'.panel a[href="/?execution={child}"]').click()
        head = page.locator(f'.page-detail[data-id="{child}"] .detail-head .status-text')
        await expect(head).to_have_text("running")
        await stack.publish(
            "execution_completed",
            {"id": child, "agent_name": "gamma", "response": "done", "completed_at": now_iso()},
        )
        await expect(head).to_have_text("success")
        await eventually(lambda: subscribed[-1] == {}, f"subscribed to {subscribed}")
        await page.go_back()
        await page.go_back()
        await expect(page).to_have_url(re.compile(r"\?agent_name=alpha$"))
        await expect(page.locator(ROWS).first).to_be_visible()
        alpha = {"agent_name": ["alpha"]}
        await eventually(lambda: subscribed[-1] == alpha, f"subscribed to {subscribed}")


async def test_back_undoes_a_filter_set_on_a_bare_url(browser: Browser, stack: Stack) -> None:
    async with own_page(browser) as page:
        await page.goto(stack.page_url())
        await expect(page.locator(ROWS)).to_have_count(50)
        assert page.url == stack.base_url + "/"
        await page.locator("select[name=status]").select_option("failed")
        await expect(page).to_have_url(re.compile(r"\?status=failed$"))
        await expect(page.locator(f"{ROWS}:not([data-status=failed])")).to_have_count(0)
        await page.go_back()
        await expect(page.locator(ROWS)).to_have_count(50)
        assert page.url == stack.base_url + "/"
        await expect(page.locator("select[name=status]")).to_have_value("")
        # And forward again: the filter is back.
        await page.go_forward()
        await expect(page.locator("select[name=status]")).to_have_value("failed")


async def test_a_row_that_stops_matching_leaves_the_list(browser: Browser, stack: Stack) -> None:
    """Under `status=running`, a run that completes goes (live), and so does a row the API no
    longer lists (a search whose match a later event replaced) once the page polls."""
    run = unique("run")

    async def no_list(route: Route) -> None:
        await route.abort()

    async with own_page(browser) as page:
        await page.goto(stack.page_url(query="status=running"))
        await live(page)
        await settled(page)
        await stack.publish(
            "execution_started",
            {"id": run, "agent_name": "alpha", "message": "Runner", "started_at": now_iso()},
        )
        row = page.locator(f'tr[data-id="{run}"]')
        await expect(row).to_have_attribute("data-status", "running")
        # The live event alone takes it out: the list is not re-read meanwhile.
        await page.route("**/api/executions?*", no_list)
        await stack.publish(
            "execution_completed", {"id": run, "agent_name": "alpha", "completed_at": now_iso()}
        )
        await expect(row).to_have_count(0)
        await expect(page.locator(f"{ROWS}:not([data-status=running])")).to_have_count(0)
        await page.unroute("**/api/executions?*", no_list)
        # The database has caught up and the page has re-read the list: the count agrees.
        # (Absent from the running list is also true before ingest stored the run at all.)
        await wait_listed(stack, [("status", "success")], with_ids(run))
        await wait_listed(stack, [("status", "running")], without_ids(run))
        await nudge(stack)
        await expect(page.locator(".summary")).to_have_text(
            re.compile(r"^Showing (\d+) of \1 executions$")
        )
        shown = await page.locator(ROWS).count()
        await expect(page.locator(".summary")).to_have_text(
            f"Showing {shown} of {shown} executions"
        )

        word = unique("kiwi")
        renamed = unique("renamed")
        await stack.publish(
            "execution_started",
            {
                "id": renamed,
                "agent_name": "beta",
                "message": f"Sort {word}",
                "started_at": now_iso(),
            },
        )
        await wait_listed(stack, [("search", word)], with_ids(renamed))
        await page.goto(stack.page_url(query=f"search={word}"))
        await live(page)
        await expect(page.locator(ROWS)).to_have_count(1)
        # A later event rewrites the message: the API stops listing it under the search.
        await stack.publish(
            "execution_completed",
            {"id": renamed, "agent_name": "beta", "message": "Sort apples", "response": "ok"},
        )
        await wait_listed(stack, [("search", word)], without_ids(renamed))
        await nudge(stack)
        await expect(page.locator(ROWS)).to_have_count(0)
        await expect(page.locator(".empty")).to_contain_text("No executions match")


async def test_a_link_with_two_projects_lists_both(browser: Browser, stack: Stack) -> None:
    """The API splits commas for agent, status and trigger only: repeated project values must
    reach it repeated."""
    tag = uuid.uuid4().hex[:6]
    projects = {f"billing-{tag}": unique("bill"), f"ops-{tag}": unique("ops")}
    for project, id_ in [*projects.items(), (f"other-{tag}", unique("other"))]:
        await stack.publish(
            "execution_completed",
            {"id": id_, "agent_name": "beta", "project": project, "started_at": now_iso()},
        )
    params = [("project", p) for p in projects]
    await wait_listed(stack, params, with_ids(*projects.values()))
    async with own_page(browser) as page:
        requests: list[str] = []
        page.on(
            "request", lambda r: requests.append(r.url) if "/api/executions?" in r.url else None
        )
        await page.goto(stack.page_url(query="&".join(f"project={p}" for p in projects)))
        await expect(page.locator(ROWS)).to_have_count(2)
        assert set(await shown_ids(page)) == set(projects.values())
        for project in projects:
            await expect(page.locator("[data-link-filters]")).to_contain_text(f"project={project}")
        assert all(f"project={p}" in requests[0] for p in projects), requests


async def test_a_failed_load_more_keeps_the_rows(browser: Browser, stack: Stack) -> None:
    async with own_page(browser) as page:
        await page.goto(stack.page_url())
        await expect(page.locator(ROWS)).to_have_count(50)

        async def refuse(route: Route) -> None:
            await route.fulfill(
                status=429,
                headers={"Retry-After": "1"},
                content_type="application/json",
                body='{"detail": "rate limited"}',
            )

        await page.route("**/api/executions?*cursor=*", refuse)
        await page.locator(".btn-more").click()
        await expect(page.locator(".more-error")).to_contain_text("rate limited")
        await expect(page.locator(".table-wrap")).to_be_visible()
        await expect(page.locator(ROWS)).to_have_count(50)
        await expect(page.locator(".btn-more")).to_be_enabled()
        # The cursor was kept: trying again loads the next page.
        await page.unroute("**/api/executions?*cursor=*", refuse)
        await page.locator(".btn-more").click()
        await expect(page.locator(ROWS).nth(50)).to_be_attached()
        await expect(page.locator(".more-error")).to_be_hidden()
        ids = await shown_ids(page)
        assert len(ids) == len(set(ids))


async def test_a_refused_token_while_opening_a_view_leaves_the_sign_in_form(
    browser: Browser, stack: Stack
) -> None:
    refused = json.dumps({"detail": "token expired"})

    async def unauthorized(route: Route) -> None:
        await route.fulfill(status=401, content_type="application/json", body=refused)

    async def open_detail(page: Page) -> None:
        await page.locator(f'tr[data-id="{DETAILED_ID}"] .c-message a').click()

    async def open_compare(page: Page) -> None:
        for id_ in (DETAILED_ID, "seed-002"):
            await page.locator(f'tr[data-id="{id_}"] input.pick').check()
        await page.locator(".list-head .btn").click()

    async with own_page(browser) as page:
        form = page.locator("form.signin")
        for open_view, path in [
            (open_detail, f"**/api/executions/{DETAILED_ID}"),
            (open_detail, f"**/api/executions/{DETAILED_ID}/log"),
            (open_compare, f"**/api/executions/{DETAILED_ID}"),
        ]:
            await page.goto(stack.page_url(query="clear=1"))
            await expect(page.locator(ROWS)).to_have_count(50)
            await page.route(path, unauthorized)
            await open_view(page)
            await expect(form).to_be_visible()
            await expect(form.locator(".error-box")).to_contain_text("sign in again")
            await page.wait_for_timeout(300)  # whatever the view still had in flight
            await expect(form).to_be_visible()
            await expect(page.locator("#app .page")).to_have_count(0)
            await page.unroute(path, unauthorized)


async def test_a_poll_answering_for_old_filters_is_ignored(browser: Browser, stack: Stack) -> None:
    """A poll sent before the filters changed must not bring its count or rows into the new
    list ("Showing 9 of 65")."""
    held, answered = asyncio.Event(), asyncio.Event()
    hold = {"on": False}

    async def slow_unfiltered(route: Route) -> None:
        if not hold["on"] or "status=" in route.request.url:
            await route.continue_()
            return
        hold["on"] = False
        held.set()
        await asyncio.sleep(1.5)
        await route.continue_()
        response = await route.request.response()
        if response is not None:
            await response.finished()
        answered.set()

    failed = await listed(stack, [("status", "failed")])
    async with own_page(browser) as page:
        await page.route("**/api/executions?*", slow_unfiltered)
        await page.goto(stack.page_url())
        await live(page)
        await expect(page.locator(ROWS)).to_have_count(50)
        hold["on"] = True
        await nudge(stack)  # the page polls its unfiltered first page, slowly
        await asyncio.wait_for(held.wait(), 15)
        await page.locator("select[name=status]").select_option("failed")
        summary = page.locator(".summary")
        await expect(summary).to_have_text(re.compile(rf"^Showing {len(failed)} of "))
        await asyncio.wait_for(answered.wait(), 15)
        await page.wait_for_timeout(200)  # the page has read the old answer by now
        await expect(summary).to_have_text(f"Showing {len(failed)} of {len(failed)} executions")
        await expect(page.locator(f"{ROWS}:not([data-status=failed])")).to_have_count(0)


async def test_links_with_bad_values_still_show_a_page(browser: Browser, stack: Stack) -> None:
    async with own_page(browser) as page:
        # A range that is no number of hours is dropped, not a blank page.
        failed = await listed(stack, [("status", "failed")])
        await page.goto(stack.page_url(query="hours=abc&status=failed"))
        await expect(page.locator(ROWS)).to_have_count(len(failed))
        await expect(page).to_have_url(re.compile(r"\?status=failed$"))
        await expect(page.locator("select[name=hours]")).to_have_value("")
        # Compare with a single id says what it needs instead of loading forever.
        await page.goto(stack.page_url(query=f"compare={DETAILED_ID}"))
        await expect(page.locator(".error-box")).to_contain_text("two execution ids")
        await expect(page.locator(".loading")).to_have_count(0)
        await page.locator(f'.error-box a[href="/?execution={DETAILED_ID}"]').click()
        await expect(page.locator(".waterfall .step")).to_have_count(4)


async def in_api_order(stack: Stack, page: Page, params: Sequence[tuple[str, str]]) -> list[str]:
    """Until the rows shown are the start of the API's list for `params`; the API's ids."""
    for _ in range(100):
        wanted = [e["id"] for e in await listed(stack, params)]
        shown = await shown_ids(page)
        if shown and shown == wanted[: len(shown)]:
            return wanted
        await asyncio.sleep(0.1)
    raise AssertionError(f"shown {shown}\nthe API lists {wanted}")


async def test_live_rows_take_their_place_in_the_list_order(browser: Browser, stack: Stack) -> None:
    """Newest start first: a live row goes where its start puts it, and one older than the rows
    loaded (a run started days ago that completes now, a backfilled one) is left to "Load more"."""
    now = datetime.now(UTC)
    old, mid, back, mark = unique("old"), unique("mid"), unique("back"), unique("mark")
    old_start = (now - timedelta(days=3)).isoformat()
    await stack.publish(
        "execution_started",
        {"id": old, "agent_name": "alpha", "message": "Long haul", "started_at": old_start},
    )
    await wait_listed(stack, [], with_ids(old))
    seed10 = stack.rows[10]
    async with own_page(browser) as page:
        await page.goto(stack.page_url())
        await live(page)
        await expect(page.locator(ROWS)).to_have_count(50)
        await stack.publish(
            "execution_completed",
            {"id": old, "agent_name": "alpha", "started_at": old_start, "completed_at": now_iso()},
        )
        mid_start = seed10.started_at - timedelta(seconds=30)
        await stack.publish(
            "execution_started",
            {"id": mid, "agent_name": "beta", "started_at": mid_start.isoformat()},
        )
        back_start = (now - timedelta(days=5)).isoformat()
        await stack.publish(
            "execution_completed", {"id": back, "agent_name": "gamma", "started_at": back_start}
        )
        await stack.publish(
            "execution_started", {"id": mark, "agent_name": "alpha", "started_at": now_iso()}
        )
        await expect(page.locator(ROWS).first).to_have_attribute("data-id", mark)
        ids = await shown_ids(page)
        assert ids[ids.index(mid) - 1] == seed10.id, ids
        assert old not in ids
        assert back not in ids
        await wait_listed(stack, [], with_ids(mid, back, mark))
        await nudge(stack)
        await in_api_order(stack, page, [])
        more = page.locator(".btn-more")
        while await more.is_visible():
            count = await page.locator(ROWS).count()
            await more.click()
            await expect(page.locator(ROWS)).not_to_have_count(count)
        wanted = await in_api_order(stack, page, [])
        assert await shown_ids(page) == wanted
        assert wanted[-2:] == [old, back]
        await expect(page.locator(".summary")).to_have_text(
            f"Showing {len(wanted)} of {len(wanted)} executions"
        )


async def test_a_live_row_without_a_start_waits_for_the_api_to_place_it(
    browser: Browser, stack: Stack
) -> None:
    """A completion often says nothing of the start: the row goes where the API lists it."""
    slow, mark = unique("slow"), unique("mark")
    seed2 = stack.rows[2]
    start = (seed2.started_at - timedelta(seconds=20)).isoformat()
    await stack.publish(
        "execution_started", {"id": slow, "agent_name": "alpha", "started_at": start}
    )
    await wait_listed(stack, [("status", "running")], with_ids(slow))
    async with own_page(browser) as page:
        await page.goto(stack.page_url(query="status=success"))
        await live(page)
        await settled(page)
        await stack.publish(
            "execution_completed", {"id": slow, "agent_name": "alpha", "completed_at": now_iso()}
        )
        await stack.publish(
            "execution_completed", {"id": mark, "agent_name": "beta", "started_at": now_iso()}
        )
        await expect(page.locator(ROWS).first).to_have_attribute("data-id", mark)
        # Not on top meanwhile: absent, or already where the API's fill put it.
        ids = await shown_ids(page)
        assert slow not in ids or ids[ids.index(slow) - 1] == seed2.id, ids
        await wait_listed(stack, [("status", "success")], with_ids(slow, mark))
        await nudge(stack)
        await expect(page.locator(f'tr[data-id="{slow}"]')).to_be_attached()
        await in_api_order(stack, page, [("status", "success")])
        ids = await shown_ids(page)
        assert ids[ids.index(slow) - 1] == seed2.id, ids


async def test_the_compare_view_follows_both_executions_live(
    browser: Browser, stack: Stack
) -> None:
    a, b = unique("cmp-a"), unique("cmp-b")
    for id_, agent in ((a, "alpha"), (b, "gamma")):
        await stack.publish(
            "execution_started", {"id": id_, "agent_name": agent, "started_at": now_iso()}
        )
    await wait_listed(stack, [], with_ids(a, b))
    async with own_page(browser) as page:
        await page.goto(stack.page_url(query=f"compare={a},{b}"))
        await live(page)
        status = page.locator("tr[data-field=status] td")
        await expect(status.nth(1)).to_contain_text("running")
        await page.locator(".compare-grid").first.scroll_into_view_if_needed()
        await stack.publish(
            "execution_completed",
            {"id": b, "agent_name": "gamma", "cost": 0.25, "completed_at": now_iso()},
        )
        await expect(status.nth(1)).to_contain_text("success")
        await expect(status.nth(0)).to_contain_text("running")
        await expect(page.locator("tr[data-field=cost] td").nth(1)).to_have_text("$0.25")
        await stack.publish("execution_failed", {"id": a, "agent_name": "alpha", "error": "boom"})
        await expect(status.nth(0)).to_contain_text("failed")
        await expect(page.locator(".loading")).to_have_count(0)


async def test_load_more_under_a_time_range(browser: Browser, stack: Stack) -> None:
    """The range's start is computed once per list: "Load more" continues that very list (the
    API refuses a cursor sent with other filters, and a start a moment later is another)."""
    since = (datetime.now(UTC) - timedelta(hours=24)).isoformat()
    wanted = [e["id"] for e in await listed(stack, [("start_time", since)])]
    async with own_page(browser) as page:
        await page.goto(stack.page_url(query="hours=24"))
        await expect(page.locator(ROWS)).to_have_count(50)
        await page.locator(".btn-more").click()
        await expect(page.locator(ROWS)).to_have_count(len(wanted))
        await expect(page.locator(".more-error")).to_be_hidden()


async def test_a_search_typed_just_before_leaving_the_list_stays_behind(
    browser: Browser, stack: Stack
) -> None:
    """The search waits for a pause in typing; a row opened meanwhile must not be sent back to
    the list's URL (nor its live feed narrowed) when that pause comes."""
    async with own_page(browser) as page:
        await page.goto(stack.page_url(query="agent_name=gamma"))
        await live(page)
        await settled(page)
        # Typed, then the row opened, in one go: a click through Playwright can take longer
        # than the pause the search waits for on a loaded machine (a live row moving the list
        # under the pointer, say), and the row is filtered out before it is reached.
        await page.locator('tr[data-id="seed-002"] .c-message a').wait_for()
        await page.evaluate(
            """() => {
                const search = document.querySelector("input[name=search]");
                search.value = "invoice";
                search.dispatchEvent(new Event("input", { bubbles: true }));
                document.querySelector('tr[data-id="seed-002"] .c-message a').click();
            }"""
        )
        detail = page.locator('.page-detail[data-id="seed-002"]')
        await expect(detail).to_be_visible()
        await page.wait_for_timeout(800)
        assert page.url.endswith("/?execution=seed-002")
        await expect(detail).to_be_visible()


async def test_the_detail_page_refreshes_while_the_live_feed_is_down(
    browser: Browser, stack: Stack
) -> None:
    """The indicator says "polling every 10 s" on every view: the detail page must poll too."""
    run = unique("run")
    await stack.publish(
        "execution_started", {"id": run, "agent_name": "alpha", "started_at": now_iso()}
    )
    await wait_listed(stack, [], with_ids(run))
    async with own_page(browser) as page:

        async def refuse(ws: WebSocketRoute) -> None:
            await ws.close(code=1011, reason="down")

        await page.route_web_socket(re.compile(r"/ws"), refuse)
        await page.goto(stack.page_url(query=f"execution={run}"))
        head = page.locator(".detail-head .status-text")
        await expect(head).to_have_text("running")
        await expect(page.locator("#live")).to_have_attribute("data-state", "polling")
        await stack.publish(
            "execution_completed", {"id": run, "agent_name": "alpha", "completed_at": now_iso()}
        )
        await expect(head).to_have_text("success", timeout=25_000)


async def test_a_resync_refreshes_the_detail_page(browser: Browser, stack: Stack) -> None:
    """`resync_required` means events were missed: the view shown is read again, whichever."""
    run = unique("run")
    await stack.publish(
        "execution_started", {"id": run, "agent_name": "alpha", "started_at": now_iso()}
    )
    await wait_listed(stack, [], with_ids(run))
    sockets: list[WebSocketRoute] = []
    async with own_page(browser) as page:

        def route(ws: WebSocketRoute) -> None:
            # The page never hears of `run` live: only reading it again can tell it.
            server = ws.connect_to_server()
            server.on_message(lambda m: None if run in str(m) else ws.send(m))
            sockets.append(ws)

        await page.route_web_socket(re.compile(r"/ws"), route)
        await page.goto(stack.page_url(query=f"execution={run}"))
        await live(page)
        head = page.locator(".detail-head .status-text")
        await expect(head).to_have_text("running")
        await stack.publish(
            "execution_completed", {"id": run, "agent_name": "alpha", "completed_at": now_iso()}
        )
        await wait_listed(stack, [("status", "success")], with_ids(run))
        sockets[-1].send(json.dumps({"type": "resync_required", "seq": 1}))
        await expect(head).to_have_text("success")


async def test_a_client_is_not_offered_stop(browser: Browser, stack: Stack) -> None:
    """Clients may not terminate executions (the API answers them 403): no Stop for them."""
    run = unique("run")
    await stack.publish(
        "execution_started", {"id": run, "agent_name": "gamma", "started_at": now_iso()}
    )
    await wait_listed(stack, [("agent_name", "gamma")], with_ids(run))
    async with own_page(browser) as page:
        await page.goto(stack.page_url(user="cleo", role="client"))
        row = page.locator(f'tr[data-id="{run}"]')
        await expect(row).to_have_attribute("data-status", "running")
        await expect(row.locator("[data-action=stop]")).to_have_count(0)
        await row.locator(".c-message a").click()
        await expect(page.locator(".detail-head .status-text")).to_have_text("running")
        await expect(page.locator("[data-action=stop]")).to_have_count(0)
