"""Third review, in headless Chromium: the live feed against a notifier that accepts and then
closes at once, and costs grouped like the page's other numbers.

No services: the modules come from a plain static file server (as in test_page_logic) and the
"notifier" is a small local WebSocket server. The page's clock is Playwright's fake one, so the
real reconnect delays (seconds) are run through in moments, and measured exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page
from websockets.asyncio.server import ServerConnection, serve

from tests.dashboard import test_page_logic

pytestmark = pytest.mark.browser

# The same plain static server (a module fixture) and module runner as the page-logic tests.
static_url = test_page_logic.static_url
run = test_page_logic.run

STEP_MS = 50  # fake time advanced per step; a retry starts at its exact due time regardless


class FakeNotifier:
    """Accepts every WebSocket, then closes it at once, or on `release()` while `hold` is set."""

    def __init__(self) -> None:
        self.accepted = 0
        self.hold = False
        self._release = asyncio.Event()

    async def handle(self, ws: ServerConnection) -> None:
        self.accepted += 1
        if self.hold:
            await self._release.wait()
        await ws.close()

    def release(self) -> None:
        """Close every connection held so far; later ones wait for the next release."""
        self._release.set()
        self._release = asyncio.Event()


@pytest_asyncio.fixture
async def notifier() -> AsyncIterator[tuple[FakeNotifier, str]]:
    fake = FakeNotifier()
    async with serve(fake.handle, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        try:
            yield fake, f"ws://127.0.0.1:{port}/ws"
        finally:
            # A held handler would keep the server from shutting down (a failed test may leave one).
            fake.hold = False
            fake.release()


@pytest_asyncio.fixture
async def clock_page(browser: Browser, static_url: str) -> AsyncIterator[Page]:
    """A blank same-origin page whose clock stands still until the test moves it."""
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.clock.install(time=0)
    await page.goto(f"{static_url}/js/format.js")
    await page.clock.pause_at(1000)
    try:
        yield page
    finally:
        await context.close()
    assert not errors, errors


async def start_feeds(page: Page, url: str, count: int = 1, random: float | None = None) -> None:
    """`count` LiveFeeds against `url`; each records the (fake) time of every attempt it makes.

    `random` pins Math.random, so the jittered delays are known exactly."""
    await page.evaluate(
        """async ([url, count, random]) => {
            const m = await import('/js/live.js');
            if (random !== null) Math.random = () => random;
            window.attempts = [];
            window.feeds = [];
            const Real = WebSocket;
            let current = null;
            window.WebSocket = class extends Real {
                constructor(...args) { super(...args); attempts[current].push(performance.now()); }
            };
            for (let i = 0; i < count; i++) {
                attempts.push([]);
                const feed = new m.LiveFeed({});
                feed.url = url;
                feeds.push(feed);
                current = i;
                feed.connect();
            }
            window.feeds.forEach((feed, i) => {
                const connect = feed.connect.bind(feed);
                feed.connect = () => { current = i; connect(); };
            });
        }""",
        [url, count, random],
    )


async def settle(page: Page, *, open_ok: bool = False) -> None:
    """Wait (real time) until every feed's socket has closed (or, with `open_ok`, is open)."""
    deadline = time.monotonic() + 10
    done = "(f) => f.socket === null" + (" || f.socket.readyState === 1" if open_ok else "")
    while not await page.evaluate(f"feeds.every({done})"):
        assert time.monotonic() < deadline, "a socket neither opened and closed nor failed"
        await asyncio.sleep(0.005)


