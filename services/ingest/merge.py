"""The ingest state machine: fold events into execution and component rows.

Every field is a last-writer-wins register whose version is the version of the event that
set it: (status rank of the event, occurred_at, a hash of event_id). The join of such
registers is commutative, associative and idempotent, so any order and any number of
copies of the same events give the same row; status only moves forward because the rank
leads the version; a late, lower-ranked event still fills fields that are empty.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from shared.events import EVENT_STATUS, ComponentFields, Event, EventType, ExecutionFields

#: Merged execution columns (besides the key `org`, `id` and the constant `agent_name`).
EXECUTION_FIELDS: tuple[str, ...] = (
    "project",
    "workflow",
    "schedule_id",
    "status",
    "triggered_by",
    "message",
    "response",
    "error",
    "error_type",
    "started_at",
    "completed_at",
    "duration_ms",
    "context_used",
    "context_max",
    "cost",
    "tokens_in",
    "tokens_out",
    "tool_calls",
    "execution_log",
    "engine",
    "external_id",
    "parent_execution_id",
)

#: Merged component columns (besides the key and `agent_name`).
COMPONENT_FIELDS: tuple[str, ...] = (
    "name",
    "status",
    "retry_policy",
    "max_attempts",
    "input",
    "output",
    "error",
    "error_type",
    "started_at",
    "completed_at",
)

ExecutionKey = tuple[str, str]  # org, execution id
ComponentKey = tuple[str, str, str, int]  # org, execution id, node id, attempt

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


#: Status rank of what each event type asserts (looked up once per event, on the hot path).
_TYPE_RANK: dict[EventType, int] = {t: status.rank for t, status in EVENT_STATUS.items()}
_TYPE_STATUS: dict[EventType, str] = {t: status.value for t, status in EVENT_STATUS.items()}
#: Body fields merged as they are; `status` comes from the event type, not the body.
_EXECUTION_MERGED = frozenset(EXECUTION_FIELDS) - {"status"}
_COMPONENT_MERGED = frozenset(COMPONENT_FIELDS) - {"status"}
# `_offered` reads only the fields a publisher sent, so a merged field must default to null.
assert all(ExecutionFields.model_fields[n].default is None for n in _EXECUTION_MERGED)
assert all(ComponentFields.model_fields[n].default is None for n in _COMPONENT_MERGED)


def event_version(event: Event) -> str:
    """A fixed-width string that sorts as (rank, occurred_at, event id hash).

    The hash breaks ties between events of the same rank and time (whole-second clocks make
    them common), so it must not collide by chance: equal versions are taken to be one event,
    and the first to arrive would win. 64 bits; at 32, two colliding event ids were found in
    72,000 tries. (Ids crafted to collide can only upset their own publisher's rows.)"""
    micros = (event.occurred_at - _EPOCH) // _MICRO
    digest = hashlib.blake2b(event.event_id.encode(), digest_size=8).hexdigest()
    return f"{_TYPE_RANK[event.type]}{micros:016d}{digest}"


@dataclass(slots=True)
class RowState:
    """A row being merged: the values known, each field's version, and what changed."""

    agent_name: str
    first_seen_at: datetime
    values: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    is_new: bool = True
    #: A few stored values of a row read back from the database (see FINISH_FIELDS).
    stored: dict[str, Any] = field(default_factory=dict)


def _offered(event: Event) -> dict[str, Any]:
    """The fields an event sets, with their values: its status and every non-null merged field."""
    offered: dict[str, Any] = {"status": _TYPE_STATUS[event.type]}
    body: ExecutionFields | ComponentFields | None = event.execution
    merged = _EXECUTION_MERGED
    if body is None:
        body = event.component
        assert body is not None
        merged = _COMPONENT_MERGED
    # Only the fields the publisher sent can hold a value (every other one is null by
    # default): a few names instead of the whole body, on the hot path.
    values = body.__dict__
    for name in body.model_fields_set:
        if name in merged:
            value = values[name]
            if value is not None:
                offered[name] = value
    policy = offered.get("retry_policy")
    if policy is not None:
        # Stored as its text; an execution's only enum is `status`, which the type sets.
        offered["retry_policy"] = policy.value
    return offered


def first_state(event: Event, agent_name: str) -> RowState:
    """The row of an execution or step as its first event makes it: every offered field."""
    offered = _offered(event)
    return RowState(
        agent_name=agent_name,
        first_seen_at=event.occurred_at,
        values=offered,
        versions=dict.fromkeys(offered, event_version(event)),
        changed=set(offered),
    )


def merge(state: RowState, event: Event) -> RowState:
    """Fold one event into the row of its execution or component (in place; returned)."""
    if event.occurred_at < state.first_seen_at:
        state.first_seen_at = event.occurred_at
        state.changed.add("first_seen_at")
    version = event_version(event)
    offered = _offered(event)
    versions, values, changed = state.versions, state.values, state.changed
    for name, value in offered.items():
        current = versions.get(name)
        # Equal versions come from the same event, hence the same value: keep what is there.
        if current is None or version > current:
            versions[name] = version
            values[name] = value
            changed.add(name)
    return state


def component_key(event: Event) -> ComponentKey:
    assert event.component is not None
    c = event.component
    return (event.org, c.execution_id, c.node_id, c.attempt)


@dataclass(slots=True)
class Folded:
    executions: dict[ExecutionKey, RowState] = field(default_factory=dict)
    components: dict[ComponentKey, RowState] = field(default_factory=dict)


def fold(
    events: list[Event],
    known_executions: dict[ExecutionKey, RowState] | None = None,
    known_components: dict[ComponentKey, RowState] | None = None,
) -> Folded:
    """Fold events onto the rows already stored (given by their versions) or onto new rows."""
    out = Folded(
        executions=dict(known_executions or {}),
        components=dict(known_components or {}),
    )
    executions = out.executions
    for event in events:
        execution = event.execution
        if execution is not None:
            key = (event.org, execution.id)
            state = executions.get(key)
            if state is None:
                executions[key] = first_state(event, execution.agent_name)
            else:
                merge(state, event)
        else:
            ckey = component_key(event)
            state = out.components.get(ckey)
            if state is None:
                out.components[ckey] = first_state(event, event.agent)
            else:
                merge(state, event)
    return out


#: What a finished execution is counted by (fleet metrics), read back for stored rows.
FINISH_FIELDS: tuple[str, ...] = (
    "status",
    "triggered_by",
    "cost",
    "duration_ms",
    "started_at",
    "completed_at",
)


class Finished(NamedTuple):
    """An execution that reached a terminal status in this batch, with its merged fields."""

    org: str
    agent_name: str
    status: str
    triggered_by: str | None
    cost: float | None
    duration_ms: int | None
    started_at: datetime | None
    completed_at: datetime | None


def finished_in(
    before: dict[ExecutionKey, int], after: dict[ExecutionKey, RowState]
) -> list[Finished]:
    """Executions whose status rank went from below terminal to terminal.

    `before` holds the stored status rank of rows that existed before the batch, so an
    execution is counted once however many terminal events (or corrections) it receives.
    """
    out = []
    for key, state in after.items():
        version = state.versions.get("status")
        if version is None or version[0] != "2" or before.get(key, -1) == 2:
            continue
        values = state.values
        if state.stored:
            # A stored row: what this batch did not set comes from the database.
            values = {**state.stored, **{k: v for k, v in values.items() if v is not None}}
        get = values.get
        out.append(
            Finished(
                key[0],
                state.agent_name,
                values["status"],  # set by this batch: it made the row terminal
                get("triggered_by"),
                get("cost"),
                get("duration_ms"),
                get("started_at"),
                get("completed_at"),
            )
        )
    return out
