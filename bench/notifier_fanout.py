"""Fan-out benchmark: 1,000 WebSocket clients at 20 events/s, notifier vs raw `websockets`.

Both servers are separate processes fed by the same NATS subject (the raw one by a core
subscription that broadcasts each message unchanged with `websockets.broadcast`). The clients
run in `--workers` processes (default 2, on uvloop) for every phase, so the client side is not
what gets measured; the publisher is the main process. Publish and receipt times are both
CLOCK_MONOTONIC, one clock for every process on the machine. The clients speak just enough
WebSocket to time a frame (server frames are unmasked; pings are answered). Raw and notifier
phases take turns over `--rounds` (3; `--quick` 1), each going first every other round; the
ratios are the medians of each round's.

    .venv/bin/python -m bench.notifier_fanout            # full: 1,000 clients, 15 s phases
    .venv/bin/python -m bench.notifier_fanout --quick    # 200 clients, 5 s phases

Writes bench/results/notifier_fanout.json (`--quick`: test-artifacts/bench-quick/).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import httpx
import nats
import orjson

from bench.common import results_dir
from shared.auth import mint_token
from shared.settings import DEFAULT_DATABASE_URL, DEFAULT_NATS_URL

SECRET = "bench-secret-0123456789-0123456789-abcdef"
EVENT_ID = b'"event_id":"'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receipts:
    """Every (client, event) receipt of one phase in one worker: event id and time."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, int]] = []

    def received(self, payload: bytes, now: int) -> None:
        at = payload.find(EVENT_ID)
        if at < 0:
            return
        start = at + len(EVENT_ID)
        self.got.append((payload[start : payload.index(b'"', start)], now))


class MiniClient(asyncio.Protocol):
    """A bare WebSocket client: handshake, unmasked server frames, pong on ping, nothing else."""

    def __init__(self, path: str, receipts: Receipts) -> None:
        self.path = path
        self.receipts = receipts
        self.buf = bytearray()
        self.open = asyncio.get_running_loop().create_future()
        self.closed_code: int | None = None
        self.transport: asyncio.Transport | None = None
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but are one.
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.open.set_exception(RuntimeError(bytes(self.buf[:80]).decode()))
                return
            del self.buf[: end + 4]
            self.upgraded = True
            self.open.set_result(None)
        buf = self.buf
        while len(buf) >= 2:
            opcode, size, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, at = struct.unpack_from("!H", buf, 2)[0], 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < at + size:
                return
            payload = bytes(buf[at : at + size])
            del buf[: at + size]
            if opcode == 1:
                self.receipts.received(payload, now)
            elif opcode == 9:
                self._send(0xA, payload)
            elif opcode == 8:
                self.closed_code = (
                    struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                )
                assert self.transport is not None
                self.transport.close()

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(ConnectionError("lost before upgrade"))


async def connect_clients(
    port: int, path: str, n: int, receipts: Receipts, rcvbuf: int = 0
) -> list[MiniClient]:
    loop = asyncio.get_running_loop()
    clients: list[MiniClient] = []

    async def one() -> MiniClient:
        sock = socket.socket()
        if rcvbuf:
            # Set before connecting, so the advertised window stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        _, proto = await loop.create_connection(lambda: MiniClient(path, receipts), sock=sock)
        await asyncio.wait_for(proto.open, 30)
        return proto

    for start in range(0, n, 100):
        clients += await asyncio.gather(*(one() for _ in range(min(100, n - start))))
    return clients


async def worker_async(pipe: Connection) -> None:
    """One client process: connect a phase's clients, hand back their receipts, repeat."""
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, pipe.recv)
        if cmd[0] == "exit":
            return
        _, port, path, n, stuck = cmd
        receipts = Receipts()
        clients = await connect_clients(port, path, n, receipts)
        slow: list[MiniClient] = []
        if stuck:
            # Clients that stop reading at once: their buffers fill until the notifier cuts them.
            slow = await connect_clients(port, path, stuck, Receipts(), rcvbuf=4096)
            for c in slow:
                assert c.transport is not None
                c.transport.pause_reading()
        pipe.send(("ready",))
        await loop.run_in_executor(None, pipe.recv)  # "collect"
        got, receipts.got = receipts.got, []
        for c in clients + slow:
            if c.transport is not None:
                c.transport.abort()
        pipe.send(("receipts", got))