async def advance(page: Page, ms: int, *, open_ok: bool = False) -> None:
    """Move the page's clock on by `ms`, letting every socket close (or open) before each step."""
    for _ in range(ms // STEP_MS):
        await settle(page, open_ok=open_ok)
        await page.clock.run_for(STEP_MS)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def assert_gaps(actual: list[float], expected: list[float]) -> None:
    """Each retry starts its delay once the previous socket closed, at most a step late."""
    assert len(actual) == len(expected), (actual, expected)
    for got, want in zip(actual, expected, strict=True):
        assert want <= got <= want + STEP_MS, (actual, expected)


async def test_a_notifier_that_accepts_then_closes_is_retried_ever_more_slowly(
    clock_page: Page, notifier: tuple[FakeNotifier, str]
) -> None:
    """Before: the backoff went back to 1 s on every accepted connection, so a notifier that
    accepted and closed at once was hit every second forever (21 times in 20 s)."""
    fake, url = notifier
    await start_feeds(clock_page, url, random=0.5)
    await advance(clock_page, 20_000)
    await settle(clock_page)
    attempts: list[list[float]] = await clock_page.evaluate("attempts")
    # Backoff 1, 2, 4, 8, 10, 10 s; with equal jitter at 0.5 each wait is 3/4 of it.
    assert_gaps(gaps(attempts[0]), [750, 1500, 3000, 6000, 7500])
    assert fake.accepted == len(attempts[0])
    await clock_page.evaluate("feeds.forEach((f) => f.stop())")


@pytest.mark.parametrize(("random", "first_wait"), [(0.0, 500), (0.99, 995)])
async def test_the_wait_is_jittered_between_half_and_all_of_the_backoff(
    clock_page: Page, notifier: tuple[FakeNotifier, str], random: float, first_wait: float
) -> None:
    """Before: always exactly the backoff, whatever the draw."""
    _, url = notifier
    await start_feeds(clock_page, url, random=random)
    await advance(clock_page, 3_000)
    attempts: list[list[float]] = await clock_page.evaluate("attempts")
    assert_gaps(gaps(attempts[0])[:2], [first_wait, 2 * first_wait])
    await clock_page.evaluate("feeds.forEach((f) => f.stop())")


async def test_dashboards_dropped_together_do_not_come_back_in_lockstep(
    clock_page: Page, notifier: tuple[FakeNotifier, str]
) -> None:
    """Eight feeds dropped at the same moment, with the real Math.random: before, all eight
    retried at the very same millisecond (+1 s), every time."""
    _, url = notifier
    await start_feeds(clock_page, url, count=8)
    await advance(clock_page, 1_500)
    attempts: list[list[float]] = await clock_page.evaluate("attempts")
    first_retries = [feed[1] - feed[0] for feed in attempts]
    assert all(500 <= wait <= 1000 + STEP_MS for wait in first_retries), first_retries
    assert len(set(first_retries)) > 1, first_retries
    await clock_page.evaluate("feeds.forEach((f) => f.stop())")


async def test_only_a_connection_that_stayed_open_earns_quick_retries_again(
    clock_page: Page, notifier: tuple[FakeNotifier, str]
) -> None:
    """The reset the old code did on every open still happens, once a connection has proved
    healthy (open HEALTHY_MS); one that dropped sooner keeps the grown backoff."""
    fake, url = notifier
    healthy_ms: int = await run(clock_page, "live.js", "m.HEALTHY_MS")
    await start_feeds(clock_page, url, random=0.5)
    await advance(clock_page, 2_300)  # attempts at 0, 0.75 s, 2.25 s: the backoff is now 4 s
    fake.hold = True
    await advance(clock_page, 3_100, open_ok=True)  # the 4th (at 5.25 s) stays open...
    await clock_page.clock.run_for(healthy_ms - 1_000)  # ...but not long enough
    short_closed: float = await clock_page.evaluate("performance.now()")
    fake.release()
    await settle(clock_page)
    await advance(clock_page, 6_100, open_ok=True)  # the 5th (3/4 of 8 s later) stays open...
    await clock_page.clock.run_for(healthy_ms)  # ...long enough
    healthy_closed: float = await clock_page.evaluate("performance.now()")
    fake.hold = False
    fake.release()
    await settle(clock_page)
    await advance(clock_page, 1_000)
    attempts: list[float] = (await clock_page.evaluate("attempts"))[0]
    assert len(attempts) == 6, attempts
    assert_gaps(gaps(attempts[:4]), [750, 1500, 3000])
    assert_gaps([attempts[4] - short_closed, attempts[5] - healthy_closed], [6000, 750])
    await clock_page.evaluate("feeds.forEach((f) => f.stop())")


async def costs(browser: Browser, static_url: str, locale: str) -> Any:
    """fmt.cost, a list row's cost cell, the cost card and fmt.count, in `locale`."""
    context = await browser.new_context(locale=locale)
    try:
        page = await context.new_page()
        await page.goto(f"{static_url}/js/format.js")
        return await page.evaluate(
            """async () => {
                const fmt = await import('/js/format.js');
                const rows = await import('/js/rows.js');
                const charts = await import('/js/charts.js');
                const exec = {id: 'e1', agent_name: 'a', status: 'success', cost: 12345.67};
                const row = rows.renderRow(exec, new Set(), () => {});
                const cards = charts.statCards({total: 1, total_cost: 1234567.891}, 24);
                const card = cards.find((c) => c.textContent.includes('Cost'));
                return {
                    values: [12345.67, 1234567.891, 999.999, 1.5, 0.004, 0, -5, -0.004]
                        .map(fmt.cost),
                    cell: row.querySelector('.c-cost').textContent,
                    card: card.textContent,
                    count: fmt.count(1234),
                };
            }"""
        )
    finally:
        await context.close()


async def test_costs_are_grouped_like_the_other_numbers(browser: Browser, static_url: str) -> None:
    """Before: "$12345.67" beside counts that read "1,234"."""
    en = await costs(browser, static_url, "en-US")
    assert en["values"] == [
        "$12,345.67",
        "$1,234,567.89",
        "$1,000.00",
        "$1.50",
        "$0.0040",
        "$0",
        # A refund or correction: the sign before the currency, and 2 decimals like the rest.
        "-$5.00",
        "-$0.0040",
    ]
    assert en["cell"] == "$12,345.67"
    assert "$1,234,567.89" in en["card"]
    assert en["count"] == "1,234"
    # The reader's locale, as count() already follows it.
    de = await costs(browser, static_url, "de-DE")
    assert de["values"][:2] == ["$12.345,67", "$1.234.567,89"]
    assert de["count"] == "1.234"
