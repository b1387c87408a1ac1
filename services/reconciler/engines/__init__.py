"""What the reconciler needs from an engine: list runs in a window, get one run by its id."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from shared.events import RetryPolicy, Status
from shared.retries import RetryClass, classify_retry


class EngineError(Exception):
    """The engine could not answer (unreachable, 5xx, timeout, a payload we cannot read)."""


@dataclass(frozen=True, slots=True)
class EngineStep:
    """One attempt of one step (a Temporal activity), as the engine's history shows it."""

    node_id: str
    name: str
    attempt: int
    status: Status
    retry_policy: RetryPolicy | None = None
    max_attempts: int | None = None
    input: object = None
    output: object = None
    error: str | None = None
    error_type: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def retry_class(self) -> RetryClass | None:
        return classify_retry(self.retry_policy, self.attempt, self.max_attempts)


@dataclass(frozen=True, slots=True)
class EngineRun:
    """A run as its engine reports it; `org`/`agent_name`/`execution_id` when the engine knows."""

    engine: str
    external_id: str
    status: Status
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    error_type: str | None = None
    org: str | None = None
    agent_name: str | None = None
    execution_id: str | None = None
    steps: tuple[EngineStep, ...] = field(default=())


class Engine(Protocol):
    """An engine adapter. `get_run` answers None when the engine has no such run."""

    @property
    def name(self) -> str: ...

    @property
    def lists_runs(self) -> bool:
        """Whether `list_runs` can list anything (an engine asked about single runs only
        answers an empty listing)."""
        ...

    async def list_runs(self, since: datetime, until: datetime) -> list[EngineRun]: ...

    async def get_run(self, external_id: str, *, with_steps: bool = False) -> EngineRun | None: ...

    async def close(self) -> None: ...
