"""pydantic's string cache on ingest's validation: the events' own setting against the default.

`shared/events.py` validates with `cache_strings="keys"`. pydantic's default (`"all"`) also
puts every string value of up to 64 characters through a fixed-size cache; an event's values
are mostly unique (ids, messages, times), so nearly every look-up misses and replaces an
entry. This validates the same distinct events (as bench/ingest.py publishes them) in batches
of 2,000, once with each setting, in alternating order, and reports the medians in µs per
event and their ratio. CPU only: no NATS, no database.

Run: .venv/bin/python -m bench.validation_strings [--rounds 20] [--batch-size 2000]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any, Literal

from pydantic import ConfigDict

from bench.common import write_result
from bench.ingest import one_per_row
from shared.events import Event
from shared.gc_tuning import tune_for_throughput

CacheStrings = Literal["keys", "all"]
#: The settings compared; the first is the events' own (what ingest runs).
SETTINGS: tuple[CacheStrings, CacheStrings] = ("keys", "all")


def _variant(setting: CacheStrings) -> type[Event]:
    config = ConfigDict(cache_strings=setting)
    return type(f"EventCaching_{setting}", (Event,), {"model_config": config})


def main(rounds: int, batch_size: int) -> dict[str, Any]:
    assert Event.model_config.get("cache_strings") == SETTINGS[0], "events' setting changed"
    variants = {setting: _variant(setting) for setting in SETTINGS}
    events = one_per_row("strings", batch_size * rounds)
    wire = [e.model_dump_json(exclude_none=True).encode() for e in events]
    del events
    tune_for_throughput()  # as the ingest service does
    spent: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    for r in range(rounds):
        batch = wire[r * batch_size : (r + 1) * batch_size]
        for setting in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
            cls = variants[setting]
            gc.collect()
            began = time.perf_counter()
            kept = [cls.model_validate_json(data) for data in batch]
            spent[setting].append((time.perf_counter() - began) / len(batch) * 1e6)
            assert len(kept) == len(batch)
            del kept
    medians = {s: round(statistics.median(v), 2) for s, v in spent.items()}
    result = {
        "batch_size": batch_size,
        "rounds": rounds,
        "us_per_event_median": medians,
        "keys_over_all": round(medians["keys"] / medians["all"], 3),
        "each_round": {s: [round(x, 2) for x in v] for s, v in spent.items()},
    }
    print(
        f"µs per event (median of {rounds}): keys {medians['keys']}, all {medians['all']} "
        f"= {result['keys_over_all']} x"
    )
    print(f"written to {write_result('validation_strings', result)}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2000)
    args = parser.parse_args()
    main(args.rounds, args.batch_size)
