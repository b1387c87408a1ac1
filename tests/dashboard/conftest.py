"""One running stack (ingest, query, notifier) and one headless Chromium per test module."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from shared.auth import mint_token
from shared.db import connect
from shared.events import Event
from shared.subjects import Subjects
from tests.dashboard.seed import Row, seed
from tests.procs import Service, free_port, start_service, wait_ready

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SECRET = "dashboard-test-secret-0123456789abcdef"  # ≥ 32 bytes: pyjwt warns below
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"

# Two shared cores run services, Chromium and the test (and, under `make test`, two other
# pytest workers): give assertions room to retry. 10 s was once not enough there for a list to
# load after a live event (passing runs take 1-2 s; tests that prove an update came live rather
# than by the 10 s poll set their own, shorter timeouts).
expect.set_options(timeout=20_000)


@dataclass
class Stack:
    """The services under test, the seeded org and a NATS client to publish and answer with."""

    org: str
    subjects: Subjects
    env: dict[str, str]
    query: Service
    notifier: Service
    ingest: Service
    nc: NatsClient
    rows: list[Row]
    terminate_requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.query.url

    @property
    def notifier_ws(self) -> str:
        return f"ws://127.0.0.1:{self.notifier.port}/ws"

    def token(self, user: str, role: str) -> str:
        return mint_token(secret=SECRET, org=self.org, user=user, role=role)

    def page_url(self, user: str = "ada", role: str = "admin", query: str = "") -> str:
        """The dashboard, signed in through `#token=`."""
        return f"{self.base_url}/?{query}#token={self.token(user, role)}"

    async def publish(self, type_: str, execution: dict[str, Any]) -> None:
        event = Event.model_validate(
            {
                "type": type_,
                "event_id": uuid.uuid4().hex,
                "occurred_at": datetime.now(UTC),
                "org": self.org,
                "source": "test",
                "execution": execution,
            }
        )
        subject = self.subjects.event(self.org, execution["agent_name"], type_)
        js = self.nc.jetstream()
        await js.publish(
            subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.event_id}
        )

    async def stop_notifier(self) -> None:
        self.notifier.kill()
        await asyncio.to_thread(self.notifier.wait, 10)

    async def restart_notifier(self) -> None:
        """The notifier again, on the same port (so the page's URL still points at it)."""
        self.notifier = start_service("notifier", self.env, self.notifier.port)
        await wait_ready(self.notifier.url, timeout=30)


def _stop(service: Service) -> None:
    service.kill()
    service.wait(10)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed (make system-deps installs it)")
    return CHROMIUM


@pytest_asyncio.fixture(scope="module")
async def stack(nats_url: str, database_url: str) -> AsyncIterator[Stack]:
    subjects = Subjects(f"d{uuid.uuid4().hex[:10]}")
    org = f"dash-{uuid.uuid4().hex[:8]}"
    conn = await connect(database_url)
    try:
        rows = await seed(conn, org, datetime.now(UTC))
    finally:
        await conn.close()
    env = dict(os.environ)
    env.update(
        NATS_URL=nats_url,
        DATABASE_URL=database_url,
        FLEETWATCH_SUBJECT_PREFIX=subjects.prefix,
        FLEETWATCH_JWT_SECRET=SECRET,
        FLEETWATCH_LOG_LEVEL="WARNING",
    )
    ingest = start_service("ingest", env)
    notifier = start_service("notifier", env, free_port())
    # The page learns where the notifier is from the server (`/api/config`), never from its URL.
    query_env = {**env, "QUERY_NOTIFIER_URL": f"ws://127.0.0.1:{notifier.port}/ws"}
    query = start_service("query", query_env)
    stack = Stack(org, subjects, env, query, notifier, ingest, await nats.connect(nats_url), rows)
    nc = stack.nc
    try:
        for service in (ingest, notifier, query):
            await wait_ready(service.url, timeout=30)

        async def answer_terminate(msg: Msg) -> None:
            """Like an agent: accept, then report the execution cancelled."""
            request = json.loads(msg.data)
            stack.terminate_requests.append({"subject": msg.subject, **request})
            await msg.respond(b'{"accepted": true, "reason": null}')
            await stack.publish(
                "execution_cancelled",
                {"id": request["execution_id"], "agent_name": "alpha", "error": "stopped by ada"},
            )

        await nc.subscribe(subjects.terminate(org, "alpha"), cb=answer_terminate)
        yield stack
    finally:
        for service in (stack.ingest, stack.notifier, stack.query):
            await asyncio.to_thread(_stop, service)
        js = nc.jetstream()
        for stream in (subjects.events_stream, subjects.dlq_stream):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)
        await nc.close()


@pytest_asyncio.fixture(scope="module")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(scope="module")
async def admin_page(browser: Browser, stack: Stack) -> AsyncIterator[Page]:
    """One signed-in admin tab shared by the module's tests, in order."""
    context: BrowserContext = await browser.new_context(viewport={"width": 1400, "height": 950})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(stack.page_url())
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


async def screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def record_reads(
    page: Page, path: str, when: Literal["request", "requestfinished"] = "requestfinished"
) -> list[str]:
    """The URLs of the page's requests for the API path `path`, appended as they come: once
    finished, or (`when="request"`) as soon as sent."""
    reads: list[str] = []
    page.on(
        when,
        lambda request: reads.append(request.url) if urlparse(request.url).path == path else None,
    )
    return reads


async def reads_reach(reads: list[str], count: int) -> None:
    """Wait (up to 20 s) until `reads` (from record_reads) holds `count` reads."""
    async with asyncio.timeout(20):
        while len(reads) < count:
            await asyncio.sleep(0.05)
