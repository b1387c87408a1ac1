"""Many observations into one Prometheus histogram at once.

`Histogram.observe` takes a lock for the sum and another for the bucket on every call; ingest
observes each finished execution's cost and duration, a thousand times per batch for the same
few label sets. `observe_all` counts the amounts per bucket first and adds each count once,
so the exposition is the same as calling `observe` per amount.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import Histogram


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`histogram.observe(a)` for every `a` in `amounts` (a labelled child or a plain one)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        # Another prometheus_client layout: the public path, one call per amount.
        for amount in amounts:
            histogram.observe(amount)
        return
    counts = [0] * len(bounds)
    summed = 0.0
    for amount in amounts:
        summed += amount
        # The first bucket whose upper bound is >= amount, as observe() picks it; the last
        # bound is +Inf. NaN falls in no bucket there, so here too.
        if amount == amount:
            counts[bisect_left(bounds, amount)] += 1
    if amounts:
        total.inc(summed)
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
