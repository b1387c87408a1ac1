"""How much bench/ingest.py's old watcher cost the ingest it timed: an A/B in the same run.

bench/ingest.py ends its timed window when the last published events are stored. Its watcher
used to poll `org = ANY(orgs) AND event_id = ANY(last 200 ids)` every 20 ms: every org with
every id, 600 index probes a poll, on the table ingest was writing. It now probes the last 50
events by their own (org, event_id). Each round here runs one raw COPY, then two ingest
replicas (the Kubernetes base's shape) once with each probe, in alternating order, and
reports each against the round's COPY, with the Postgres and Python CPU per event.

Run: .venv/bin/python -m bench.ingest_watcher_ab [--rounds 4]
(needs bench/ingest.py's preloaded database: run that once first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import uuid
from typing import Any

import nats

import bench.ingest as bi
from bench.common import write_result
from shared.db import connect
from tests.chaos.infra import own_nats

#: The watcher's old probe and how many of the last events it named.
OLD_PROBE = (
    "SELECT count(*) FROM events WHERE org = ANY($1::text[]) AND event_id = ANY($2::text[])",
    200,
)
NEW_PROBE = (bi.TAIL_SQL, bi.TAIL_PROBES)
N = 50_000


async def _rounds(rounds: int) -> dict[str, Any]:
    async with own_nats() as server:
        os.environ["NATS_URL"] = server.url  # the ingest processes inherit it
        bi.NATS_PORT = server.port
        url = await bi.ensure_preloaded(bi.db_name(False), bi.PRELOAD_ROWS, reuse=True)
        conn = await connect(url)
        await bi.quiet_tables(conn)
        table_rows = await conn.fetchval("SELECT count(*) FROM executions")
        await conn.close()
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        run = uuid.uuid4().hex[:6]
        each: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        try:
            for r in range(rounds):
                await bi.checkpoint(url)
                copy_rate, _, _ = await bi.measure_copy(url, N, f"wab{run}r{r}")
                for probe in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    bi.TAIL_SQL, bi.TAIL_PROBES = OLD_PROBE if probe == "old" else NEW_PROBE
                    await bi.checkpoint(url)
                    m = await bi.measure_ingest(
                        url,
                        js,
                        bi.one_per_row(f"w{probe}{run}r{r}", N),
                        N,
                        [],
                        2,
                        bi.replica_settings(),
                    )
                    each[probe].append(
                        {
                            "copy_rows_per_s": round(copy_rate, 1),
                            "rows_per_s": m["rows_per_s"],
                            "ratio": round(m["rows_per_s"] / copy_rate, 3),
                            "postgres_cpu_us_per_event": m["postgres_cpu_us_per_event"],
                            "ingest_cpu_us_per_event": m["ingest_cpu_us_per_event"],
                        }
                    )
                    print(f"round {r + 1}, {probe} probe: {each[probe][-1]}", flush=True)
        finally:
            bi.TAIL_SQL, bi.TAIL_PROBES = NEW_PROBE
            await nc.close()
            conn = await connect(url)
            await bi.quiet_tables(conn, quiet=False)
            await conn.close()
    return {
        "table_rows_before": table_rows,
        "rounds": rounds,
        "each_round": each,
        **{
            f"{probe}_probe_ratio_paired_median": statistics.median(x["ratio"] for x in runs)
            for probe, runs in each.items()
        },
        **{
            f"{probe}_probe_postgres_cpu_us_per_event_median": statistics.median(
                x["postgres_cpu_us_per_event"] for x in runs
            )
            for probe, runs in each.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    result = asyncio.run(_rounds(args.rounds))
    for probe in ("old", "new"):
        print(
            f"{probe} probe: two replicas / COPY, paired median "
            f"{result[f'{probe}_probe_ratio_paired_median']}; Postgres CPU per event "
            f"{result[f'{probe}_probe_postgres_cpu_us_per_event_median']} µs"
        )
    print(f"written to {write_result('ingest_watcher_ab', result, False)}")


if __name__ == "__main__":
    main()
