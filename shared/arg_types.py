"""argparse types shared by the commands: each refuses, with the value quoted, what plain
`int` / `float` let through (a negative count, inf, nan, a name the contract refuses)."""

from __future__ import annotations

import argparse
import math

from shared.events import is_valid_name

#: Most demo runs per second: more only spins the demo publisher.
MAX_DEMO_RATE = 1000.0


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def demo_rate(text: str) -> float:
    """The demo waits an exponential time of mean 1/rate between runs, so a rate must be a
    finite number from 0 (history only: no live runs) to MAX_DEMO_RATE (`float` alone takes
    inf, nan and -1, and 1e300 would spin the publisher)."""
    value = _number(text)
    if not (math.isfinite(value) and 0 <= value <= MAX_DEMO_RATE):
        raise argparse.ArgumentTypeError(
            f"must be a number from 0 (history only) to {MAX_DEMO_RATE:g}, not {text!r}"
        )
    return value


def positive(text: str) -> float:
    """A finite number > 0 (a duration, a divisor)."""
    value = _number(text)
    if not (math.isfinite(value) and value > 0):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds >= 0."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, not {text!r}")
    return value


def count(text: str) -> int:
    """A whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text!r}")
    return value


def names(text: str) -> list[str]:
    """A comma-separated list of org or agent names, at least one, each as the event contract
    allows (`[A-Za-z0-9_-]{1,64}`): a name it refuses would make every event dead-lettered."""
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one name")
    for value in values:
        if not is_valid_name(value):
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a valid name (letters, digits, '_' and '-', 1 to 64)"
            )
    return values
