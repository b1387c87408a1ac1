"""The dashboard against the services' limits, in headless Chromium on real processes.

The query API answers 429 + Retry-After to a caller over its request rate, and (instead of 401)
to a failed authentication from an address that used up its failed-auth budget; the notifier
closes a socket with 4429 (failed-auth budget, "retry after N s"; per-caller socket cap) or 1013
(process at its socket limit). The page must say which it is, keep what it shows, and wait what
the server asked before asking again: each test counts the page's requests or socket attempts
over a window of time (the page polls every 10 s and used to retry the socket within 5-10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import websockets
from playwright.async_api import Browser, Page, Request, Response, Route, WebSocket, expect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from shared.auth import mint_token
from tests.dashboard.conftest import Stack, screenshot
from tests.procs import Service, free_port, start_service, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ROWS = "tbody tr.row"
POLL_S = 10
OTHER_SECRET = "another-notifier-secret-0123456789-abcdef"


@dataclass
class Seen:
    """What the page sent: API requests and WebSocket attempts, with when (monotonic)."""

    requests: list[tuple[float, str]] = field(default_factory=list)
    responses: list[tuple[float, str, int, str | None]] = field(default_factory=list)
    sockets: list[float] = field(default_factory=list)
    closes: list[float] = field(default_factory=list)

    def api_between(self, start: float, end: float) -> list[str]:
        return [url for t, url in self.requests if start <= t < end]

    def api_after(self, start: float) -> list[tuple[float, str]]:
        return [(t, url) for t, url in self.requests if t >= start]


@contextlib.asynccontextmanager
async def services(
    stack: Stack, *, query_env: dict[str, str], notifier_env: dict[str, str] | None = None
) -> AsyncIterator[tuple[Service, Service | None]]:
    """A query process of the test's own (and a notifier, when given its settings)."""
    notifier = None
    started: list[Service] = []
    try:
        if notifier_env is not None:
            notifier = start_service("notifier", stack.env, free_port(), notifier_env)
            started.append(notifier)
            await wait_ready(notifier.url, timeout=30)
            ws = f"ws://127.0.0.1:{notifier.port}/ws"
        else:
            ws = f"ws://127.0.0.1:{free_port()}/ws"  # nobody listens: the page polls
        query = start_service("query", {**stack.env, "QUERY_NOTIFIER_URL": ws}, None, query_env)
        started.append(query)
        await wait_ready(query.url, timeout=30)
        yield query, notifier
    finally:
        for service in started:
            service.kill()
            await asyncio.to_thread(service.wait, 10)


@contextlib.asynccontextmanager
async def open_page(
    browser: Browser, url: str, prepare: Callable[[Page], Awaitable[None]] | None = None
) -> AsyncIterator[tuple[Page, Seen]]:
    """The page at `url`, its requests and sockets recorded; `prepare` runs before it loads."""
    context = await browser.new_context(viewport={"width": 1400, "height": 950})
    page = await context.new_page()
    if prepare is not None:
        await prepare(page)
    seen = Seen()
    errors: list[str] = []

    def on_request(request: Request) -> None:
        if "/api/" in request.url:
            seen.requests.append((time.monotonic(), request.url))

    def on_response(response: Response) -> None:
        if "/api/" in response.url:
            retry = response.headers.get("retry-after")
            seen.responses.append((time.monotonic(), response.url, response.status, retry))

    def on_socket(ws: WebSocket) -> None:
        seen.sockets.append(time.monotonic())
        ws.on("close", lambda _: seen.closes.append(time.monotonic()))

    page.on("request", on_request)
    page.on("response", on_response)
    page.on("websocket", on_socket)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    try:
        yield page, seen
    finally:
        await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


