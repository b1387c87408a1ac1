"""`fleetwatch emit` as a process against real NATS."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
from nats.js import JetStreamContext

from shared.events import Event
from shared.subjects import Subjects
from tests.publisher.conftest import REPO, stream_messages


async def emit(env: dict[str, str], *args: str, stdin: bytes = b"") -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.cli", "emit", *args,
        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out


async def test_emit_from_flags_and_json(
    service_env: dict[str, str], streams: Subjects, js: JetStreamContext, org: str
) -> None:
    code, out = await emit(
        service_env, "--org", org, "--agent", "cron", "--type", "execution_completed",
        "--id", "nightly-1", "--field", "cost=0.25", "--field", "response=all good",
        "--field", "tool_calls=[\"grep\"]",
    )  # fmt: skip
    assert code == 0, out
    # A normal close is no warning: "disconnected from NATS" after every success misled.
    assert b"disconnected" not in out, out
    step = {
        "type": "component_failed",
        "event_id": "e-42",
        "occurred_at": "2026-02-05T10:00:45Z",
        "agent_name": "cron",
        "component": {"execution_id": "nightly-1", "node_id": "upload", "error": "503"},
    }
    code, out = await emit(service_env, "--org", org, "--json", "-", stdin=orjson.dumps(step))
    assert code == 0, out
    messages = await stream_messages(js, streams.events_stream)
    assert [m[0] for m in messages] == [
        streams.event(org, "cron", "execution_completed"),
        streams.event(org, "cron", "component_failed"),
    ]
    first = Event.model_validate(messages[0][2])
    assert first.execution is not None
    assert (first.execution.cost, first.execution.response) == (0.25, "all good")
    assert first.execution.tool_calls == ["grep"]
    assert messages[1][1]["Nats-Msg-Id"] == f"{org}:e-42"


async def test_emit_refuses_invalid_events(
    service_env: dict[str, str], streams: Subjects, js: JetStreamContext, org: str
) -> None:
    code, out = await emit(
        service_env, "--org", org, "--agent", "cron", "--type", "execution_started",
        "--id", "x", "--field", "cost=-3",
    )  # fmt: skip
    assert code == 2
    assert b"execution.cost" in out
    assert (await js.stream_info(streams.events_stream)).state.messages == 0


async def test_emit_refuses_what_ingest_would_dead_letter(
    service_env: dict[str, str], streams: Subjects, js: JetStreamContext, org: str
) -> None:
    code, out = await emit(
        service_env, "--org", org, "--agent", "cron", "--type", "execution_completed",
        "--id", "r1", "--field", 'response="a\\u0000b"',
    )  # fmt: skip
    assert code == 2, out
    assert b"execution.response" in out
    assert b"NUL" in out
    # 475k "é" are under MAX_LOG characters, and 950 KB (> 900 KiB) as published.
    big = {
        "type": "execution_completed",
        "event_id": "e-big",
        "occurred_at": "2026-02-05T10:00:45Z",
        "execution": {"id": "r2", "agent_name": "cron", "execution_log": "é" * 475_000},
    }
    code, out = await emit(service_env, "--org", org, "--json", "-", stdin=orjson.dumps(big))
    assert code == 2, out
    assert b"too_large" in out
    assert b"bytes > 921600" in out
    assert (await js.stream_info(streams.events_stream)).state.messages == 0
