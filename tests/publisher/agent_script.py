"""An agent process for the restart tests: publishes runs through a spool, then idles."""

from __future__ import annotations

import argparse
import asyncio

from shared.publisher import Fleet
from shared.subjects import Subjects


async def run(args: argparse.Namespace) -> None:
    fleet = Fleet(
        args.nats,
        org=args.org,
        subjects=Subjects(args.prefix),
        spool_dir=args.spool,
        ack_timeout=0.5,
        connect_timeout=0.5,
    )
    await fleet.start()
    for i in range(args.runs):
        async with fleet.execution("spooler", id=f"run-{i}", message=f"job {i}") as r:
            r.response = f"result {i}"
    print(f"spooled={fleet.spool.pending if fleet.spool else 0}", flush=True)
    if args.drain:
        ok = await fleet.flush(20)
        print(f"drained={ok}", flush=True)
        await fleet.close()
        return
    await asyncio.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nats", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--org", required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--runs", type=int, default=0)
    parser.add_argument("--drain", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