async def until(check: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def drain_api(base_url: str, token: str) -> int:
    """Spend the budget from the test (same caller or address as the page): the 429's wait."""
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        for _ in range(500):
            answer = await client.get("/api/agents", headers={"Authorization": f"Bearer {token}"})
            if answer.status_code == 429:
                return int(answer.headers["Retry-After"])
    raise AssertionError("the API never answered 429")


async def close_of(url: str, token: str) -> tuple[int | None, str]:
    """Connect with the bearer subprotocol and read until the notifier closes: code, reason."""
    protocols = [Subprotocol("bearer"), Subprotocol(token)]
    async with websockets.connect(url, subprotocols=protocols) as ws:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        return ws.close_code, ws.close_reason or ""


def limited_responses(seen: Seen) -> Iterator[tuple[float, int]]:
    for t, _, status, retry in seen.responses:
        if status == 429:
            assert retry is not None
            yield t, int(retry)


async def test_rate_limited_page_says_so_keeps_its_rows_and_waits_retry_after(
    browser: Browser, stack: Stack
) -> None:
    limits = {"QUERY_RATE_LIMIT_BURST": "40", "QUERY_RATE_LIMIT_PER_MINUTE": "4"}
    async with services(stack, query_env=limits) as (query, _):
        token = stack.token("ada", "admin")
        async with open_page(browser, f"{query.url}/#token={token}") as (page, seen):
            await expect(page.locator(ROWS)).to_have_count(50)
            await expect(page.locator("#live")).to_have_attribute("data-state", "polling")
            await expect(page.locator(".cards .card").first).to_be_visible()
            await drain_api(query.url, token)
            await page.locator(".btn-more").click()
            await until(lambda: any(True for _ in limited_responses(seen)), 10, "no 429")
            t0, retry_after = next(limited_responses(seen))
            assert retry_after >= 10  # 4 a minute: a token every 15 s

            banner = page.locator("#limit")
            await expect(banner).to_be_visible()
            await expect(banner).to_contain_text("rate limited")
            await expect(banner).not_to_contain_text("sign")
            await expect(page.locator(".more-error")).to_contain_text("rate limited")
            # What was shown stays: the rows, the stats, the chart.
            await expect(page.locator(ROWS)).to_have_count(50)
            await expect(page.locator(".card-error")).to_have_count(0)
            await expect(page.locator(".chart-box svg")).to_have_count(1)
            await screenshot(page, "limits-rate-limited")
            # Nor can the user send it again while the server asked to wait.
            await expect(page.locator(".btn-more")).to_be_disabled()
            # A window past at least one poll tick (every 10 s): nothing is sent before
            # Retry-After has passed.
            window_end = t0 + retry_after - 0.3
            await asyncio.sleep(max(0.0, window_end - time.monotonic()))
            sent = seen.api_between(t0 + 0.05, window_end)
            assert sent == [], f"{len(sent)} requests during the {retry_after} s wait: {sent}"
            # Then the page asks again by itself (its next poll).
            await until(lambda: bool(seen.api_after(t0 + 0.05)), POLL_S + 5, "never retried")
            first, url = seen.api_after(t0 + 0.05)[0]
            assert first >= t0 + retry_after - 0.3, (first - t0, url)


async def test_failed_auth_limit_tells_to_sign_in_again_waits_then_401_signs_out(
    browser: Browser, stack: Stack
) -> None:
    limits = {"QUERY_AUTH_FAILURE_BURST": "2", "QUERY_AUTH_FAILURE_PER_MINUTE": "4"}
    async with services(stack, query_env=limits) as (query, _):
        good = stack.token("ada", "admin")
        async with open_page(browser, f"{query.url}/#token={good}") as (page, seen):
            await expect(page.locator(ROWS)).to_have_count(50)
            await expect(page.locator("#live")).to_have_attribute("data-state", "polling")
            # Other bad tokens from this address (a broken script, earlier tries) spent its budget;
            # now the page's own token is refused too (expired).
            await drain_api(query.url, "not-a-token")
            expired = mint_token(
                secret="dashboard-test-secret-0123456789abcdef",
                org=stack.org,
                user="ada",
                role="admin",
                ttl_s=-3600,
            )
            await page.evaluate("t => localStorage.setItem('fleetwatch.token', t)", expired)
            await page.locator(".btn-more").click()
            await until(lambda: any(True for _ in limited_responses(seen)), 10, "no 429")
            t0, retry_after = next(limited_responses(seen))
            assert retry_after >= 10

            banner = page.locator("#limit")
            await expect(banner).to_be_visible()
            await expect(banner).to_contain_text("Too many failed sign-ins from this address")
            await expect(banner).to_contain_text("wrong or expired")
            await expect(banner).to_contain_text("Sign in again with a new token")
            await expect(banner.get_by_role("button", name="Sign in again")).to_be_visible()
            await expect(page.locator(".more-error")).to_contain_text("failed sign-ins")
            await expect(page.locator(ROWS)).to_have_count(50)  # still shown
            await expect(page.locator("form.signin")).to_have_count(0)
            await screenshot(page, "limits-auth-limited")
            await expect(page.locator(".btn-more")).to_be_disabled()
            window_end = t0 + retry_after - 0.3
            await asyncio.sleep(max(0.0, window_end - time.monotonic()))
            sent = seen.api_between(t0 + 0.05, window_end)
            assert sent == [], f"{len(sent)} requests during the {retry_after} s wait: {sent}"
            # After the wait the next poll carries the bad token again: the address has one
            # failure to spend by then, so it is a 401, and a 401 still means the sign-in form.
            await expect(page.locator("form.signin")).to_be_visible(timeout=(POLL_S + 8) * 1000)
            await expect(page.locator("form.signin .error-box")).to_contain_text(
                "session has expired"
            )
            first, url = seen.api_after(t0 + 0.05)[0]
            assert first >= t0 + retry_after - 0.3, (first - t0, url)
            await expect(banner).to_be_hidden()


# When the page's sockets were made and closed, by the page's own clock (performance.now(), ms):
# the wait between a close and the next socket, free of when the test got to hear of either.
SOCKET_TIMES = """
(() => {
  const Native = window.WebSocket;
  const times = (window.__socketTimes = []);
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      const entry = { made: performance.now(), closed: null };
      times.push(entry);
      // Listening before the page does: this runs just before the page's own close handler.
      this.addEventListener("close", () => (entry.closed = performance.now()));
    }
  };
})();
"""


async def test_notifier_failed_auth_limit_is_waited_out_as_named(
    browser: Browser, stack: Stack
) -> None:
    # The notifier refuses the page's token (another secret) while the API takes it: after
    # one failure the address's budget is spent for 15 s (4 a minute).
    notifier_env = {
        "FLEETWATCH_JWT_SECRET": OTHER_SECRET,
        "NOTIFIER_AUTH_FAILURE_BURST": "1",
        "NOTIFIER_AUTH_FAILURE_PER_MINUTE": "4",
    }
    refill_s = 15
    async with services(stack, query_env={}, notifier_env=notifier_env) as (query, notifier):
        assert notifier is not None
        ws_url = f"ws://127.0.0.1:{notifier.port}/ws"
        token = stack.token("ada", "admin")
        # The page asks /api/config where the notifier is, then connects: held until the budget
        # is spent, so its socket comes right after (however long the page took to load) and is
        # told to wait most of the 15 s, well past the old page's 5-10 s.
        spent = asyncio.Event()

        async def hold_config(route: Route) -> None:
            await spent.wait()
            await route.continue_()

        async def prepare(page: Page) -> None:
            await page.add_init_script(SOCKET_TIMES)
            await page.route("**/api/config", hold_config)

        url = f"{query.url}/#token={token}"
        async with open_page(browser, url, prepare) as (page, seen):
            await expect(page.locator(ROWS)).to_have_count(50)
            assert seen.sockets == []
            first_failure = time.monotonic()  # the notifier's bucket is spent after this
            try:
                codes = [await close_of(ws_url, token) for _ in range(2)]
            finally:
                spent.set()
            assert codes[0][0] == 4401, codes
            assert codes[1][0] == 4429, codes
            await until(lambda: bool(seen.closes), 10, "the socket was not closed")
            t0 = seen.closes[0]
            live = page.locator("#live")
            await expect(live).to_have_attribute("data-state", "polling")
            pattern = r"too many failed sign-ins.* live again in (\d+) s at the earliest"
            await expect(live).to_have_attribute("title", re.compile(pattern))
            title = await live.get_attribute("title")
            given = re.search(pattern, title or "")
            assert given, title
            named = int(given.group(1))  # what the page's own refusal said, rounded up
            await screenshot(page, "limits-notifier-auth-limited")
            await until(lambda: len(seen.sockets) >= 2, named + named / 4 + 8, "no retry")
            # Not back before the address's budget refills: the refusal's wait was counted from
            # the failure (the page's close and its timer come later still). Load only delays
            # the retry further.
            assert seen.sockets[1] >= first_failure + refill_s - 1, (
                seen.sockets[1] - first_failure,
                title,
            )
            # Nor sooner than the wait its refusal named, from that close (the page's clock).
            times = await page.evaluate("window.__socketTimes")
            assert len(times) >= 2, times
            waited_ms = times[1]["made"] - times[0]["closed"]
            assert waited_ms >= named * 1000 - 50, (waited_ms, title)
            # Polling went on meanwhile (at once and every 10 s), the indicator says so.
            polls = [u for u in seen.api_between(t0, seen.sockets[1]) if "/api/executions?" in u]
            assert polls, "no polls while not live"


@pytest.mark.parametrize(
    ("notifier_env", "code", "title"),
    [
        ({"NOTIFIER_MAX_SOCKETS_PER_CALLER": "1"}, 4429, "too many live connections"),
        ({"NOTIFIER_MAX_SOCKETS": "1"}, 1013, "connection limit"),
    ],
    ids=["caller-cap-4429", "process-cap-1013"],
)
async def test_notifier_socket_caps_are_not_stormed(
    browser: Browser, stack: Stack, notifier_env: dict[str, str], code: int, title: str
) -> None:
    async with services(stack, query_env={}, notifier_env=notifier_env) as (query, notifier):
        assert notifier is not None
        token = stack.token("ada", "admin")
        ws_url = f"ws://127.0.0.1:{notifier.port}/ws"
        holder: ClientConnection = await websockets.connect(
            ws_url, subprotocols=[Subprotocol("bearer"), Subprotocol(token)]
        )
        try:
            await holder.send('{"subscribe": {}}')
            assert '"ready"' in str(await asyncio.wait_for(holder.recv(), 5))
            assert (await close_of(ws_url, token))[0] == code  # the cap holds
            async with open_page(browser, f"{query.url}/#token={token}") as (page, seen):
                await expect(page.locator(ROWS)).to_have_count(50)
                await until(lambda: bool(seen.closes), 10, "the socket was not closed")
                t0 = seen.closes[0]
                await expect(page.locator("#live")).to_have_attribute("data-state", "polling")
                await expect(page.locator("#live .label")).to_have_text("polling every 10 s")
                await expect(page.locator("#live")).to_have_attribute("title", re.compile(title))
                # Past one poll tick and past the old page's 5-10 s retry: no second attempt.
                await asyncio.sleep(max(0.0, t0 + 12 - time.monotonic()))
                assert len(seen.sockets) == 1, [t - t0 for t in seen.sockets]
                polls = [u for u in seen.api_between(t0, t0 + 12) if "/api/executions?" in u]
                assert len(polls) >= 2, polls  # at once, then every 10 s
        finally:
            await holder.close()
