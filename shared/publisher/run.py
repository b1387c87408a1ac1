"""One execution and its steps as async context managers that publish `execution_*` and
`component_*` events."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import reprlib
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from shared.events import MAX_LOG, MAX_TEXT, EventType, ExecutionFields, RetryPolicy
from shared.publisher.checks import InvalidEventError
from shared.publisher.envelope import component_event, execution_event, new_id, now
from shared.publisher.fit import fit_text, scrub_nul

if TYPE_CHECKING:
    from shared.publisher.client import Fleet

log = logging.getLogger("fleetwatch.publisher")

#: Called with the terminate reason instead of cancelling the run's task.
TerminateCallback = Callable[[str | None], Awaitable[None] | None]

#: The run whose body is executing in this task, so nested runs link to it as parent.
current_run: ContextVar[Run | None] = ContextVar("fleetwatch_current_run", default=None)

#: Async `on_terminate` callbacks still running (a reference keeps each task alive).
_callbacks: set[asyncio.Future[Any]] = set()


def _callback_done(task: asyncio.Future[Any]) -> None:
    _callbacks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("on_terminate raised", exc_info=task.exception())


def _adapter(name: str) -> TypeAdapter[Any]:
    # `Count | None`, `Annotated[float, Field(...)] | None`: the limits are in the annotation.
    info = ExecutionFields.model_fields[name]
    assert not info.metadata, name
    adapter: TypeAdapter[Any] = TypeAdapter(info.annotation)  # type: ignore[arg-type]
    return adapter


#: Numbers the code sets on a run, checked as they are set: a negative cost or a token count
#: that is not a whole number would otherwise make ingest dead-letter the run's last event.
_CHECKED: dict[str, TypeAdapter[Any]] = {
    name: _adapter(name)
    for name in ("cost", "tokens_in", "tokens_out", "context_used", "context_max")
}


#: Text the code sets on a run: a number, a dict or an SDK object (`answer` for
#: `answer.text`) would break the run's last event (a TypeError while building it, or a
#: payload ingest dead-letters), leaving its row `running`. Lengths are not checked here:
#: long text is cut to fit when published (`fit_text`).
_TEXT = frozenset(
    {
        "id", "org", "agent", "message", "response", "execution_log", "triggered_by",
        "project", "workflow", "schedule_id", "engine", "external_id", "parent_execution_id",
    }
)  # fmt: skip


#: Fields `Run.__setattr__` checks; every other attribute (the run's own state) is stored as is.
_GUARDED = _TEXT | frozenset(_CHECKED)
#: The bounds of `Count` and of `cost` in the contract (what `_CHECKED`'s adapters enforce),
#: for the common case decided without pydantic: a plain int count, a plain float cost.
_COUNT_MAX = 2**62
_COST_MAX = 1e12


def _checked(name: str, value: Any) -> Any:
    """`value` as the contract takes it for field `name` (unchanged for unchecked fields)."""
    if value is None:
        return value
    kind = type(value)
    if name == "cost":
        if kind is float and 0.0 <= value <= _COST_MAX:  # nan and inf fail the compare
            return value
    elif kind is int and name in _CHECKED and 0 <= value <= _COUNT_MAX:
        return value
    if name in _TEXT:
        if not isinstance(value, str):
            raise TypeError(
                f"Run.{name} = {reprlib.repr(value)} refused: text (str) expected, "
                f"not {type(value).__name__}"
            )
        return value
    if name not in _CHECKED:
        return value
    try:
        return _CHECKED[name].validate_python(value)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise ValueError(f"Run.{name} = {value!r} refused: {reason}") from None


def _clean_exit(exc: BaseException | None) -> bool:
    """No exception, or `sys.exit()` / `sys.exit(0)`: the program ending as it means to."""
    return exc is None or (isinstance(exc, SystemExit) and exc.code in (None, 0))


def _exception_text(exc: BaseException) -> str:
    """The exception's message, or its type's name. An exception whose `__str__` raises (an
    attribute it reads was never set) must not stop the run's last event from going out:
    raised here, it replaced the body's exception and left the row `running`."""
    try:
        text = str(exc)
    except Exception:
        try:
            text = repr(exc)
        except Exception:
            text = ""
    return text or type(exc).__name__


async def _send(fleet: Fleet, event: dict[str, Any]) -> None:
    """Publish what a run captured; NUL or a lone surrogate in a string (tool calls, a
    step's input or output, short text) is replaced as `fit_text` does in long text."""
    try:
        await fleet.publish(event)
    except InvalidEventError as exc:
        if not (exc.holds_nul or exc.holds_surrogate):
            raise
        await fleet.publish(scrub_nul(event))


