"""Workflows and activities the Temporal tests run (a module of their own: the sandbox re-imports).

`Completing` retries a charge twice before it succeeds; `Failing` exhausts its retries and
fails; `Waiting` finishes one step and then waits for a signal, so it stays running.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

FAST_RETRY = {"initial_interval": timedelta(milliseconds=50), "backoff_coefficient": 1.0}


@activity.defn
async def greet(name: str) -> str:
    return f"hello {name}"


@activity.defn
async def charge(amount: int) -> dict[str, int]:
    attempt = activity.info().attempt
    if attempt < 3:
        raise ApplicationError(f"declined on attempt {attempt}", type="CardDeclined")
    return {"charged": amount}


@activity.defn
async def call_upstream(url: str) -> str:
    raise ApplicationError(f"upstream {url} down", type="UpstreamError")


@workflow.defn
class Completing:
    @workflow.run
    async def run(self, name: str) -> str:
        greeting = await workflow.execute_activity(
            greet, name, start_to_close_timeout=timedelta(seconds=10)
        )
        await workflow.execute_activity(
            charge,
            42,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=5, **FAST_RETRY),  # type: ignore[arg-type]
        )
        return greeting


@workflow.defn
class Failing:
    @workflow.run
    async def run(self, url: str) -> str:
        return await workflow.execute_activity(
            call_upstream,
            url,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(
                maximum_attempts=3,
                initial_interval=timedelta(milliseconds=50),
                backoff_coefficient=2.0,
            ),
        )


@activity.defn
async def poll_forever(target: str) -> str:
    raise ApplicationError(f"{target} not ready", type="NotReady")


@workflow.defn
class Retrying:
    """Keeps retrying one activity without limit: the activity stays pending, with attempts."""

    @workflow.run
    async def run(self, target: str) -> str:
        return await workflow.execute_activity(
            poll_forever,
            target,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(
                maximum_attempts=0,
                initial_interval=timedelta(milliseconds=100),
                maximum_interval=timedelta(milliseconds=200),
            ),
        )


@workflow.defn
class Waiting:
    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self, name: str) -> str:
        await workflow.execute_activity(greet, name, start_to_close_timeout=timedelta(seconds=10))
        await workflow.wait_condition(lambda: self._done)
        return "finished"

    @workflow.signal
    def finish(self) -> None:
        self._done = True


WORKFLOWS = [Completing, Failing, Waiting, Retrying]
ACTIVITIES: list[Callable[..., Any]] = [greet, charge, call_upstream, poll_forever]
