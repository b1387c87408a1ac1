"""observe_all gives the same exposition as one observe() per amount."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from services.ingest.bulk_observe import observe_all

BUCKETS = (0.001, 0.01, 1, 5, 60)


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    one, bulk = CollectorRegistry(), CollectorRegistry()
    kwargs = {"buckets": BUCKETS, "labelnames": ["org"]}
    return (
        one,
        Histogram("h", "test", registry=one, **kwargs),  # type: ignore[arg-type]
        bulk,
        Histogram("h", "test", registry=bulk, **kwargs),  # type: ignore[arg-type]
    )


def _exposition(registry: CollectorRegistry) -> list[str]:
    # The _created sample is the time the child was made; it differs between the two.
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


amounts = st.lists(
    st.one_of(
        st.sampled_from([*BUCKETS, 0.0, -1.0, math.inf]),
        st.floats(min_value=-10, max_value=1e6, allow_nan=False),
    ),
    max_size=50,
)


@given(amounts)
def test_same_buckets_count_and_sum_as_observe(values: list[float]) -> None:
    one, h_one, bulk, h_bulk = _pair()
    child = h_one.labels("acme")
    for value in values:
        child.observe(value)
    observe_all(h_bulk.labels("acme"), values)
    assert _exposition(bulk) == _exposition(one)


def test_amounts_on_a_bound_fall_in_that_bucket() -> None:
    _, _, bulk, h_bulk = _pair()
    observe_all(h_bulk.labels("acme"), [1.0, 1.0, 5.0, 61.0])
    text = _exposition(bulk)
    assert 'h_bucket{le="0.01",org="acme"} 0.0' in text
    assert 'h_bucket{le="1.0",org="acme"} 2.0' in text
    assert 'h_bucket{le="5.0",org="acme"} 3.0' in text
    assert 'h_bucket{le="60.0",org="acme"} 3.0' in text
    assert 'h_bucket{le="+Inf",org="acme"} 4.0' in text
    assert 'h_sum{org="acme"} 68.0' in text


def test_an_unknown_histogram_layout_falls_back_to_observe() -> None:
    seen: list[float] = []

    class Other:
        def observe(self, amount: float) -> None:
            seen.append(amount)

    observe_all(Other(), [1.0, 2.0])  # type: ignore[arg-type]
    assert seen == [1.0, 2.0]
