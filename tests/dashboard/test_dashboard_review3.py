"""Third review of the dashboard in headless Chromium: the order of a run's steps as the API
gives them, a sign-in link opened in a tab that is already signed in, and long names."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Browser, Page, Route, expect

from tests.dashboard.conftest import Stack
from tests.dashboard.seed import DETAILED_ID
from tests.dashboard.test_dashboard_review2 import own_page

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ROWS = "tbody tr.row"


async def waterfall_nodes(page: Page, components: list[dict[str, Any]]) -> list[str]:
    """The `node/attempt` of each bar, top to bottom, as detail.js draws `components`."""
    result: list[str] = await page.evaluate(
        """async (components) => {
            const m = await import('/static/js/detail.js');
            const exec = {id: 'x', status: 'success', started_at: '2026-01-01T00:00:00+00:00',
                          completed_at: '2026-01-01T00:01:00+00:00'};
            const ol = m.waterfall(exec, components);
            return [...ol.querySelectorAll('li.step')]
                .map(li => `${li.dataset.node}/${li.dataset.attempt}`);
        }""",
        components,
    )
    return result


def step(node: str, attempt: int, started: str | None) -> dict[str, Any]:
    return {
        "node_id": node,
        "name": node,
        "attempt": attempt,
        "status": "success",
        "retry_policy": "exponential",
        "max_attempts": 3,
        "started_at": started,
        "completed_at": None,
    }


async def test_steps_keep_the_api_order_whatever_their_time_precision(
    browser: Browser, stack: Stack
) -> None:
    """The API writes a time without its fraction when it has none ("…:05+00:00" beside
    "…:05.500000+00:00"): sorting those strings drew the later step first. And a first attempt
    known only by its failure (no start) jumped to the top of the whole waterfall, away from the
    retries the API lists it with (steps by their node's first start, then attempt)."""
    async with own_page(browser) as page:
        await page.goto(f"{stack.base_url}/static/app.css")
        api_order = [
            step("plan", 1, "2026-01-01T00:00:05+00:00"),
            step("fetch", 1, "2026-01-01T00:00:05.500000+00:00"),
            step("draft", 1, "2026-01-01T00:00:09+00:00"),
            step("send", 1, None),
            step("send", 2, "2026-01-01T00:00:20.250000+00:00"),
        ]
        assert await waterfall_nodes(page, api_order) == [
            "plan/1",
            "fetch/1",
            "draft/1",
            "send/1",
            "send/2",
        ]


async def test_a_run_with_hundreds_of_steps_renders_them_all_in_order(
    browser: Browser, stack: Stack
) -> None:
    """600 attempts (a step retried forever): every one drawn, in the API's order."""
    async with own_page(browser) as page:
        await page.goto(f"{stack.base_url}/static/app.css")
        many = [
            step("poll", i + 1, f"2026-01-01T00:00:{i // 20:02d}.{(i % 20) * 5:02d}+00:00")
            if i % 20
            else step("poll", i + 1, f"2026-01-01T00:00:{i // 20:02d}+00:00")
            for i in range(600)
        ]
        nodes = await waterfall_nodes(page, many)
        assert nodes == [f"poll/{i + 1}" for i in range(600)]


async def test_a_token_link_opened_in_a_signed_in_tab_signs_in_and_leaves_the_address_bar(
    browser: Browser, stack: Stack
) -> None:
    """A `#token=` link for the page already open only changes the fragment: no reload, so the
    token used to stay in the address bar (and in the history entry it made) and the tab went
    on as the previous user."""
    async with own_page(browser) as page:
        await page.goto(stack.page_url("ada", "admin"))
        await expect(page.locator(ROWS)).to_have_count(50)
        await expect(page.locator("#whoami")).to_contain_text("ada")
        assert "token" not in page.url
        # The address bar's own URL with a token: only the fragment changes.
        await page.goto(f"{page.url}#token={stack.token('uma', 'user')}")
        await expect(page.locator("#whoami")).to_contain_text("uma · user")
        assert "token" not in page.url
        # uma sees alpha and beta only.
        await expect(page.locator(f"{ROWS}[data-agent=gamma]")).to_have_count(0)
        await expect(page.locator(f"{ROWS}[data-agent=alpha]").first).to_be_visible()
        await page.go_back()
        assert "token" not in page.url


async def test_long_unbroken_names_and_text_stay_inside_the_page(
    browser: Browser, stack: Stack
) -> None:
    """A step name, an agent's display name or a message with no space to break at (a URL, a
    hash, a stack frame) must not push the detail page wider than the window; what the API sends
    is shown as text, never read as HTML."""
    long = "x" * 400
    payload = '<img src=x onerror="window.__xss=1">'
    async with own_page(browser) as page:

        async def doctor(route: Route) -> None:
            response = await route.fetch()
            body = await response.json()
            body["agent_display_name"] = f"Agent{long}{payload}"
            body["message"] = f"{long}{payload}"
            body["error"] = f"{long}{payload}"
            body["tool_calls"] = [{"name": payload, "arguments": long}]
            body["external_id"] = f"{long}{payload}"
            for c in body["components"]:
                c["name"] = f"{c['name']}{long}{payload}"
                c["node_id"] = f"{c['node_id']}{long}"
                c["input"] = {"x": f"{long}{payload}"}
            await route.fulfill(response=response, json=body)

        await page.route(f"**/api/executions/{DETAILED_ID}", doctor)
        await page.goto(stack.page_url(query=f"execution={DETAILED_ID}"))
        await expect(page.locator(".waterfall .step")).to_have_count(4)
        for details in await page.locator(".waterfall details").all():
            await details.evaluate("d => { d.open = true; }")
        widths = await page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        # What is wider than its box and lets it show (not a scroll box): the culprits.
        wide = await page.evaluate(
            """[...document.querySelectorAll('main *')]
                .filter(e => e.scrollWidth > e.clientWidth + 1
                             && getComputedStyle(e).overflowX === 'visible')
                .map(e => `${e.tagName}.${e.className}`).slice(-5)"""
        )
        assert widths[0] <= widths[1], (widths, wide)
        assert await page.evaluate("window.__xss") is None
        assert await page.locator("main img").count() == 0


async def test_counts_just_short_of_a_million_read_as_a_million(
    browser: Browser, stack: Stack
) -> None:
    """999,960 tokens read "1000.0k" (rounded after the unit was picked), never "1.0M"."""
    async with own_page(browser) as page:
        await page.goto(f"{stack.base_url}/static/app.css")
        counts = await page.evaluate(
            """async () => {
                const m = await import('/static/js/format.js');
                return [m.count(999_960), m.count(999_949), m.count(9_999), m.count(0),
                        m.count(null), m.count(2_500_000_000)];
            }"""
        )
        assert counts == ["1.0M", "999.9k", "9,999", "0", "—", "2500.0M"]
