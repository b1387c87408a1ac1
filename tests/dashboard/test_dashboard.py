"""The dashboard in headless Chromium against real ingest, query and notifier processes."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from shared.auth import mint_token
from tests.dashboard.conftest import Stack, screenshot
from tests.dashboard.seed import CHILD_ID, DETAILED_ID, RUNNING_ID

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
    ("name", "value", "expected"),
    [
        ("status", "failed", lambda r: r.status == "failed"),
        ("agent_name", "beta", lambda r: r.agent_name == "beta"),
        ("triggered_by", "manual", lambda r: r.triggered_by == "manual"),
        ("hours", "1", lambda r: (datetime.now(UTC) - r.started_at).total_seconds() < 3600),
    ],
)
async def test_each_filter_changes_list_and_url(
    admin_page: Page, stack: Stack, name: str, value: str, expected: object
) -> None:
    page = admin_page
    await clear_filters(page)
    wanted = [r.id for r in stack.rows if expected(r)]  # type: ignore[operator]
    await page.locator(f"select[name={name}]").select_option(value)
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
    await expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=10_000)
    execution = {
        "id": "live-001",
        "agent_name": "alpha",
        "triggered_by": "api",
        "message": "Live task: reconcile the ledger",
        "started_at": now_iso(),
    }
    await stack.publish("execution_started", execution)
    top = page.locator(ROWS).first
    await expect(top).to_have_attribute("data-id", "live-001", timeout=10_000)
    await expect(top).to_have_attribute("data-status", "running")

    await stack.publish(
        "execution_failed",
        {"id": "live-001", "agent_name": "alpha", "error": "RateLimitError: slow down"},
    )
    await expect(top).to_have_attribute("data-status", "failed", timeout=10_000)
    await expect(page.locator(".toast-error").first).to_contain_text("failed")
    assert (await shown_ids(page)).count("live-001") == 1
    # Another agent's event under the same id is refused by ingest (the feed still carries it):
    # it does not repaint the row. The next event, once shown, proves it was received.
    await stack.publish("execution_completed", {"id": "live-001", "agent_name": "beta"})
    await stack.publish("execution_started", {"id": "live-001-next", "agent_name": "alpha"})
    await expect(top).to_have_attribute("data-id", "live-001-next", timeout=10_000)
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
        await page.goto(stack.page_url(query=f"execution={DETAILED_ID}"))
        steps = page.locator(".waterfall .step")
        await expect(steps).to_have_count(4)
        await expect(page.locator("#live")).to_have_attribute("data-state", "live")
        await steps.nth(1).locator("summary").click()
        await page.locator(".compare-form input").fill("seed-0")
        detail = f"/api/executions/{DETAILED_ID}"
        async with page.expect_response(lambda r: r.url.endswith(detail)) as refreshed:
            for _ in range(3):  # a burst: one refresh
                await stack.publish("execution_started", {"id": DETAILED_ID, "agent_name": "beta"})
        assert (await refreshed.value).ok
        await expect(page.locator(".loading")).to_have_count(0)
        await expect(page.locator(".waterfall .step details[open]")).to_have_count(1)
        await expect(steps.nth(1).locator("details")).to_have_attribute("open", "")
        await expect(page.locator(".compare-form input")).to_have_value("seed-0")
        fetched: list[str] = []
        page.on("request", lambda r: fetched.append(r.url) if r.url.endswith(detail) else None)
        await page.wait_for_timeout(1500)
        assert fetched == []  # the burst's other events did not each refetch
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
    await expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=10_000)
    await stack.publish(
        "execution_started",
        {
            "id": "live-002",
            "agent_name": "beta",
            "triggered_by": "schedule",
            "started_at": now_iso(),
        },
    )
    await expect(page.locator(ROWS).first).to_have_attribute("data-id", "live-002", timeout=10_000)

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
