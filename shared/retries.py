"""Retry classes of DESIGN.md: a retry is expected while the step's policy still allows it."""

from __future__ import annotations

from typing import Literal

from shared.events import RetryPolicy

RetryClass = Literal["expected", "unexpected"]


def classify_retry(
    retry_policy: RetryPolicy | str | None, attempt: int, max_attempts: int | None
) -> RetryClass | None:
    """None for a first attempt; "expected" when a policy allows this attempt, else "unexpected".

    `max_attempts` of 0 or None under a policy other than `none` means unlimited.
    """
    if attempt <= 1:
        return None
    if retry_policy is None:
        return "unexpected"
    policy = RetryPolicy(retry_policy)
    if policy is RetryPolicy.NONE:
        return "unexpected"
    if policy is RetryPolicy.FOREVER or not max_attempts:
        return "expected"
    return "expected" if attempt <= max_attempts else "unexpected"
