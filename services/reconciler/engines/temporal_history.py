"""Temporal activity history → component steps (pure: protobuf events in, EngineStep out).

Retries are not separate history events: an activity has one ACTIVITY_TASK_STARTED carrying
its final `attempt` and the previous attempt's `last_failure`, so one activity gives its final
attempt and, when it retried, the attempt before it (failed with that last failure).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from temporalio.api.common.v1 import Payloads
from temporalio.api.common.v1 import RetryPolicy as RetryPolicyProto
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflow.v1 import PendingActivityInfo

from services.reconciler.engines import EngineStep
from shared.events import RetryPolicy, Status

Decode = Callable[[Payloads], Any]


def to_datetime(stamp: Any) -> datetime | None:
    """A protobuf Timestamp as an aware datetime; None when unset."""
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment


def retry_policy_of(proto: RetryPolicyProto | None) -> tuple[RetryPolicy | None, int | None]:
    """Our retry policy name and max attempts (0 = unlimited) for a Temporal retry policy."""
    if proto is None:
        return None, None
    attempts = int(proto.maximum_attempts)
    if attempts == 1:
        return RetryPolicy.NONE, 1
    if attempts == 0:
        return RetryPolicy.FOREVER, 0
    if proto.backoff_coefficient and proto.backoff_coefficient != 1.0:
        return RetryPolicy.EXPONENTIAL, attempts
    return RetryPolicy.FIXED, attempts


def failure_text(failure: Failure | None) -> tuple[str | None, str | None]:
    """The innermost useful message and type of a failure chain."""
    if failure is None or (not failure.message and not failure.HasField("cause")):
        return None, None
    message, kind = failure.message or None, None
    if failure.HasField("application_failure_info"):
        kind = failure.application_failure_info.type or None
    elif failure.HasField("timeout_failure_info"):
        kind = "timeout"
    elif failure.HasField("canceled_failure_info"):
        kind = "cancelled"
    elif failure.HasField("terminated_failure_info"):
        kind = "terminated"
    if failure.HasField("cause"):
        inner_message, inner_kind = failure_text(failure.cause)
        if inner_message:
            message = f"{message}: {inner_message}" if message else inner_message
        kind = inner_kind or kind
    return message, kind


@dataclass(slots=True)
class _Activity:
    activity_id: str
    name: str
    input: Any
    retry_policy: RetryPolicy | None
    max_attempts: int | None
    scheduled_at: datetime | None
    attempt: int = 1
    started_at: datetime | None = None
    last_failure: Failure | None = None
    status: Status = Status.PENDING
    output: Any = None
    failure: Failure | None = None
    completed_at: datetime | None = None


def _decode(decode: Decode, payloads: Payloads) -> Any:
    if not payloads.payloads:
        return None
    try:
        values = decode(payloads)
    except Exception as exc:  # a codec we lack must not lose the step
        return {"undecodable": str(exc)}
    if isinstance(values, list) and len(values) == 1:
        return values[0]
    return values


def _steps_of(act: _Activity) -> list[EngineStep]:
    steps = []
    if act.attempt > 1:
        error, error_type = failure_text(act.last_failure)
        steps.append(
            EngineStep(
                node_id=act.activity_id,
                name=act.name,
                attempt=act.attempt - 1,
                status=Status.FAILED,
                retry_policy=act.retry_policy,
                max_attempts=act.max_attempts,
                input=act.input,
                error=error or "attempt failed",
                error_type=error_type,
            )
        )
    error, error_type = failure_text(act.failure)
    steps.append(
        EngineStep(
            node_id=act.activity_id,
            name=act.name,
            attempt=act.attempt,
            status=act.status,
            retry_policy=act.retry_policy,
            max_attempts=act.max_attempts,
            input=act.input,
            output=act.output,
            error=error,
            error_type=error_type,
            started_at=act.started_at or act.scheduled_at,
            completed_at=act.completed_at,
        )
    )
    return steps


def steps_from_history(
    events: Iterable[HistoryEvent],
    pending: Sequence[PendingActivityInfo] = (),
    decode: Decode = lambda payloads: None,
) -> list[EngineStep]:
    """Every activity of a workflow history as steps, in schedule order."""
    by_event: dict[int, _Activity] = {}
    by_activity_id: dict[str, _Activity] = {}
    for event in events:
        kind = event.event_type
        at = to_datetime(event.event_time)
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            policy, max_attempts = retry_policy_of(
                attrs.retry_policy if attrs.HasField("retry_policy") else None
            )
            act = _Activity(
                activity_id=attrs.activity_id,
                name=attrs.activity_type.name,
                input=_decode(decode, attrs.input),
                retry_policy=policy,
                max_attempts=max_attempts,
                scheduled_at=at,
            )
            by_event[event.event_id] = by_activity_id[attrs.activity_id] = act
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            act = by_event[started.scheduled_event_id]
            act.attempt = max(1, started.attempt)
            act.started_at = at
            act.status = Status.RUNNING
            if started.HasField("last_failure"):
                act.last_failure = started.last_failure
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes
            act = by_event[done.scheduled_event_id]
            act.status, act.completed_at = Status.SUCCESS, at
            act.output = _decode(decode, done.result)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failed = event.activity_task_failed_event_attributes
            act = by_event[failed.scheduled_event_id]
            act.status, act.completed_at, act.failure = Status.FAILED, at, failed.failure
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            timed_out = event.activity_task_timed_out_event_attributes
            act = by_event[timed_out.scheduled_event_id]
            act.status, act.completed_at, act.failure = Status.FAILED, at, timed_out.failure
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED:
            canceled = event.activity_task_canceled_event_attributes
            act = by_event[canceled.scheduled_event_id]
            act.status, act.completed_at = Status.CANCELLED, at
    for info in pending:
        found = by_activity_id.get(info.activity_id)
        if found is None or found.status.is_terminal:
            continue
        found.attempt = max(found.attempt, info.attempt)
        found.status = Status.RUNNING
        found.started_at = to_datetime(info.last_started_time) or found.started_at
        if info.HasField("last_failure"):
            found.last_failure = info.last_failure
    return [step for act in by_activity_id.values() for step in _steps_of(act)]