def worker_main(pipe: Connection) -> None:
    import uvloop

    uvloop.install()
    asyncio.run(worker_async(pipe))


class Workers:
    """The client processes; a phase's clients (and stuck clients) are split among them."""

    def __init__(self, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs = []
        for _ in range(n):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(theirs,), daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)

    async def _ask(self, msgs: list[tuple[Any, ...]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        for pipe, msg in zip(self.pipes, msgs, strict=True):
            pipe.send(msg)
        return list(await asyncio.gather(*(loop.run_in_executor(None, p.recv) for p in self.pipes)))

    async def connect(self, port: int, path: str, n: int, stuck: int) -> None:
        k = len(self.pipes)
        await self._ask(
            [
                ("phase", port, path, n // k + (i < n % k), stuck // k + (i < stuck % k))
                for i in range(k)
            ]
        )

    async def collect(self) -> list[tuple[bytes, int]]:
        got: list[tuple[bytes, int]] = []
        for reply in await self._ask([("collect",)] * len(self.pipes)):
            got += reply[1]
        return got

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit",))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()


async def slow_disconnects(port: int) -> int:
    """The notifier's own count of clients it closed with 4008."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("notifier_slow_client_disconnects_total{")
        )
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_http(port: int, path: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(400):
            try:
                if (await http.get(f"http://127.0.0.1:{port}{path}")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"server on {port} not ready")


async def publish_phase(
    js: Any,
    prefix: str,
    published: dict[bytes, int],
    rate: float,
    seconds: float,
    sample: Callable[[], None] = lambda: None,
) -> int:
    """Publish `rate` events/s for `seconds`; each event's publish time keyed by its id.
    `sample` runs after each publish (the server's RSS, taken throughout the phase)."""
    period = 1.0 / rate
    total = int(rate * seconds)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(total):
        await asyncio.sleep(max(0.0, t0 + i * period - loop.time()))
        event_id = uuid.uuid4().hex
        event = {
            "type": "execution_started",
            "event_id": event_id,
            "occurred_at": "2026-02-05T10:00:00Z",
            "org": "bench",
            "execution": {
                "id": f"x{i}",
                "agent_name": "a1",
                "triggered_by": "schedule",
                # Sized like the notifier's summary, so both servers send alike bytes.
                "message": "m" * 200,
            },
        }
        published[event_id.encode()] = time.monotonic_ns()
        await js.publish(f"{prefix}.events.bench.a1.execution_started", orjson.dumps(event))
        sample()
    await asyncio.sleep(1.0)  # let the last deliveries land
    return total


def by_second(pairs: list[tuple[int, int]], t0: int) -> list[float]:
    """p99 (ms) of the deliveries of the events published in each second: where spikes are."""
    buckets: dict[int, list[int]] = {}
    for sent, lat in pairs:
        buckets.setdefault((sent - t0) // 1_000_000_000, []).append(lat)
    out = []
    for sec in sorted(buckets):
        ordered = sorted(buckets[sec])
        out.append(round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1e6, 1))
    return out


def percentiles(latencies_ns: list[int]) -> dict[str, float]:
    if not latencies_ns:
        return {
            "p50_ms": float("nan"),
            "p99_ms": float("nan"),
            "max_ms": float("nan"),
            "samples": 0,
        }
    ordered = sorted(latencies_ns)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    return {
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1] / 1e6,
        "samples": len(ordered),
    }


async def run_raw_server(port: int, prefix: str, nats_url: str) -> None:
    """Baseline: the same NATS messages, broadcast unchanged to every client."""
    from websockets.asyncio.server import broadcast, serve

    async def handler(conn: Any) -> None:
        await conn.wait_closed()

    def health(conn: Any, request: Any) -> Any:
        return conn.respond(200, "ok\n") if request.path == "/healthz" else None

    async with serve(
        handler, "127.0.0.1", port, compression=None, process_request=health
    ) as server:
        nc = await nats.connect(nats_url)

        async def on_msg(msg: Any) -> None:
            broadcast(server.connections, msg.data.decode())

        await nc.subscribe(f"{prefix}.events.>", cb=on_msg)
        await asyncio.Future()


async def phase(
    name: str,
    port: int,
    path: str,
    n: int,
    js: Any,
    prefix: str,
    args: argparse.Namespace,
    pid: int,
    workers: Workers,
    stuck: int = 0,
) -> dict[str, Any]:
    await workers.connect(port, path, n, stuck)
    await asyncio.sleep(1.0)  # past the notifier's hello window
    # Sampled throughout, not just at both ends: the stuck clients' buffers peak mid-phase,
    # until the notifier cuts them off.
    rss = [rss_mb(pid)]
    cpu_before = cpu_s(pid)
    published: dict[bytes, int] = {}
    t0 = time.monotonic_ns()
    sent = await publish_phase(
        js,
        prefix,
        published,
        args.rate,
        args.seconds + (10 if stuck else 0),
        lambda: rss.append(rss_mb(pid)),
    )
    rss.append(rss_mb(pid))
    cpu_used = cpu_s(pid) - cpu_before
    # Deliveries later than 1 s after the last publish are not counted.
    pairs = []
    for event_id, now in await workers.collect():
        at = published.get(event_id)
        if at is not None:
            pairs.append((at, now - at))
    row = {
        "phase": name,
        "clients": n,
        "stuck_clients": stuck,
        "events": sent,
        "expected_deliveries": sent * n,
        **percentiles([lat for _, lat in pairs]),
        "p99_ms_by_second": by_second(pairs, t0),
        "server_rss_mb": round(max(rss), 1),
        # Load-independent: what the server spent, per event published.
        "server_cpu_ms_per_event": round(1000 * cpu_used / sent, 2),
        "slow_disconnects": await slow_disconnects(port) if stuck else 0,
    }
    await asyncio.sleep(0.5)
    return row


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    nats_url = os.environ.get("NATS_URL", DEFAULT_NATS_URL)
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        "FLEETWATCH_SUBJECT_PREFIX": prefix,
        "FLEETWATCH_JWT_SECRET": SECRET,
        "FLEETWATCH_LOG_LEVEL": "WARNING",
    }
    raw_port, notifier_port = _free_port(), _free_port()
    # Popen returns at once; readiness is awaited below.
    raw = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "bench.notifier_fanout", "--raw-server", str(raw_port), prefix],
        env=env,
    )
    notifier = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "shared.cli", "notifier"],
        env={
            **env,
            "NOTIFIER_PORT": str(notifier_port),
            "NOTIFIER_CLIENT_QUEUE_BYTES": str(args.queue_bytes),
            # Every benchmark client uses the same token: one caller, far past the default.
            "NOTIFIER_MAX_SOCKETS_PER_CALLER": "100000",
        },
    )
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    rows: list[dict[str, Any]] = []
    workers = Workers(args.workers)
    try:
        await wait_http(notifier_port, "/readyz")
        await wait_http(raw_port, "/healthz")
        tok = mint_token(secret=SECRET, org="bench", user="boss", role="admin")
        path = f"/ws?token={tok}"
        servers = {
            "raw websockets broadcast": (raw_port, "/", raw.pid),
            "notifier": (notifier_port, path, notifier.pid),
        }
        # Raw and notifier take turns, each going first every other round, so that the
        # machine's drift between phases favours neither; the ratio is the rounds' median.
        for r in range(args.rounds):
            for name in list(servers) if r % 2 == 0 else list(servers)[::-1]:
                port, server_path, pid = servers[name]
                row = await phase(
                    name, port, server_path, args.clients, js, prefix, args, pid, workers
                )
                rows.append({**row, "round": r + 1})
        rows.append(
            await phase(
                "notifier + stuck clients",
                notifier_port,
                path,
                args.clients,
                js,
                prefix,
                args,
                notifier.pid,
                workers,
                stuck=args.stuck,
            )
        )
    finally:
        workers.close()
        for proc in (raw, notifier):
            proc.terminate()
            proc.wait(15)
        try:
            await js.delete_stream(f"{prefix.upper()}_EVENTS")
            await js.delete_stream(f"{prefix.upper()}_DLQ")
        except Exception:  # noqa: S110 - cleanup of a throwaway stream
            pass
        await nc.close()
    summary = fanout_summary(rows)
    fan_p99, stuck_p99 = summary["notifier_p99_ms"], rows[-1]["p99_ms"]
    return {
        "command": "python -m bench.notifier_fanout" + (" --quick" if args.quick else ""),
        "clients": args.clients,
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "client_queue_bytes": args.queue_bytes,
        "client_processes": args.workers,
        "load_average_at_start": args.load_at_start,
        "rounds": args.rounds,
        "phases": rows,
        "ratios": {
            "notifier_p99_over_raw_p99": summary["p99_ratio"],
            "notifier_p99_over_raw_p99_each_round": summary["p99_ratios"],
            "notifier_p50_over_raw_p50": summary["p50_ratio"],
            "stuck_p99_over_notifier_p99": round(stuck_p99 / fan_p99, 2),
        },
        "goals": {
            "p99_le_1_5x_raw": summary["p99_ratio"] <= 1.5,
            "p99_le_100ms": fan_p99 <= 100,
            "stuck_p99_rise_lt_2x": stuck_p99 < 2 * fan_p99,
            "rss_le_150mb": summary["notifier_rss_mb"] <= 150,
        },
    }


