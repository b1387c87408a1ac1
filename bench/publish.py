"""Publisher benchmark: client-side overhead per event, and sustained publish rate from one
process against raw nats-py JetStream publishing of the same payloads, in the same run.

    .venv/bin/python -m bench.publish [--quick] [--nats-url URL] [--out FILE]

Writes bench/results/publish.json (`--quick`: test-artifacts/bench-quick/publish.json).

Without `--nats-url` it starts its own nats-server (the venv's) on a free port with a
temporary store, so other work on the machine's shared NATS neither disturbs nor is disturbed.
Raw and publisher rounds alternate and the medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats

from bench.common import results_dir
from shared.events import EventType
from shared.publisher import Fleet
from shared.publisher.envelope import MSG_ID_HEADER, OutgoingEvent, encode, execution_event
from shared.settings import CommonSettings
from shared.streams import ensure_streams
from shared.subjects import Subjects

CHUNK = 256
ORG = "bench"
AGENT = "bench-agent"


def event(i: int, round_tag: str) -> dict[str, Any]:
    """A typical `execution_completed` (about 600 bytes)."""
    return execution_event(
        EventType.EXECUTION_COMPLETED,
        org=ORG,
        event_id=f"{round_tag}-{i}",
        execution={
            "id": f"run-{round_tag}-{i}",
            "agent_name": AGENT,
            "status": "success",
            "project": "billing",
            "triggered_by": "schedule",
            "message": "Process the invoices received today",
            "response": "Processed 14 invoices; 2 need a human look (amount mismatch).",
            "started_at": "2026-02-05T10:00:00Z",
            "completed_at": "2026-02-05T10:00:45Z",
            "duration_ms": 45000,
            "cost": 0.0213,
            "tokens_in": 5120,
            "tokens_out": 830,
            "tool_calls": ["mcp:postgres.query", "mcp:gdrive.read_file"],
        },
        source=f"agent:{AGENT}",
    )


class _NoNetworkFleet(Fleet):
    """A Fleet whose sends cost nothing: what remains is the client's own work."""

    async def _deliver(self, event: OutgoingEvent) -> bool:
        return True


def overhead_us(n: int) -> dict[str, float]:
    """Client-side microseconds per event, without the network."""
    start = time.perf_counter()
    for i in range(n):
        encode(event(i, "o"))
    build = (time.perf_counter() - start) / n * 1e6

    async def runs() -> float:
        fleet = _NoNetworkFleet(org=ORG)
        began = time.perf_counter()
        for _ in range(n // 2):
            async with fleet.execution(AGENT, message="m", triggered_by="schedule") as run:
                run.set(response="r", cost=0.01, tokens_in=10, tokens_out=5)
        return (time.perf_counter() - began) / n * 1e6  # two events per run

    return {
        "envelope_build_encode_us": round(build, 2),
        "run_context_us": round(asyncio.run(runs()), 2),
    }


async def _timed(
    n: int, publish: Callable[[int], Awaitable[Any]], pipelined: bool
) -> tuple[float, float]:
    """Messages per second (wall clock) and this process's CPU microseconds per message."""
    began, cpu = time.perf_counter(), time.process_time()
    if pipelined:
        for start in range(0, n, CHUNK):
            await asyncio.gather(*(publish(i) for i in range(start, min(n, start + CHUNK))))
    else:
        for i in range(n):
            await publish(i)
    wall = time.perf_counter() - began
    return n / wall, (time.process_time() - cpu) / n * 1e6


async def rates(nats_url: str, n: int, rounds: int) -> dict[str, Any]:
    subjects = Subjects(f"bench{os.getpid()}")
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, CommonSettings(subject_prefix=subjects.prefix))
    fleet = Fleet(nats_url, org=ORG, subjects=subjects)
    await fleet.start()
    subject = subjects.event(ORG, AGENT, EventType.EXECUTION_COMPLETED)
    results: dict[str, Any] = {}
    try:
        for mode in ("sequential", "pipelined"):
            raw_runs: list[tuple[float, float]] = []
            pub_runs: list[tuple[float, float]] = []
            for r in range(rounds):
                tag = f"{mode}-{r}"
                payloads = [encode(event(i, f"raw-{tag}")) for i in range(n)]

                async def raw(i: int, payloads: list[bytes] = payloads, tag: str = tag) -> None:
                    await js.publish(
                        subject, payloads[i], headers={MSG_ID_HEADER: f"raw-{tag}-{i}"}
                    )

                # The publisher builds and encodes each envelope itself: that is its cost.
                async def pub(i: int, tag: str = tag) -> None:
                    await fleet.publish(event(i, f"pub-{tag}"))

                # Alternate who goes first, so a drift of the machine's load favours neither.
                pipelined = mode == "pipelined"
                if r % 2:
                    pub_runs.append(await _timed(n, pub, pipelined))
                    raw_runs.append(await _timed(n, raw, pipelined))
                else:
                    raw_runs.append(await _timed(n, raw, pipelined))
                    pub_runs.append(await _timed(n, pub, pipelined))
            ratios = [p[0] / q[0] for p, q in zip(pub_runs, raw_runs, strict=True)]
            raw_cpu = statistics.median(q[1] for q in raw_runs)
            pub_cpu = statistics.median(p[1] for p in pub_runs)
            results[mode] = {
                "raw_nats_py_msgs_per_s": round(statistics.median(q[0] for q in raw_runs)),
                "publisher_msgs_per_s": round(statistics.median(p[0] for p in pub_runs)),
                "ratio_median_of_rounds": round(statistics.median(ratios), 3),
                "ratios": [round(x, 3) for x in ratios],
                "raw_cpu_us_per_msg": round(raw_cpu, 1),
                "publisher_cpu_us_per_msg": round(pub_cpu, 1),
                # When one core is the limit, throughput follows CPU per message.
                "cpu_bound_ratio": round(raw_cpu / pub_cpu, 3),
            }
        info = await js.stream_info(subjects.events_stream)
        results["stored"] = info.state.messages
        results["expected_stored"] = 2 * 2 * rounds * n
    finally:
        await fleet.close()
        await js.delete_stream(subjects.events_stream)
        await js.delete_stream(subjects.dlq_stream)
        await nc.close()
    return results


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_nats(store: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    binary = str(Path(sys.executable).parent / "nats-server")
    proc = subprocess.Popen(
        [binary, "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"nats://127.0.0.1:{port}"
        time.sleep(0.02)
    proc.kill()
    raise TimeoutError("nats-server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="publisher vs raw nats-py JetStream publish")
    parser.add_argument("--quick", action="store_true", help="fewer events and rounds")
    parser.add_argument("--nats-url", help="default: start an own nats-server")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.out = args.out or results_dir(args.quick) / "publish.json"
    n, rounds = (2000, 4) if args.quick else (5000, 8)
    proc = None
    with tempfile.TemporaryDirectory() as store:
        nats_url = args.nats_url
        if nats_url is None:
            proc, nats_url = _start_nats(store)
        try:
            measured = asyncio.run(rates(nats_url, n, rounds))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    report = {
        "command": "python -m bench.publish" + (" --quick" if args.quick else ""),
        "events_per_round": n,
        "rounds": rounds,
        "pipeline_chunk": CHUNK,
        "nats": "own nats-server (venv), file store" if args.nats_url is None else args.nats_url,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "client_overhead": overhead_us(n),
        **measured,
        "goal": "publisher >= 0.8 x raw nats-py, same payloads, same run",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
