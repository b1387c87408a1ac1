"""The notifier in-process on the real NATS and Postgres, driven by real WebSocket clients."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio
import websockets
from nats.js import JetStreamContext
from websockets.exceptions import ConnectionClosed

from services.notifier.app import Notifier
from shared.streams import ensure_streams
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
    until_ready,
    ws_url,
)


@pytest_asyncio.fixture
async def notifier(nats_url: str, database_url: str, subjects: Subjects) -> AsyncIterator[Notifier]:
    async with running(settings_for(nats_url, database_url, subjects)) as app:
        yield app


async def _people(db: asyncpg.Connection, org_a: str, org_b: str) -> None:
    """Org A: agents x (owned by owner), y (shared with sharer and client), z; org B: x."""
    for org in (org_a, org_b):
        await db.execute("INSERT INTO organizations (org) VALUES ($1)", org)
    await db.executemany(
        "INSERT INTO users (org, user_id, role) VALUES ($1, $2, $3)",
        [
            (org_a, "boss", "admin"),
            (org_a, "owner", "user"),
            (org_a, "sharer", "user"),
            (org_a, "cust", "client"),
            (org_b, "boss", "admin"),
        ],
    )
    await db.executemany(
        "INSERT INTO agents (org, name, owner) VALUES ($1, $2, $3)",
        [(org_a, "x", "owner"), (org_a, "y", "boss"), (org_a, "z", None), (org_b, "x", "owner")],
    )
    await db.executemany(
        "INSERT INTO agent_shares (org, agent_name, user_id) VALUES ($1, $2, $3)",
        [(org_a, "y", "sharer"), (org_a, "y", "cust")],
    )


async def test_each_caller_sees_exactly_its_events(
    notifier: Notifier, js: JetStreamContext, subjects: Subjects, db: asyncpg.Connection, org: str
) -> None:
    org_b = f"{org}-b"
    await _people(db, org, org_b)
    callers = {
        "admin": token(org, "boss", "admin"),
        "owner": token(org, "owner", "user"),
        "sharer": token(org, "sharer", "user"),
        "client": token(org, "cust", "client"),
        "admin_b": token(org_b, "boss", "admin"),
    }
    sockets = {name: (await connect_live(notifier.port, tok))[0] for name, tok in callers.items()}
    seqs = {}
    for org_name, agent in ((org, "x"), (org, "y"), (org, "z"), (org_b, "x")):
        seqs[(org_name, agent)] = await publish(js, subjects, execution_event(org_name, agent))
    last = max(seqs.values())
    # Fan-out writes every client in one step: once the admins have the last event, all have it.
    got = {"admin": await collect(sockets["admin"], until_seq=seqs[(org, "z")])}
    got["admin_b"] = await collect(sockets["admin_b"], until_seq=last)
    for name in ("owner", "sharer", "client"):
        got[name] = await collect(sockets[name], idle_s=0.3)
    seen = {name: sorted(f["seq"] for f in events_of(frames)) for name, frames in got.items()}
    assert seen == {
        "admin": sorted([seqs[(org, "x")], seqs[(org, "y")], seqs[(org, "z")]]),
        "owner": [seqs[(org, "x")]],
        "sharer": [seqs[(org, "y")]],
        "client": [seqs[(org, "y")]],
        "admin_b": [seqs[(org_b, "x")]],
    }
    for ws in sockets.values():
        await ws.close()


async def test_client_filters_narrow_the_feed(
    notifier: Notifier, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    first = {"subscribe": {"agent_name": ["x"], "status": ["failed"], "triggered_by": ["schedule"]}}
    ws, _ = await connect_live(notifier.port, token(org, "boss", "admin"), first)
    await publish(js, subjects, execution_event(org, "x", id="s1", triggered_by="schedule"))
    await publish(
        js, subjects, execution_event(org, "y", "execution_failed", triggered_by="schedule")
    )
    await publish(
        js, subjects, execution_event(org, "x", "execution_failed", triggered_by="manual")
    )
    # The failure omits its trigger: the notifier remembers it from the start event.
    wanted = await publish(js, subjects, execution_event(org, "x", "execution_failed", id="s1"))
    frames = events_of(await collect(ws, until_seq=wanted))
    assert [(f["seq"], f["execution"]["id"]) for f in frames] == [(wanted, "s1")]
    # A later subscribe replaces the filters.
    await ws.send(orjson.dumps({"subscribe": {"agent_name": ["y"]}}).decode())
    assert orjson.loads(await ws.recv())["type"] == "subscribed"
    await publish(js, subjects, execution_event(org, "x"))
    other = await publish(js, subjects, execution_event(org, "y"))
    frames = events_of(await collect(ws, until_seq=other))
    assert [f["seq"] for f in frames] == [other]
    await ws.close()


async def test_resume_after_disconnect_has_no_gap_and_no_duplicate(
    notifier: Notifier, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    tok = token(org, "boss", "admin")
    ws, _ = await connect_live(notifier.port, tok)
    before = [await publish(js, subjects, execution_event(org, "x")) for _ in range(5)]
    seen = events_of(await collect(ws, until_seq=before[-1]))
    await ws.close()
    resume_from = seen[-1]["seq"]
    missed = [await publish(js, subjects, execution_event(org, "x")) for _ in range(20)]

    async def keep_publishing() -> list[int]:
        return [await publish(js, subjects, execution_event(org, "x")) for _ in range(50)]

    # Live events keep coming while the replay runs: the hand-over must stitch them seamlessly.
    # The resume goes in the URL, as the docs advise: a first frame reaching the server after
    # its hello window (a loaded CI run) is late, and with events flowing it is refused once
    # one went out live (or, honoured, ends with a second `ready`).
    publisher = asyncio.create_task(keep_publishing())
    ws = await websockets.connect(
        ws_url(notifier.port, f"resume_from={resume_from}"),
        subprotocols=["bearer", tok],  # type: ignore[list-item]
    )
    during = await publisher
    frames = await collect(ws, until_seq=during[-1])
    got = [f["seq"] for f in events_of(frames)]
    assert got == sorted(set(missed + during))
    assert [f["type"] for f in frames].count("ready") == 1
    await ws.close()


async def test_resume_from_the_stream_after_a_restart_and_resync_past_retention(
    nats_url: str, database_url: str, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    # A fresh notifier reads only the last 5 events back into memory: these replays must
    # come from the stream.
    settings = settings_for(nats_url, database_url, subjects, ring_size=5)
    await ensure_streams(js, settings)
    seqs = [await publish(js, subjects, execution_event(org, "x")) for _ in range(30)]
    tok = token(org, "boss", "admin")
    async with running(settings) as app:
        ws = await websockets.connect(ws_url(app.port), subprotocols=["bearer", tok])  # type: ignore[list-item]
        await ws.send(orjson.dumps({"resume_from": seqs[9]}).decode())
        frames = await collect(ws, until_seq=seqs[-1])
        assert [f["seq"] for f in events_of(frames)] == seqs[10:]
        ready = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert ready == {"type": "ready", "seq": seqs[-1]}
        await ws.close()
        # The same through the URL, which starts without waiting for a first frame.
        ws = await websockets.connect(ws_url(app.port, f"token={tok}&resume_from={seqs[19]}"))
        frames = await collect(ws, until_seq=seqs[-1])
        assert [f["seq"] for f in events_of(frames)] == seqs[20:]
        await ws.close()
        resumes = app.metrics.registry.get_sample_value
        assert resumes("notifier_resumes_total", {"outcome": "stream"}) == 2
        await js.purge_stream(subjects.events_stream)
        ws = await websockets.connect(ws_url(app.port, f"token={tok}&resume_from={seqs[9]}"))
        frames = await until_ready(ws)
        assert [f["type"] for f in frames] == ["resync_required", "ready"]
        assert frames[0]["reason"] == "past_retention"
        assert await collect(ws, idle_s=0.3) == []
        await ws.close()


async def test_a_restarted_notifier_resumes_recent_events_from_memory(
    nats_url: str, database_url: str, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    settings = settings_for(nats_url, database_url, subjects, ring_size=20)
    await ensure_streams(js, settings)
    # Events before the notifier starts, one of them invalid (skipped, as live).
    seqs = [await publish(js, subjects, execution_event(org, "x")) for _ in range(15)]
    bad = execution_event(org, "x")
    bad["execution"]["status"] = "no-such-status"
    await publish(js, subjects, bad)
    seqs += [await publish(js, subjects, execution_event(org, "x")) for _ in range(15)]
    tok = token(org, "boss", "admin")
    # The last 20 sequences are in memory: from `floor` on a resume needs nothing else.
    floor = seqs[-1] - 20
    async with running(settings) as app:
        resumes = app.metrics.registry.get_sample_value
        for resume_from, outcome in ((floor, "ring"), (floor - 1, "stream")):
            url = ws_url(app.port, f"token={tok}&resume_from={resume_from}")
            ws = await websockets.connect(url)
            frames = await collect(ws, until_seq=seqs[-1])
            assert [f["seq"] for f in events_of(frames)] == [s for s in seqs if s > resume_from]
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "ready"
            later = await publish(js, subjects, execution_event(org, "x"))
            assert [f["seq"] for f in await collect(ws, until_seq=later)] == [later]
            seqs.append(later)
            await ws.close()
            assert resumes("notifier_resumes_total", {"outcome": outcome}) == 1


async def test_slow_client_is_cut_off_and_nobody_else_waits(
    nats_url: str, database_url: str, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    settings = settings_for(
        nats_url,
        database_url,
        subjects,
        client_queue_bytes=128 * 1024,
        socket_sndbuf=4096,
        slow_close_grace_s=20,
    )
    tok = token(org, "boss", "admin")
    async with running(settings) as app:
        fast, _ = await connect_live(app.port, tok, max_queue=10_000)
        # A reader that stops: tiny receive buffer, and the library stops reading after 1 frame.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", app.port))
        slow, _ = await connect_live(app.port, tok, sock=sock, max_queue=1)
        n = 1000
        events = [execution_event(org, "x", message="m" * 200) for _ in range(n)]
        reader = asyncio.create_task(collect(fast, idle_s=2.0, limit_s=30))
        seqs = await asyncio.gather(*(publish(js, subjects, e) for e in events))
        frames = events_of(await reader)
        assert [f["seq"] for f in frames] == sorted(seqs)
        code = None
        try:
            async for _ in slow:
                pass
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
        assert code == 4008
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{app.port}/metrics")).text
        assert 'notifier_slow_client_disconnects_total{reason="queue_full"} 1.0' in text
        await fast.close()


async def test_invalid_client_frames_get_an_error_and_the_connection_stays_usable(
    notifier: Notifier, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    ws = await websockets.connect(ws_url(notifier.port, f"token={token(org, 'boss', 'admin')}"))
    await ws.send('{"subscribe": {"status": ["failed", "bogus"]}}')
    # A bad first frame gets its error, and the connection goes live without sending anything
    # (the filters it asked for could not be read, and a filter never widens silently)...
    error = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert error["type"] == "error", error
    assert error["detail"].startswith("subscribe.status.1:"), error
    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "ready"
    for bad in ("not json", "[1]", '{"subscribe": {"status": ["bogus"]}}', '{"resume_from": -1}'):
        await ws.send(bad)
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame["type"] == "error", frame
    missed = await publish(js, subjects, execution_event(org, "x"))
    assert events_of(await collect(ws, idle_s=0.5)) == []
    # ... until a valid one, which may still resume: no event frame has gone out.
    await ws.send(orjson.dumps({"subscribe": {}, "resume_from": missed - 1}).decode())
    seq = await publish(js, subjects, execution_event(org, "x"))
    frames = await collect(ws, until_seq=seq)
    assert [f["seq"] for f in events_of(frames)] == [missed, seq]
    await ws.close()


@pytest.mark.parametrize("query", ["status=failed,bogus", "project=billing"])
async def test_an_unreadable_url_request_sends_nothing_until_a_valid_subscribe(
    notifier: Notifier, js: JetStreamContext, subjects: Subjects, org: str, query: str
) -> None:
    tok = token(org, "boss", "admin")
    ws = await websockets.connect(ws_url(notifier.port, f"token={tok}&{query}"))
    error = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert (error["type"], error["error"]) == ("error", "invalid_query"), error
    assert error["detail"].split(".")[0].split(":")[0] == query.split("=")[0], error
    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "ready"
    await publish(js, subjects, execution_event(org, "x", "execution_failed"))
    assert events_of(await collect(ws, idle_s=0.5)) == []
    await ws.send(orjson.dumps({"subscribe": {"status": ["failed"]}}).decode())
    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "subscribed"
    await publish(js, subjects, execution_event(org, "x"))
    seq = await publish(js, subjects, execution_event(org, "x", "execution_failed"))
    assert [f["seq"] for f in events_of(await collect(ws, until_seq=seq))] == [seq]
    await ws.close()


@pytest.mark.parametrize("how", ["missing", "garbage", "expired", "wrong_secret"])
async def test_bad_token_closes_with_4401_before_any_event(
    notifier: Notifier, org: str, how: str
) -> None:
    from shared.auth import mint_token

    query = {
        "missing": "",
        "garbage": "token=abc.def.ghi",
        "expired": f"token={token(org, 'boss', 'admin', ttl_s=-3600)}",
        "wrong_secret": "token=" + mint_token(secret="x" * 40, org=org, user="u", role="admin"),
    }[how]
    ws = await websockets.connect(ws_url(notifier.port, query))
    with pytest.raises(ConnectionClosed) as caught:
        await asyncio.wait_for(ws.recv(), 5)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 4401


async def test_health_ready_metrics_and_going_away(
    nats_url: str, database_url: str, subjects: Subjects, org: str
) -> None:
    async with running(settings_for(nats_url, database_url, subjects)) as app:
        base = f"http://127.0.0.1:{app.port}"
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{base}/healthz")).status_code == 200
            assert (await http.get(f"{base}/readyz")).status_code == 200
            assert (await http.get(f"{base}/nope")).status_code == 404
            ws, _ = await connect_live(app.port, token(org, "boss", "admin"))
            text = (await http.get(f"{base}/metrics")).text
            assert "notifier_connections 1.0" in text
            assert "notifier_delivery_lag_seconds_bucket" in text
        assert ws.subprotocol == "bearer"
    with pytest.raises(ConnectionClosed) as caught:
        await asyncio.wait_for(ws.recv(), 5)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 1001


async def test_first_frame_filters_apply_to_events_held_in_the_hello_window(
    nats_url: str, database_url: str, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    settings = settings_for(nats_url, database_url, subjects, hello_timeout_s=2.0)
    async with running(settings) as app:
        ws = await websockets.connect(
            ws_url(app.port),
            subprotocols=["bearer", token(org, "boss", "admin")],  # type: ignore[list-item]
        )
        for _ in range(200):  # until the server waits for the first frame
            if app.hub.clients:
                break
            await asyncio.sleep(0.005)
        running_seq = await publish(js, subjects, execution_event(org, "x"))
        for _ in range(200):  # until the event is held for the client
            if app.hub.last_seq >= running_seq:
                break
            await asyncio.sleep(0.005)
        await ws.send(orjson.dumps({"subscribe": {"status": ["failed"]}}).decode())
        failed = await publish(js, subjects, execution_event(org, "x", "execution_failed"))
        frames = await collect(ws, until_seq=failed)
        assert [(f["type"], f.get("seq")) for f in frames] == [
            ("ready", running_seq),
            ("execution_failed", failed),
        ]
        await ws.close()


async def test_stream_replay_remembers_triggers_as_live_does(
    nats_url: str, database_url: str, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    # The ring holds only the last 2 events: the replay below reads the stream.
    settings = settings_for(nats_url, database_url, subjects, ring_size=2)
    await ensure_streams(js, settings)
    started = await publish(
        js, subjects, execution_event(org, "x", id="s1", triggered_by="schedule")
    )
    # The completion omits its trigger, as completions often do.
    done = await publish(js, subjects, execution_event(org, "x", "execution_completed", id="s1"))
    for _ in range(3):
        await publish(js, subjects, execution_event(org, "x", triggered_by="manual"))
    tok = token(org, "boss", "admin")
    async with running(settings) as app:
        url = ws_url(app.port, f"token={tok}&resume_from={started - 1}&triggered_by=schedule")
        ws = await websockets.connect(url)
        frames = await until_ready(ws)
        assert [(f["type"], f.get("seq")) for f in frames][:2] == [
            ("execution_started", started),
            ("execution_completed", done),
        ]
        assert [f["type"] for f in frames][2:] == ["ready"]
        assert await collect(ws, idle_s=0.3) == []
        assert (
            app.metrics.registry.get_sample_value("notifier_resumes_total", {"outcome": "stream"})
            == 1
        )
        await ws.close()


async def test_a_stream_replay_that_falls_short_is_one_resume_counted_as_resync(
    nats_url: str, database_url: str, js: JetStreamContext, subjects: Subjects, org: str
) -> None:
    settings = settings_for(nats_url, database_url, subjects, ring_size=1)
    await ensure_streams(js, settings)
    seqs = [await publish(js, subjects, execution_event(org, "x")) for _ in range(5)]
    tok = token(org, "boss", "admin")
    async with running(settings) as app:
        # The newest event vanishes from the stream after fan-out passed it: the replay, which
        # must reach it, cannot, and says so rather than hand over with a silent gap.
        await js.delete_msg(subjects.events_stream, seqs[-1])
        ws = await websockets.connect(ws_url(app.port, f"token={tok}&resume_from={seqs[0]}"))
        frames = await until_ready(ws)
        assert [f["type"] for f in frames] == ["execution_started"] * 3 + [
            "resync_required",
            "ready",
        ]
        assert frames[3]["reason"] == "replay_incomplete"
        await ws.close()
        sample = app.metrics.registry.get_sample_value
        outcomes = ("ring", "stream", "up_to_date", "resync", "unavailable")
        counted = {o: sample("notifier_resumes_total", {"outcome": o}) or 0 for o in outcomes}
        assert counted == {"ring": 0, "stream": 0, "up_to_date": 0, "resync": 1, "unavailable": 0}
