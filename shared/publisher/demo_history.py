"""Past runs of the demo fleet as events with their own timestamps (`--backfill-runs`), so
a fresh dashboard has history. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.events import EventType
from shared.publisher.demo_fleet import RunPlan, StepPlan
from shared.publisher.envelope import component_event, execution_event


def _step_events(
    org: str, agent: str, run_id: str, step: StepPlan, start: datetime
) -> tuple[list[dict[str, Any]], datetime]:
    events: list[dict[str, Any]] = []
    share = timedelta(seconds=step.seconds / len(step.attempts))
    moment = start
    for attempt, error in enumerate(step.attempts, start=1):
        base = {
            "execution_id": run_id, "node_id": step.name, "name": step.name,
            "attempt": attempt, "retry_policy": step.retry_policy,
            "max_attempts": step.max_attempts, "started_at": moment,
        }  # fmt: skip
        events.append(
            component_event(EventType.COMPONENT_STARTED, org=org, agent=agent, component=base,
                            occurred_at=moment)
        )  # fmt: skip
        moment += share
        if error is None:
            done = {**base, "completed_at": moment, "output": {"ok": True}}
            type_ = EventType.COMPONENT_COMPLETED
        else:
            done = {**base, "completed_at": moment, "error_type": error[0], "error": error[1]}
            type_ = EventType.COMPONENT_FAILED
        events.append(
            component_event(type_, org=org, agent=agent, component=done, occurred_at=moment)
        )
    return events, moment


def history_events(
    plan: RunPlan, start: datetime, run_id: str, parent_id: str | None = None
) -> list[dict[str, Any]]:
    """The events of one past run (and its children), with the run's own timestamps."""
    agent = plan.agent
    fields: dict[str, Any] = {
        "id": run_id, "agent_name": agent.name, "project": agent.project,
        "workflow": agent.workflow, "schedule_id": agent.schedule_id,
        "triggered_by": plan.triggered_by, "message": plan.message, "started_at": start,
        "parent_execution_id": parent_id, "context_max": plan.context_max,
    }  # fmt: skip
    events = [
        execution_event(
            EventType.EXECUTION_STARTED, org=agent.org, occurred_at=start,
            execution={**fields, "status": "running"}, source=f"agent:{agent.name}",
        )
    ]  # fmt: skip
    if plan.outcome == "stuck":
        return events
    moment = start
    for index, step in enumerate(plan.steps):
        step_events, moment = _step_events(agent.org, agent.name, run_id, step, moment)
        events += step_events
        if index == 0:
            for n, child in enumerate(plan.children):
                events += history_events(child, moment, f"{run_id}-c{n}", run_id)
    end = max(moment, start + timedelta(seconds=plan.seconds))
    final = {
        **fields, "completed_at": end, "duration_ms": int((end - start).total_seconds() * 1000),
        "tokens_in": plan.tokens_in, "tokens_out": plan.tokens_out, "cost": plan.cost,
        "context_used": plan.context_used, "tool_calls": plan.tool_calls or None,
    }  # fmt: skip
    if plan.outcome == "failed" and plan.error is not None:
        final.update(status="failed", error_type=plan.error[0], error=plan.error[1])
        type_ = EventType.EXECUTION_FAILED
    else:
        final.update(status="success", response=plan.response)
        type_ = EventType.EXECUTION_COMPLETED
    events.append(
        execution_event(type_, org=agent.org, occurred_at=end, execution=final,
                        source=f"agent:{agent.name}")
    )  # fmt: skip
    return events
