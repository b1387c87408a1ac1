"""Open connections follow their caller's access, on the real NATS and Postgres.

A token that expires closes its socket with 4401; shares and ownership removed (or granted)
reach open connections within `scope_ttl_s`; an access lookup that keeps failing closes the
caller's sockets with 1013 rather than serving a scope nobody can confirm.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jwt
import orjson
import pytest_asyncio
from nats.js import JetStreamContext
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from services.notifier.app import Notifier
from shared.db import connect
from shared.subjects import Subjects
from tests.notifier.helpers import (
    collect,
    connect_live,
    events_of,
    execution_event,
    publish,
    running,
    settings_for,
    token,
)

TTL_S = 0.5
#: Clock leeway on tokens: an expired token's socket closes only this long after `exp`.
LEEWAY_S = 2.0


@pytest_asyncio.fixture
async def notifier(nats_url: str, database_url: str, subjects: Subjects) -> AsyncIterator[Notifier]:
    settings = settings_for(
        nats_url, database_url, subjects, scope_ttl_s=TTL_S, jwt_leeway_s=LEEWAY_S
    )
    async with running(settings) as app:
        yield app


async def _people(db: asyncpg.Connection, org: str) -> None:
    """Agents x (owned by owner), y and w (shared with cust), z (nobody's)."""
    await db.execute("INSERT INTO organizations (org) VALUES ($1)", org)
    await db.executemany(
        "INSERT INTO users (org, user_id, role) VALUES ($1, $2, $3)",
        [(org, "boss", "admin"), (org, "owner", "user"), (org, "cust", "client")],
    )
    await db.executemany(
        "INSERT INTO agents (org, name, owner) VALUES ($1, $2, $3)",
        [(org, "x", "owner"), (org, "y", "boss"), (org, "w", "boss"), (org, "z", None)],
    )
    await db.executemany(
        "INSERT INTO agent_shares (org, agent_name, user_id) VALUES ($1, $2, $3)",
        [(org, "y", "cust"), (org, "w", "cust")],
    )


async def _closed_with(ws: ClientConnection, limit_s: float) -> tuple[int | None, list[int]]:
    """Read until the server closes: its close code, and the event seqs received before.

    A socket still open after `limit_s` fails the test (TimeoutError).
    """
    seqs: list[int] = []
    async with asyncio.timeout(limit_s):
        while True:
            try:
                frame = orjson.loads(await ws.recv())
            except ConnectionClosed as exc:
                return (exc.rcvd.code if exc.rcvd else None), seqs
            if "seq" in frame and frame["type"] != "ready":
                seqs.append(frame["seq"])


def _seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in events_of(frames)]


async def _seqs_until(ws: ClientConnection, last: int) -> list[int]:
    """Event seqs up to the one at `last`, then whatever else arrives soon after."""
    frames = await collect(ws, until_seq=last)
    return _seqs(frames + await collect(ws, idle_s=0.1))


