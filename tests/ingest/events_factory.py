"""Generate realistic, contract-valid event streams for one or many executions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.events import Event

BASE = datetime(2026, 11, 1, tzinfo=UTC)


def execution_events(
    org: str, agent: str, execution_id: str, rng: random.Random, *, start: datetime = BASE
) -> list[Event]:
    """started → some progress → a terminal event, each carrying part of one true execution."""
    started = start + timedelta(seconds=rng.randint(0, 86_400))
    duration = rng.randint(100, 120_000)
    terminal = rng.choice(["execution_completed", "execution_failed", "execution_cancelled"])
    events: list[dict[str, Any]] = [
        {
            "type": "execution_started",
            "occurred_at": started,
            "execution": {
                "triggered_by": rng.choice(["schedule", "manual", "agent", "mcp", "cron-x"]),
                "message": f"task {execution_id} " + rng.choice(["invoice", "report", "sync"]),
                "started_at": started,
                "project": rng.choice([None, "billing", "ops"]),
            },
        }
    ]
    tokens = 0
    for step in range(rng.randint(0, 3)):
        tokens += rng.randint(1, 500)
        events.append(
            {
                "type": "execution_progress",
                "occurred_at": started + timedelta(milliseconds=duration * (step + 1) // 5),
                "execution": {"tokens_out": tokens, "context_used": tokens * 3},
            }
        )
    done = started + timedelta(milliseconds=duration)
    final: dict[str, Any] = {
        "completed_at": done,
        "duration_ms": duration,
        "cost": round(rng.random() / 10, 6),
        "tokens_out": tokens + rng.randint(0, 50),
        "tokens_in": rng.randint(10, 9000),
    }
    if terminal == "execution_completed":
        final["response"] = f"result of {execution_id}"
    elif terminal == "execution_failed":
        final["error"] = rng.choice(["Timeout after 30s", "RateLimitError: 429", "KeyError: 'x'"])
        final["error_type"] = final["error"].split(":")[0]
    events.append({"type": terminal, "occurred_at": done, "execution": final})
    out = []
    for index, raw in enumerate(events):
        raw["event_id"] = f"{execution_id}-{index}"
        raw["org"] = org
        raw["execution"] = {"id": execution_id, "agent_name": agent, **raw["execution"]}
        raw["execution"] = {k: v for k, v in raw["execution"].items() if v is not None}
        out.append(Event.model_validate(raw))
    return out


def to_wire(event: Event) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()