def fanout_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of the raw and notifier phases (rows with a `round`): each
    round's notifier/raw ratios, their medians, the notifier's median p99 and largest RSS."""
    raw = {r["round"]: r for r in rows if r["phase"] == "raw websockets broadcast"}
    fan = {r["round"]: r for r in rows if r["phase"] == "notifier" and "round" in r}
    p99 = [fan[k]["p99_ms"] / raw[k]["p99_ms"] for k in sorted(raw)]
    p50 = [fan[k]["p50_ms"] / raw[k]["p50_ms"] for k in sorted(raw)]
    return {
        "p99_ratios": [round(x, 2) for x in p99],
        "p99_ratio": round(statistics.median(p99), 2),
        "p50_ratio": round(statistics.median(p50), 2),
        "notifier_p99_ms": statistics.median(r["p99_ms"] for r in fan.values()),
        "notifier_rss_mb": max(r["server_rss_mb"] for r in fan.values()),
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['command']}: {result['clients']} clients, {result['rate_per_s']} events/s")
    head = f"{'phase':<28}{'deliveries':>14}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    print(f"{head}{'RSS MB':>8}{'4008':>6}{'CPU ms/event':>14}")
    for r in result["phases"]:
        print(
            f"{r['phase']:<28}{r['samples']:>6}/{r['expected_deliveries']:<6}{r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} {r['server_rss_mb']:>7.1f} "
            f"{r['slow_disconnects']:>5} {r['server_cpu_ms_per_event']:>13.2f}"
        )
    for r in result["phases"]:
        print(f"  {r['phase']}: p99 ms by second {r['p99_ms_by_second']}")
    print("load average at start:", result["load_average_at_start"])
    print("ratios:", result["ratios"])
    print("goals: ", result["goals"])


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--raw-server":
        import uvloop  # the notifier runs on uvloop too: compare like with like

        uvloop.install()
        asyncio.run(
            run_raw_server(
                int(sys.argv[2]), sys.argv[3], os.environ.get("NATS_URL", DEFAULT_NATS_URL)
            )
        )
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--stuck", type=int, default=10)
    parser.add_argument("--queue-bytes", type=int, default=64 * 1024)
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument(
        "--rounds", type=int, help="raw/notifier rounds, alternating who goes first (3; quick 1)"
    )
    args = parser.parse_args()
    args.load_at_start = [round(x, 2) for x in os.getloadavg()]
    args.clients = args.clients or (200 if args.quick else 1000)
    args.seconds = args.seconds or (5.0 if args.quick else 15.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.clients + 256)), hard))
    result = asyncio.run(main_async(args))
    print_table(result)
    out = results_dir(args.quick) / "notifier_fanout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
