"""The event contract of DESIGN.md as typed records: envelope, execution and component fields."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2199, 12, 31, tzinfo=UTC)

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_NAME_RE = re.compile(NAME_PATTERN)

#: Largest accepted text field (message, response, error). The log has its own larger cap.
MAX_TEXT = 64 * 1024
MAX_LOG = 512 * 1024
#: Largest accepted message on the wire (NATS itself refuses more than 1 MiB by default).
MAX_EVENT_BYTES = 900 * 1024
MAX_ID = 200


def is_valid_name(value: str) -> bool:
    """True for an org or agent name that may stand in a subject token."""
    return bool(_NAME_RE.fullmatch(value))


# A pattern constraint runs in pydantic-core (Rust), not as a Python call per field.
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Ident = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
#: Counts and durations fit Postgres bigint.
Count = Annotated[int, Field(ge=0, le=2**62)]
#: The published schema's form of a time: RFC 3339 (with the separators and offsets the
#: parser also takes) in the years ingest accepts, and never without a zone. `format:
#: date-time` alone is only an annotation in JSON Schema 2020-12, so validators let naive
#: times through, which ingest dead-letters.
MOMENT_PATTERN = (
    r"^2[01][0-9]{2}-[0-9]{2}-[0-9]{2}[Tt _][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
    r"([Zz]|[+-][0-9]{2}:?[0-9]{2})$"
)
#: A time Postgres and Python can both hold (checked in pydantic-core, not per call).
Moment = Annotated[
    AwareDatetime,
    Field(ge=EARLIEST, le=LATEST),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": MOMENT_PATTERN}),
]

#: Integers a JSON field may hold: what the JSON encoder on the way to jsonb can write.
_JSON_INT_MIN, _JSON_INT_MAX = -(2**63), 2**64 - 1


def _storable(value: Any) -> Any:
    """Refuse what JSON cannot carry to storage: NaN, infinities (which pydantic's parser
    accepts, and which would be stored as null) and integers past 64 bits."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, int):
        if not _JSON_INT_MIN <= value <= _JSON_INT_MAX:
            raise ValueError("integers must fit 64 bits")
    elif isinstance(value, list):
        for item in value:
            _storable(item)
    elif isinstance(value, dict):
        for item in value.values():
            _storable(item)
    return value


#: Free-form JSON (tool calls, a step's input and output), storable as jsonb.
Json = Annotated[JsonValue, AfterValidator(_storable)]


class EventType(StrEnum):
    EXECUTION_QUEUED = "execution_queued"
    EXECUTION_STARTED = "execution_started"
    EXECUTION_PROGRESS = "execution_progress"
    EXECUTION_COMPLETED = "execution_completed"
    EXECUTION_FAILED = "execution_failed"
    EXECUTION_CANCELLED = "execution_cancelled"
    COMPONENT_STARTED = "component_started"
    COMPONENT_COMPLETED = "component_completed"
    COMPONENT_FAILED = "component_failed"

    @property
    def is_component(self) -> bool:
        return self.value.startswith("component_")


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def rank(self) -> int:
        """Position on the forward-only path pending → running → terminal."""
        return STATUS_RANK[self]

    @property
    def is_terminal(self) -> bool:
        return self.rank == 2


STATUS_RANK: dict[Status, int] = {
    Status.PENDING: 0,
    Status.RUNNING: 1,
    Status.SUCCESS: 2,
    Status.FAILED: 2,
    Status.CANCELLED: 2,
}

KNOWN_TRIGGERS = frozenset({"manual", "schedule", "agent", "user", "mcp", "api"})


def trigger_group(triggered_by: str | None) -> str:
    """Known triggers stand for themselves; anything else is grouped as "other"."""
    if triggered_by in KNOWN_TRIGGERS:
        return triggered_by
    return "other"


class RetryPolicy(StrEnum):
    NONE = "none"
    FIXED = "fixed"
    EXPONENTIAL = "exponential"
    FOREVER = "forever"


#: The event types about one step (component) of an execution.
COMPONENT_TYPES: frozenset[EventType] = frozenset(t for t in EventType if t.is_component)

#: The status each event type asserts about its execution or component.
EVENT_STATUS: dict[EventType, Status] = {
    EventType.EXECUTION_QUEUED: Status.PENDING,
    EventType.EXECUTION_STARTED: Status.RUNNING,
    EventType.EXECUTION_PROGRESS: Status.RUNNING,
    EventType.EXECUTION_COMPLETED: Status.SUCCESS,
    EventType.EXECUTION_FAILED: Status.FAILED,
    EventType.EXECUTION_CANCELLED: Status.CANCELLED,
    EventType.COMPONENT_STARTED: Status.RUNNING,
    EventType.COMPONENT_COMPLETED: Status.SUCCESS,
    EventType.COMPONENT_FAILED: Status.FAILED,
}