async def _scopes_become(
    app: Notifier, want: dict[str, frozenset[str] | None], within_s: float
) -> None:
    """Wait until every open socket of each user in `want` has that user's agents in scope."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        have = {(c.claims.sub, c.scope.agents) for c in app.hub.clients}
        if have == set(want.items()):
            return
        if loop.time() > deadline:
            raise AssertionError(f"scopes still {have}, not {want}, after {within_s}s")
        await asyncio.sleep(0.02)


async def test_an_expired_token_closes_the_open_socket_with_4401(
    notifier: Notifier, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    # Expires 3 to 4 s from now (`exp` is whole seconds): time for the setup below to see the
    # socket working first, even on a loaded machine.
    expiring = token(org, "boss", "admin", ttl_s=4)
    exp = jwt.decode(expiring, options={"verify_signature": False})["exp"]
    ws, _ = await connect_live(notifier.port, expiring)
    other, _ = await connect_live(notifier.port, token(org, "boss", "admin"))
    before = await publish(js, subjects, execution_event(org, "x"))
    assert _seqs(await collect(ws, until_seq=before)) == [before]

    async def keep_publishing() -> None:
        while True:
            await publish(js, subjects, execution_event(org, "x"))
            await asyncio.sleep(0.1)

    publisher = asyncio.create_task(keep_publishing())
    try:
        code, _ = await _closed_with(ws, limit_s=12)
        closed_at = time.time()
    finally:
        publisher.cancel()
    assert code == 4401
    # Not before the leeway verification grants past `exp` (as long as a new socket opens).
    assert closed_at >= exp + LEEWAY_S - 0.05, (closed_at, exp)
    assert (
        notifier.metrics.registry.get_sample_value(
            "notifier_access_closes_total", {"reason": "token_expired"}
        )
        == 1
    )
    # The caller with a valid token is not affected.
    after = await publish(js, subjects, execution_event(org, "x"))
    assert _seqs(await collect(other, until_seq=after))[-1] == after
    assert len(notifier.hub.clients) == 1
    await other.close()


async def test_access_changes_reach_open_connections_within_the_scope_ttl(
    notifier: Notifier, js: JetStreamContext, subjects: Subjects, db: asyncpg.Connection, org: str
) -> None:
    await _people(db, org)
    admin, _ = await connect_live(notifier.port, token(org, "boss", "admin"))
    cust, _ = await connect_live(notifier.port, token(org, "cust", "client"))
    # Two sockets of one caller, one with a filter: both follow the caller's access.
    owner = [
        (await connect_live(notifier.port, token(org, "owner", "user")))[0],
        (await connect_live(notifier.port, token(org, "owner", "user"), {"subscribe": {}}))[0],
    ]
    before = {agent: await publish(js, subjects, execution_event(org, agent)) for agent in "xywz"}
    assert _seqs(await collect(admin, until_seq=before["z"])) == list(before.values())
    assert await _seqs_until(cust, before["w"]) == [before["y"], before["w"]]
    for ws in owner:
        assert await _seqs_until(ws, before["x"]) == [before["x"]]

    # cust loses y and gains z; owner loses x and gains w.
    await db.execute(
        "DELETE FROM agent_shares WHERE org = $1 AND agent_name = 'y' AND user_id = 'cust'", org
    )
    await db.execute(
        "INSERT INTO agent_shares (org, agent_name, user_id) VALUES ($1, 'z', 'cust')", org
    )
    await db.execute("UPDATE agents SET owner = NULL WHERE org = $1 AND name = 'x'", org)
    await db.execute("UPDATE agents SET owner = 'owner' WHERE org = $1 AND name = 'w'", org)
    # Within the TTL, with a margin for a busy machine (the reload itself is one query).
    await _scopes_become(
        notifier,
        {"boss": None, "cust": frozenset("wz"), "owner": frozenset("w")},
        within_s=TTL_S * 6,
    )

    after = {agent: await publish(js, subjects, execution_event(org, agent)) for agent in "xywz"}
    assert _seqs(await collect(admin, until_seq=after["z"])) == list(after.values())
    assert await _seqs_until(cust, after["z"]) == [after["w"], after["z"]]
    for ws in owner:
        assert await _seqs_until(ws, after["w"]) == [after["w"]]
    for ws in (admin, cust, *owner):
        await ws.close()


async def test_scopes_are_reloaded_once_per_caller_not_per_socket_or_event(
    notifier: Notifier, js: JetStreamContext, subjects: Subjects, db: asyncpg.Connection, org: str
) -> None:
    await _people(db, org)
    sockets = [
        (await connect_live(notifier.port, token(org, "cust", "client")))[0] for _ in range(5)
    ]
    loads = notifier.metrics.registry.get_sample_value
    at_start = loads("notifier_scope_loads_total") or 0
    window_s = TTL_S * 4
    started = time.monotonic()
    for _ in range(40):
        last = await publish(js, subjects, execution_event(org, "y"))
        await asyncio.sleep(window_s / 40)
    reloads = (loads("notifier_scope_loads_total") or 0) - at_start
    # The window as it ran: a loaded machine stretches the sleeps and the publishes.
    elapsed_s = time.monotonic() - started
    # One caller: about one reload per TTL (a reload is due a little before the TTL runs out).
    assert 2 <= reloads <= elapsed_s / TTL_S * 1.5 + 1, (reloads, elapsed_s)
    for ws in sockets:
        assert len(events_of(await collect(ws, until_seq=last))) == 40
        await ws.close()


async def test_an_access_lookup_that_keeps_failing_closes_with_1013(
    nats_url: str,
    fresh_database_url: str,
    js: JetStreamContext,
    subjects: Subjects,
    org: str,
) -> None:
    db = await connect(fresh_database_url)
    try:
        await _people(db, org)
        settings = settings_for(nats_url, fresh_database_url, subjects, scope_ttl_s=TTL_S)
        async with running(settings) as app:
            cust, _ = await connect_live(app.port, token(org, "cust", "client"))
            admin, _ = await connect_live(app.port, token(org, "boss", "admin"))
            # Shares can no longer be read: cust's access cannot be confirmed (an admin's needs
            # no table).
            await db.execute("ALTER TABLE agent_shares RENAME TO agent_shares_away")
            code, _ = await _closed_with(cust, limit_s=TTL_S * 4 + 2)
            assert code == 1013
            seq = await publish(js, subjects, execution_event(org, "y"))
            assert _seqs(await collect(admin, until_seq=seq)) == [seq]
            await admin.close()
    finally:
        await db.close()
