"""The dashboard works under the query service's Content-Security-Policy: the list, the live
feed (a socket on the notifier's port) and the detail page (inline bar widths) run without a
single violation, and the token handed over in `#token=` leaves the address bar."""

from __future__ import annotations

from playwright.async_api import Browser, ConsoleMessage, expect

from tests.dashboard.conftest import Stack
from tests.dashboard.seed import DETAILED_ID


async def test_the_page_runs_under_its_content_security_policy(
    browser: Browser, stack: Stack
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(_text(message)))
    try:
        response = await page.goto(stack.page_url())
        assert response is not None
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        await expect(page.locator("#live")).to_have_attribute("data-state", "live")
        assert "token" not in page.url
        await page.goto(f"{stack.base_url}/?execution={DETAILED_ID}")
        await expect(page.locator(".waterfall .step")).to_have_count(4)
        widths = await page.locator(".step-bar").evaluate_all(
            "bars => bars.map(b => b.style.width)"
        )
        assert all(widths), widths  # the inline style attributes were applied
    finally:
        await context.close()
    violations = [m for m in console if "Content Security Policy" in m]
    assert not violations, violations


def _text(message: ConsoleMessage) -> str:
    return message.text
