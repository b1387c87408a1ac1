"""Shared helpers of the notifier tests: events, publishing, tokens and WebSocket clients."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import orjson
import websockets
from nats.js import JetStreamContext
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from services.notifier.app import Notifier, create_app
from services.notifier.settings import NotifierSettings
from shared.auth import mint_token
from shared.subjects import Subjects

# Long enough that PyJWT does not warn (warnings are errors in this suite).
SECRET = "notifier-tests-secret-0123456789-abcdef"


def token(org: str, user: str, role: str, ttl_s: int = 3600) -> str:
    return mint_token(secret=SECRET, org=org, user=user, role=role, ttl_s=ttl_s)


def execution_event(
    org: str, agent: str, type_: str = "execution_started", **fields: Any
) -> dict[str, Any]:
    execution = {"id": fields.pop("id", uuid.uuid4().hex[:12]), "agent_name": agent, **fields}
    return {
        "type": type_,
        "event_id": uuid.uuid4().hex,
        "occurred_at": "2026-02-05T10:00:00Z",
        "org": org,
        "source": f"agent:{agent}",
        "execution": execution,
    }


async def publish(js: JetStreamContext, subjects: Subjects, event: dict[str, Any]) -> int:
    """Publish one event on its subject; returns its stream sequence."""
    agent = event["execution"]["agent_name"] if "execution" in event else event["agent_name"]
    ack = await js.publish(
        subjects.event(event["org"], agent, event["type"]),
        orjson.dumps(event),
        headers={"Nats-Msg-Id": event["event_id"]},
    )
    return int(ack.seq)


@asynccontextmanager
async def jetstream(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


def settings_for(
    nats_url: str, database_url: str, subjects: Subjects, **overrides: Any
) -> NotifierSettings:
    return NotifierSettings(
        nats_url=nats_url,
        database_url=database_url,
        subject_prefix=subjects.prefix,
        jwt_secret=SecretStr(SECRET),
        port=0,
        **overrides,
    )


@asynccontextmanager
async def running(settings: NotifierSettings) -> AsyncIterator[Notifier]:
    app = create_app(settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def ws_url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}/ws{'?' + query if query else ''}"


async def connect_live(
    port: int, tok: str, first: dict[str, Any] | None = None, **kw: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect with the bearer subprotocol, send an optional first frame, wait for `ready`."""
    ws = await websockets.connect(ws_url(port), subprotocols=["bearer", tok], **kw)  # type: ignore[list-item]
    if first is not None:
        await ws.send(orjson.dumps(first).decode())
    ready = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ready["type"] == "ready", ready
    return ws, ready


async def close_code(ws: ClientConnection, limit_s: float) -> int | None:
    """Read until the server closes the socket (each frame within `limit_s`); its close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), limit_s)
    except ConnectionClosed:
        return ws.close_code


async def collect(
    ws: ClientConnection,
    *,
    until_seq: int | None = None,
    idle_s: float = 0.3,
    limit_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Frames until one with `seq >= until_seq` (or nothing for `idle_s` when not given)."""
    got: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        wait = idle_s if until_seq is None else deadline - loop.time()
        try:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), max(0.01, wait)))
        except TimeoutError:
            break
        got.append(frame)
        if (
            until_seq is not None
            and frame.get("seq", 0) >= until_seq
            and frame["type"] not in ("ready",)
        ):
            break
    return got


async def until_ready(ws: ClientConnection, limit_s: float = 5.0) -> list[dict[str, Any]]:
    """Frames up to and including `ready` (the end of a replay), each within `limit_s`."""
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["type"] != "ready":
        frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), limit_s)))
    return frames


def events_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"].startswith(("execution_", "component_"))]
