"""Stop asking an engine that keeps failing, for the rest of one pass (pure).

A blackholed engine makes each lookup wait out every attempt's timeout (by default 3 attempts
of 5 s): at 10,000 open rows that is most of an hour per pass, and no correction for any
engine is published until the pass ends. After `threshold` lookups in a row failed, the engine's
remaining lookups of the pass are reported as engine errors without being made.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Breaker:
    #: Consecutive failures that open it (0: never opens).
    threshold: int
    failures: int = 0
    last_error: str | None = None

    def record(self, error: str | None) -> None:
        """Note one lookup's outcome (None: it succeeded, which closes the count again)."""
        if error is None:
            self.failures = 0
            return
        self.failures += 1
        self.last_error = error

    @property
    def open(self) -> bool:
        return 0 < self.threshold <= self.failures

    def reason(self, engine: str) -> str:
        return (
            f"not asked: {engine} failed {self.failures} lookups in a row this pass "
            f"(last: {self.last_error})"
        )
