"""Ending asyncio tasks without losing a cancel of the task that ends them."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> BaseException | None:
    """Cancel `task` and wait until it has ended; returns the error it ended with, if any
    (its own cancel is none). Unlike `with suppress(CancelledError): await task`, which
    also swallows a cancel of the caller, a caller told to stop meanwhile still raises
    CancelledError, and `task` is left to finish its clean-up."""
    task.cancel()
    await asyncio.wait({task})
    if task.cancelled():
        return None
    return task.exception()
