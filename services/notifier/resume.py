"""Where a reconnecting client's replay starts and ends, decided from the stream's bounds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UpToDate:
    """Nothing was missed: go live at once."""


@dataclass(frozen=True, slots=True)
class Replay:
    """Send stream sequences `first..last` (inclusive) from the stream, then go live."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Resync:
    """Part of what was missed is past retention (or the stream was recreated): the client must
    reload its state from the query API; live events follow."""

    reason: str
    first_seq: int
    last_seq: int


ResumePlan = UpToDate | Replay | Resync


def plan_resume(
    resume_from: int, *, stream_first: int, stream_last: int, live_seq: int
) -> ResumePlan:
    """`resume_from` is the last seq the client saw; `live_seq` the last one fan-out has passed.

    Events after `live_seq` reach the client through live fan-out (held while replay runs), so
    replay covers exactly `resume_from+1 .. live_seq`: no gap, no overlap.
    """
    if resume_from > stream_last:
        # The client saw a sequence this stream never had: it was purged or recreated.
        return Resync("unknown_sequence", stream_first, stream_last)
    if resume_from >= live_seq:
        return UpToDate()
    # An empty stream reports first_seq = last_seq + 1, so this also covers "all expired".
    if stream_first > resume_from + 1:
        return Resync("past_retention", stream_first, stream_last)
    return Replay(first=resume_from + 1, last=live_seq)
