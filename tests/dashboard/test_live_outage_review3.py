"""Third review, in headless Chromium: the page's live feed while the notifier has lost NATS.

Before, the notifier's socket stayed open and silent during the outage, and the page kept
saying "live" over stale data. Now the notifier says `feed_status` (docs/notifier.md) and the
page's LiveFeed polls while it is not live, then goes back to live, with the events missed
meanwhile. End to end on real parts: the page's module in Chromium, the real notifier
in-process, a NATS server of the test's own that is stopped and started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page

from shared.subjects import Subjects
from tests.chaos.infra import own_nats
from tests.dashboard import test_page_logic
from tests.notifier.helpers import execution_event, jetstream, publish, running, settings_for, token

pytestmark = pytest.mark.browser

static_url = test_page_logic.static_url


@pytest_asyncio.fixture
async def page(browser: Browser, static_url: str) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{static_url}/js/format.js")
    try:
        yield page
    finally:
        await context.close()
    assert not errors, errors


async def until(page: Page, expression: str, limit_s: float) -> Any:
    """Wait (real time) until `expression` is truthy in the page; its value."""
    deadline = time.monotonic() + limit_s
    while not (value := await page.evaluate(expression)):
        assert time.monotonic() < deadline, (expression, await page.evaluate("window.log"))
        await asyncio.sleep(0.05)
    return value


async def test_the_page_polls_while_the_notifier_has_lost_nats_and_is_live_again_after(
    page: Page, database_url: str, subjects: Subjects, org: str
) -> None:
    async with own_nats() as server:
        settings = settings_for(server.url, database_url, subjects)
        async with running(settings) as app:
            await page.evaluate(
                """async ([url, token]) => {
                    localStorage.setItem('fleetwatch.token', token);
                    const m = await import('/js/live.js');
                    window.log = {states: [], polls: 0, seqs: []};
                    window.feed = new m.LiveFeed({
                        onState: (s) => log.states.push(s),
                        onPoll: () => { log.polls += 1; },
                        onEvent: (e) => log.seqs.push(e.seq),
                    });
                    feed.url = url;
                    feed.connect();
                }""",
                [f"ws://127.0.0.1:{app.port}/ws", token(org, "boss", "admin")],
            )
            # Live once the notifier said `ready`: from then on it delivers every event.
            await until(page, "feed.state === 'live'", 10)
            async with jetstream(server.url) as js:
                before = await publish(js, subjects, execution_event(org, "x"))
            await until(page, f"log.seqs.includes({before})", 5)
            await server.kill()
            await until(page, "feed.state === 'polling'", 5)
            assert await page.evaluate("log.polls") == 1  # polled at once, as on a drop
            assert await page.evaluate("feed.pollTimer !== null")  # and goes on polling
            assert await page.evaluate("feed.socket.readyState") == 1  # the socket never closed
            await server.start()
            await until(page, "feed.state === 'live'", 20)
            assert await page.evaluate("feed.pollTimer") is None
            assert await page.evaluate("log.states") == ["connecting", "live", "polling", "live"]
            async with jetstream(server.url) as js:
                after = await publish(js, subjects, execution_event(org, "x"))
            await until(page, f"log.seqs.includes({after})", 5)
            assert await page.evaluate("log.seqs") == [before, after]
            await page.evaluate("feed.stop()")
