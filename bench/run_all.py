"""`make bench`: run every benchmark in turn (pass --quick for the small versions).

Full runs write bench/results/; quick ones test-artifacts/bench-quick/.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ["ingest", "ingest_cpu", "query_api", "notifier_fanout", "publish", "reconcile_http"]


def main() -> int:
    extra = sys.argv[1:]
    failed = []
    for name in BENCHMARKS:
        print(f"\n=== bench.{name} {' '.join(extra)}", flush=True)
        if subprocess.call([sys.executable, "-m", f"bench.{name}", *extra]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
