"""Workflows of the Temporal adapter review tests (a module of their own: the sandbox
re-imports). `Busy` runs many activities at once and then fails, so its history is long."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from tests.reconciler.temporal_workflows import greet

#: Activities `Busy` runs: ~3 history events each.
BUSY_ACTIVITIES = 100


@workflow.defn
class Busy:
    @workflow.run
    async def run(self, name: str) -> str:
        await asyncio.gather(
            *(
                workflow.execute_activity(
                    greet, f"{name}-{i}", start_to_close_timeout=timedelta(seconds=10)
                )
                for i in range(BUSY_ACTIVITIES)
            )
        )
        raise ApplicationError(f"{name}: gave up after the batch", type="BatchFailed")