#: Set while a run goes on, None until then.
_RESULT_FIELDS = (
    "response",
    "cost",
    "tokens_in",
    "tokens_out",
    "context_used",
    "context_max",
    "tool_calls",
    "execution_log",
    "started_at",
    "completed_at",
    "terminate_reason",
)


class Run:
    """An execution in progress: set `response`, `cost`, `tokens_in`, ... before it ends."""

    fleet: Fleet
    org: str
    agent: str
    id: str
    message: str | None
    triggered_by: str | None
    project: str | None
    workflow: str | None
    schedule_id: str | None
    parent_execution_id: str | None
    engine: str | None
    external_id: str | None
    terminate_requested: bool
    finished: bool
    # What the code sets while the run goes on.
    response: str | None
    cost: float | None
    tokens_in: int | None
    tokens_out: int | None
    context_used: int | None
    context_max: int | None
    tool_calls: list[Any] | None
    execution_log: str | None
    started_at: datetime | None
    completed_at: datetime | None
    terminate_reason: str | None
    _on_terminate: TerminateCallback | None
    _cancel_task: bool
    _task: asyncio.Task[Any] | None
    _we_cancelled: bool
    _started_mono: float
    _attempts: dict[str, int]
    _token: Token[Run | None] | None

    def __init__(
        self,
        fleet: Fleet,
        *,
        org: str,
        agent: str,
        id: str | None = None,
        message: str | None = None,
        triggered_by: str | None = None,
        project: str | None = None,
        workflow: str | None = None,
        schedule_id: str | None = None,
        parent_execution_id: str | None = None,
        engine: str | None = None,
        external_id: str | None = None,
        on_terminate: TerminateCallback | None = None,
        cancel_task: bool = True,
    ) -> None:
        given = {
            "org": org,
            "agent": agent,
            "id": id or new_id(),
            "message": message,
            "triggered_by": triggered_by,
            "project": project,
            "workflow": workflow,
            "schedule_id": schedule_id,
            "parent_execution_id": parent_execution_id,
            "engine": engine,
            "external_id": external_id,
        }
        # Straight into the instance dict: `__setattr__` per attribute was ~40 Python calls a
        # run (bench/publish.py's `run_context_us`); what the caller gave is checked here.
        for key, value in given.items():
            if value is not None and type(value) is not str:
                _checked(key, value)  # text expected: raises for anything else
        vars(self).update(given)
        vars(self).update(fleet=fleet, terminate_requested=False, finished=False)
        # What the code sets while the run goes on.
        vars(self).update(dict.fromkeys(_RESULT_FIELDS))
        vars(self).update(
            _on_terminate=on_terminate,
            _cancel_task=cancel_task,
            _task=None,
            _we_cancelled=False,
            _started_mono=0.0,
            _attempts={},
            _token=None,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _GUARDED:
            value = _checked(name, value)
        object.__setattr__(self, name, value)

    # -- what the code may call --------------------------------------------------------------

    def set(self, **fields: Any) -> None:
        """Set several result fields at once (`run.set(response=..., cost=...)`); all or none:
        an unknown or refused field leaves every field as it was."""
        checked = {}
        for key, value in fields.items():
            if not hasattr(self, key) or key.startswith("_"):
                raise AttributeError(f"Run has no field {key!r}")
            checked[key] = _checked(key, value)
        for key, value in checked.items():
            object.__setattr__(self, key, value)  # checked above

    async def progress(self, **fields: Any) -> None:
        """Publish `execution_progress` with the fields known so far (and any given here)."""
        self.set(**fields)
        await self._publish(EventType.EXECUTION_PROGRESS, self._fields("running"))

    def component(
        self,
        name: str,
        *,
        node_id: str | None = None,
        input: Any = None,
        retry_policy: RetryPolicy | str | None = None,
        max_attempts: int | None = None,
        attempt: int | None = None,
    ) -> Step:
        """A step of this run; entering the same `node_id` again counts the next attempt."""
        return Step(
            self,
            name=name,
            node_id=node_id or name,
            input=input,
            retry_policy=RetryPolicy(retry_policy) if retry_policy is not None else None,
            max_attempts=max_attempts,
            attempt=attempt,
        )

    def child(self, agent: str, **options: Any) -> Run:
        """An execution of another agent that this run triggers (`parent_execution_id`)."""
        options.setdefault("triggered_by", "agent")
        return self.fleet.execution(agent, parent=self, **options)

    # -- context manager ---------------------------------------------------------------------

    async def __aenter__(self) -> Run:
        self.started_at = now()
        self._started_mono = time.monotonic()
        try:
            self._task = asyncio.current_task()
        except RuntimeError:
            self._task = None
        self._token = current_run.set(self)
        publishing = False
        try:
            await self.fleet._register(self)
            publishing = True
            await self._publish(EventType.EXECUTION_STARTED, self._fields("running"))
        except (asyncio.CancelledError, KeyboardInterrupt) as exc:
            # Cancelled while `execution_started` waited for its ack: the event may well be
            # out, and with nothing after it the row would stay `running` for good. End the
            # run as cancelled (its own cancellation is not ours to stop: it goes on up).
            self._we_cancelled = False
            if publishing:
                with contextlib.suppress(Exception):
                    await self.__aexit__(type(exc), exc, exc.__traceback__)
            self._leave()
            raise
        except BaseException:
            # `async with` never calls __aexit__ when __aenter__ raises: undo here, or a
            # terminate for this id would cancel the task's later work and the task's next
            # runs would name this one as their parent.
            self._leave()
            raise
        return self

    def _leave(self) -> None:
        """Stop being the task's current run and the terminate responder's."""
        if self._token is not None:
            # The sync facade enters and leaves in two different tasks (two contexts).
            with contextlib.suppress(ValueError):
                current_run.reset(self._token)
            self._token = None
        self.fleet._unregister(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._leave()
        self.finished = True
        self.completed_at = now()
        fields = self._fields("")
        fields["completed_at"] = self.completed_at
        fields["duration_ms"] = int((time.monotonic() - self._started_mono) * 1000)
        suppress = False
        # An async generator closed before its end (GeneratorExit) was stopped, like a
        # cancelled task: the run did not fail.
        stopped = asyncio.CancelledError | KeyboardInterrupt | GeneratorExit
        if self.terminate_requested or isinstance(exc, stopped):
            fields["status"] = "cancelled"
            fields["error"] = fit_text(self.terminate_reason or "cancelled", MAX_TEXT)
            fields["error_type"] = "Terminated" if self.terminate_requested else "Cancelled"
            type_ = EventType.EXECUTION_CANCELLED
            # A cancellation we caused ends here; anyone else's keeps going up.
            if isinstance(exc, asyncio.CancelledError) and self._we_cancelled and self._task:
                suppress = self._task.uncancel() == 0
        elif exc is not None and not _clean_exit(exc):
            fields["status"] = "failed"
            fields["error"] = fit_text(_exception_text(exc), MAX_TEXT)
            fields["error_type"] = type(exc).__name__[:200]
            type_ = EventType.EXECUTION_FAILED
        else:  # no exception, or a clean `sys.exit()`: it finished
            fields["status"] = "success"
            type_ = EventType.EXECUTION_COMPLETED
        await self._publish_last(type_, fields, body_raised=exc is not None)
        return suppress

    # -- terminate ---------------------------------------------------------------------------

    async def request_terminate(self, reason: str | None) -> tuple[bool, str | None]:
        """Ask this run to stop: call the callback, or cancel the task that entered it."""
        if self.finished:
            return False, "execution already finished"
        if self.terminate_requested:
            return True, "terminate already requested"
        self.terminate_requested = True
        self.terminate_reason = reason or "terminated on request"
        if self._on_terminate is not None:
            # The requester waits for the answer, which must not wait for the agent's own
            # stopping (nor fail with it): an async callback runs on after the answer.
            try:
                result = self._on_terminate(self.terminate_reason)
            except Exception:
                log.exception("on_terminate of run %s raised", self.id)
            else:
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    _callbacks.add(task)
                    task.add_done_callback(_callback_done)
        elif self._cancel_task and self._task is not None and not self._task.done():
            self._we_cancelled = True
            self._task.cancel(self.terminate_reason)
        return True, None

    # -- event building ----------------------------------------------------------------------

    def _fields(self, status: str) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "id": self.id,
            "agent_name": self.agent,
            "status": status or None,
            "project": self.project,
            "workflow": self.workflow,
            "schedule_id": self.schedule_id,
            "triggered_by": self.triggered_by,
            "message": fit_text(self.message, MAX_TEXT),
            "response": fit_text(self.response, MAX_TEXT),
            "started_at": self.started_at,
            "cost": self.cost,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "context_used": self.context_used,
            "context_max": self.context_max,
            "tool_calls": self.tool_calls,
            "execution_log": fit_text(self.execution_log, MAX_LOG),
            "engine": self.engine,
            "external_id": self.external_id,
            "parent_execution_id": self.parent_execution_id,
        }
        return fields

    async def _publish(self, type_: EventType, fields: dict[str, Any]) -> None:
        await _send(
            self.fleet,
            execution_event(
                type_, org=self.org, execution=fields, source=self.fleet.source_for(self.agent)
            ),
        )

    async def _publish_last(
        self, type_: EventType, fields: dict[str, Any], *, body_raised: bool
    ) -> None:
        """Publish the run's last event, so that its row never stays `running` for a value the
        code captured: `tool_calls` are the one field not checked as they are set (not JSON,
        or over the size limit), so a refused event goes out again without them. The refusal
        then reaches the code, unless the body's own exception is already on its way."""
        try:
            await self._publish(type_, fields)
        except InvalidEventError as refused:
            if fields.get("tool_calls") is None:
                raise
            await self._publish(type_, {**fields, "tool_calls": None})
            log.error(
                "execution %s: %s published without its tool_calls, which were refused: %s",
                self.id, type_.value, refused,
            )  # fmt: skip
            if not body_raised:
                raise InvalidEventError(
                    refused.event_id,
                    "execution.tool_calls",
                    refused.reason,
                    f"{refused.detail} (the run's {type_.value} went out without tool_calls)",
                ) from refused

    def _next_attempt(self, node_id: str) -> int:
        attempt = self._attempts.get(node_id, 0) + 1
        self._attempts[node_id] = attempt
        return attempt


class Step:
    """One step (`component_*` events) of a run; set `output` before it ends."""

    def __init__(
        self,
        run: Run,
        *,
        name: str,
        node_id: str,
        input: Any,
        retry_policy: RetryPolicy | None,
        max_attempts: int | None,
        attempt: int | None,
    ) -> None:
        self.run = run
        self.name = name
        self.node_id = node_id
        self.input = input
        self.output: Any = None
        self.retry_policy = retry_policy
        self.max_attempts = max_attempts
        self.attempt = attempt or 0
        #: The attempt the code named; without one, each entering counts the next.
        self._given_attempt = attempt
        self.started_at: datetime | None = None
        #: Why the step's events go out without `input` (not JSON, or past the size limit).
        self._input_refused: InvalidEventError | None = None

    async def __aenter__(self) -> Step:
        # A step object entered again (a retry loop around one `run.component(...)`) is the
        # next attempt: counted once only, the retry's events named attempt 1 again, whose
        # row had already ended `failed`, so the retry's success was never shown.
        if self._given_attempt:
            self.attempt = self._given_attempt
            self.run._attempts[self.node_id] = max(
                self.run._attempts.get(self.node_id, 0), self.attempt
            )
        else:
            self.attempt = self.run._next_attempt(self.node_id)
        self._input_refused = None
        self.started_at = now()
        try:
            await self._publish(EventType.COMPONENT_STARTED, self._fields())
        except InvalidEventError as refused:
            # Raised here, it skipped the step's body (and failed the run) for what was only
            # to be shown: the step goes on, its events without the input, as for `output`.
            if self.input is None:
                raise
            self._input_refused = refused
            await self._publish(EventType.COMPONENT_STARTED, self._fields())
            log.error(
                "step %s of execution %s: published without its input, which was refused: %s",
                self.node_id, self.run.id, refused,
            )  # fmt: skip
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        fields = self._fields()
        fields["completed_at"] = now()
        if _clean_exit(exc):
            fields["output"] = self.output
            await self._publish_completed(fields)
            refused = self._input_refused
            if refused is not None and exc is None:  # not over a `sys.exit()` on its way
                raise InvalidEventError(
                    refused.event_id,
                    "component.input",
                    refused.reason,
                    f"{refused.detail} (the step's events went out without its input)",
                ) from refused
        else:
            assert exc is not None
            fields["error"] = fit_text(_exception_text(exc), MAX_TEXT)
            fields["error_type"] = type(exc).__name__[:200]
            await self._publish(EventType.COMPONENT_FAILED, fields)
        return False

    async def _publish_completed(self, fields: dict[str, Any]) -> None:
        """`component_completed`, so that the step never stays `running` for its output: not
        checked as it is set (not JSON, or over the size limit), a refused output is left out
        of the event, which goes out again, and the refusal then reaches the code."""
        try:
            await self._publish(EventType.COMPONENT_COMPLETED, fields)
        except InvalidEventError as refused:
            if fields.get("output") is None:
                raise
            await self._publish(EventType.COMPONENT_COMPLETED, {**fields, "output": None})
            log.error(
                "step %s of execution %s: published without its output, which was refused: %s",
                self.node_id, self.run.id, refused,
            )  # fmt: skip
            raise InvalidEventError(
                refused.event_id,
                "component.output",
                refused.reason,
                f"{refused.detail} (the step's component_completed went out without its output)",
            ) from refused

    def _fields(self) -> dict[str, Any]:
        return {
            "execution_id": self.run.id,
            "node_id": self.node_id,
            "name": self.name,
            "attempt": self.attempt,
            "retry_policy": self.retry_policy.value if self.retry_policy else None,
            "max_attempts": self.max_attempts,
            "input": self.input if self._input_refused is None else None,
            "started_at": self.started_at,
        }

    async def _publish(self, type_: EventType, fields: dict[str, Any]) -> None:
        run = self.run
        await _send(
            run.fleet,
            component_event(
                type_,
                org=run.org,
                agent=run.agent,
                component=fields,
                source=run.fleet.source_for(run.agent),
            ),
        )