def _envelope_rules(schema: dict[str, Any]) -> None:
    """Write `Event._body_matches_type` into the JSON Schema, so that a publisher validating
    against it refuses what ingest would dead-letter: the body `type` needs (the other one
    absent or null), and no `execution.status` contradicting the type."""
    component_types = sorted(t.value for t in COMPONENT_TYPES)
    rules: list[dict[str, Any]] = [
        {
            "if": {"required": ["type"], "properties": {"type": {"enum": component_types}}},
            "then": {
                "required": ["component"],
                "properties": {"component": {"type": "object"}, "execution": {"type": "null"}},
            },
            "else": {
                "required": ["execution"],
                "properties": {"execution": {"type": "object"}, "component": {"type": "null"}},
            },
        }
    ]
    for type_, status in EVENT_STATUS.items():
        if type_ in COMPONENT_TYPES:
            continue
        rules.append(
            {
                "if": {"required": ["type"], "properties": {"type": {"const": type_.value}}},
                "then": {
                    "properties": {
                        "execution": {"properties": {"status": {"enum": [status.value, None]}}}
                    }
                },
            }
        )
    schema["allOf"] = rules


class _Record(BaseModel):
    # `cache_strings="keys"`: pydantic's default also caches every short string value, and
    # events are mostly unique ids and texts, so that cache only misses; caching keys alone,
    # ingest validates an event ~15% faster (bench/validation_strings.py).
    model_config = ConfigDict(
        extra="forbid", frozen=True, str_max_length=MAX_LOG, cache_strings="keys"
    )


class ExecutionFields(_Record):
    """What an event knows of one execution; every field but `id` and `agent_name` optional."""

    id: Ident
    agent_name: Name
    project: Ident | None = None
    workflow: Ident | None = None
    schedule_id: Ident | None = None
    status: Status | None = None
    # Unknown triggers are kept as sent and grouped as "other" when counted.
    triggered_by: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    message: Text | None = None
    response: Text | None = None
    error: Text | None = None
    error_type: Annotated[str, Field(max_length=200)] | None = None
    started_at: Moment | None = None
    completed_at: Moment | None = None
    duration_ms: Count | None = None
    context_used: Count | None = None
    context_max: Count | None = None
    cost: Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)] | None = None
    tokens_in: Count | None = None
    tokens_out: Count | None = None
    tool_calls: Annotated[list[Json], Field(max_length=10_000)] | None = None
    execution_log: Annotated[str, Field(max_length=MAX_LOG)] | None = None
    engine: Annotated[str, Field(max_length=64)] | None = None
    external_id: Ident | None = None
    parent_execution_id: Ident | None = None


class ComponentFields(_Record):
    """One step of an execution, as a `component_*` event reports it."""

    execution_id: Ident
    node_id: Ident
    name: Annotated[str, Field(max_length=200)] | None = None
    attempt: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    retry_policy: RetryPolicy | None = None
    max_attempts: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    input: Json = None
    output: Json = None
    error: Text | None = None
    error_type: Annotated[str, Field(max_length=200)] | None = None
    started_at: Moment | None = None
    completed_at: Moment | None = None


class Event(_Record):
    """The envelope every publisher sends; `execution` or `component` matches `type`."""

    model_config = ConfigDict(json_schema_extra=_envelope_rules)

    type: EventType
    event_id: Ident
    occurred_at: Moment
    org: Name
    source: Annotated[str, Field(max_length=200)] | None = None
    execution: ExecutionFields | None = None
    component: ComponentFields | None = None
    #: Set on component events: the agent that ran the step (the subject's agent token).
    agent_name: Name | None = None

    @model_validator(mode="after")
    def _body_matches_type(self) -> Event:
        # Runs in Python for every event ingest takes: plain look-ups, no enum properties.
        # (`_envelope_rules` writes these rules into the published JSON Schema.)
        type_, execution = self.type, self.execution
        if type_ in COMPONENT_TYPES:
            if self.component is None:
                raise ValueError(f"{type_} needs a 'component' object")
            if execution is not None:
                raise ValueError(f"{type_} carries 'component', not 'execution'")
        else:
            if execution is None:
                raise ValueError(f"{type_} needs an 'execution' object")
            if self.component is not None:
                raise ValueError(f"{type_} carries 'execution', not 'component'")
            asserted = EVENT_STATUS[type_]
            if execution.status is not None and execution.status is not asserted:
                raise ValueError(
                    f"execution.status {execution.status.value!r} contradicts "
                    f"{type_} (which means {asserted.value!r})"
                )
        return self

    @property
    def status(self) -> Status:
        return EVENT_STATUS[self.type]

    @property
    def agent(self) -> str:
        """The agent this event is about."""
        if self.execution is not None:
            return self.execution.agent_name
        assert self.agent_name is not None
        return self.agent_name

    @property
    def execution_id(self) -> str:
        if self.execution is not None:
            return self.execution.id
        assert self.component is not None
        return self.component.execution_id


class TerminateReply(BaseModel):
    """An agent's answer to `fleet.commands.<org>.<agent>.terminate`."""

    accepted: bool
    reason: str | None = None


class TerminateRequest(BaseModel):
    execution_id: Ident
    requested_by: str | None = None
    reason: str | None = None


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of the envelope, checked in for publishers in other languages."""
    return Event.model_json_schema(mode="validation")


def utc_iso(moment: datetime) -> str:
    """RFC 3339 with a `Z`, as the contract writes times."""
    return moment.isoformat().replace("+00:00", "Z")


#: Why a message went to the DLQ (`<prefix>.dlq.<reason>`): the first six are
#: `shared.validation.validate`'s, the last two ingest's own once it meets the database.
DlqReason = Literal[
    "not_json",
    "schema",
    "bad_subject",
    "tenant_mismatch",
    "too_large",
    "unknown_type",
    "agent_mismatch",
    "db_rejected",
]
