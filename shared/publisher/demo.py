"""`fleetwatch demo`: a living fleet of agents publishing through the real client.

Runs start at `rate` per second (Poisson arrivals), live for seconds, call other agents,
retry steps, fail with realistic errors, and some stay stuck running until someone
terminates them from the dashboard. `--backfill-runs` first publishes finished runs of the
past hours so the statistics have history. `run_demo` is what `fleetwatch up` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.arg_types import count, demo_rate, names, positive, seconds
from shared.publisher.client import Fleet
from shared.publisher.demo_fleet import (
    DEMO_ORGS,
    AgentSpec,
    RunPlan,
    count_runs,
    fleet,
    plan_run,
)
from shared.publisher.demo_history import history_events
from shared.publisher.envelope import new_id
from shared.publisher.run import Run
from shared.subjects import Subjects

log = logging.getLogger("fleetwatch.demo")


class SimulatedError(Exception):
    """Base of the errors the demo's agents raise on purpose."""


_ERROR_TYPES: dict[str, type[SimulatedError]] = {}


def _error(error_type: str, message: str) -> SimulatedError:
    """An exception whose class name is the simulated error's type (as agents report it)."""
    cls = _ERROR_TYPES.setdefault(error_type, type(error_type, (SimulatedError,), {}))
    return cls(message)


@dataclass(slots=True)
class DemoStats:
    runs: int = 0
    backfilled: int = 0
    errors: int = 0


class Demo:
    """Launches planned runs on one `Fleet` per org."""

    def __init__(
        self, fleets: dict[str, Fleet], agents: list[AgentSpec], rng: random.Random, speed: float
    ) -> None:
        self.fleets = fleets
        self.agents = agents
        self.by_name = {(a.org, a.name): a for a in agents}
        self.weights = [1.5 if a.schedule_id else 1.0 for a in agents]
        self.rng = rng
        self.speed = speed
        self.stats = DemoStats()
        self.tasks: set[asyncio.Task[None]] = set()

    def plan(self) -> RunPlan:
        agent = self.rng.choices(self.agents, weights=self.weights)[0]
        return plan_run(self.rng, agent, self.by_name, speed=self.speed)

    def launch(self, plan: RunPlan) -> None:
        self.stats.runs += count_runs(plan)
        task = asyncio.create_task(self._guarded(plan))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _guarded(self, plan: RunPlan) -> None:
        try:
            await self.execute(plan, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a publish that failed: the demo goes on
            self.stats.errors += 1
            log.warning("demo run of %s not fully published: %r", plan.agent.name, exc)

    def _execution(self, plan: RunPlan, parent: Run | None, **options: Any) -> Run:
        agent = plan.agent
        return self.fleets[agent.org].execution(
            agent.name,
            message=plan.message,
            triggered_by=plan.triggered_by,
            parent=parent,
            project=agent.project,
            workflow=agent.workflow,
            schedule_id=agent.schedule_id if plan.triggered_by == "schedule" else None,
            **options,
        )

    async def execute(self, plan: RunPlan, parent: Run | None) -> None:
        if plan.outcome == "stuck":
            await self._stuck(plan, parent)
            return
        with contextlib.suppress(SimulatedError):
            async with self._execution(plan, parent) as run:
                run.context_max = plan.context_max
                await self._steps(plan, run)
                run.set(
                    tokens_in=plan.tokens_in,
                    tokens_out=plan.tokens_out,
                    cost=plan.cost,
                    context_used=plan.context_used,
                    tool_calls=plan.tool_calls or None,
                )
                if plan.error is not None:
                    raise _error(*plan.error)
                run.response = plan.response

    async def _steps(self, plan: RunPlan, run: Run) -> None:
        for index, step in enumerate(plan.steps):
            for attempt_error in step.attempts:
                try:
                    async with run.component(
                        step.name,
                        input={"step": step.name, "task": plan.message[:60]},
                        retry_policy=step.retry_policy,
                        max_attempts=step.max_attempts,
                    ) as current:
                        await asyncio.sleep(step.seconds / len(step.attempts))
                        if attempt_error is not None:
                            raise _error(*attempt_error)
                        current.output = {"ok": True, "items": self.rng.randint(1, 50)}
                except SimulatedError:
                    continue  # the plan says whether another attempt follows
            if index == 0 and plan.children:
                await asyncio.gather(*(self.execute(child, run) for child in plan.children))
            if index == len(plan.steps) // 2 and plan.seconds > 5:
                await run.progress()

    async def _stuck(self, plan: RunPlan, parent: Run | None) -> None:
        """Start and never finish, unless terminated (then it ends cancelled)."""
        terminated = asyncio.Event()

        def on_terminate(reason: str | None) -> None:
            terminated.set()

        run = self._execution(plan, parent, on_terminate=on_terminate)
        await run.__aenter__()
        # Cancelled at shutdown: the run stays running in fleetwatch, as a stuck run does.
        await terminated.wait()
        await run.__aexit__(None, None, None)

    async def backfill(self, runs: int, hours: float) -> None:
        """Publish `runs` finished runs spread over the past `hours`, in pipelined chunks."""
        now = datetime.now(UTC)
        events: list[dict[str, Any]] = []
        for _ in range(runs):
            plan = self.plan()
            start = now - timedelta(seconds=self.rng.uniform(60, hours * 3600))
            events += history_events(plan, start, new_id())
            self.stats.backfilled += count_runs(plan)
        for begin in range(0, len(events), 200):
            chunk = events[begin : begin + 200]
            await asyncio.gather(*(self.fleets[e["org"]].publish(e) for e in chunk))


async def run_demo(
    nats_url: str,
    subjects: Subjects,
    rate: float,
    duration: float | None,
    stop: asyncio.Event | None,
    *,
    orgs: Sequence[str] = DEMO_ORGS,
    seed: int | None = None,
    speed: float = 1.0,
    backfill_runs: int = 0,
    backfill_hours: float = 24.0,
    grace: float = 2.0,
) -> DemoStats:
    """Simulate the fleet until `duration` seconds pass or `stop` is set (None: forever)."""
    if not speed > 0:
        raise ValueError(f"speed must be a positive number, not {speed!r}")
    rng = random.Random(seed)
    stop = stop or asyncio.Event()
    fleets = {org: Fleet(nats_url, org=org, subjects=subjects) for org in orgs}
    started: list[Fleet] = []
    demo = Demo(fleets, fleet(tuple(orgs)), rng, speed)
    try:
        # Inside the `try`: when one org's start fails, the orgs started before it close.
        for one in fleets.values():
            await one.start()
            started.append(one)
        if backfill_runs:
            await demo.backfill(backfill_runs, backfill_hours)
            log.info("backfilled %d runs over %.0f h", demo.stats.backfilled, backfill_hours)
        loop = asyncio.get_running_loop()
        deadline = None if duration is None else loop.time() + duration
        while not stop.is_set():
            wait = rng.expovariate(rate) if rate > 0 else 3600.0
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
                break
            if deadline is None or loop.time() < deadline:
                demo.launch(demo.plan())
        if demo.tasks:
            await asyncio.wait(set(demo.tasks), timeout=grace)
    finally:
        for task in list(demo.tasks):
            task.cancel()
        if demo.tasks:
            await asyncio.wait(set(demo.tasks), timeout=5)
        for one in started:
            await one.close()
    return demo.stats


def main(argv: Sequence[str]) -> int:
    from shared.settings import CommonSettings

    parser = argparse.ArgumentParser(
        prog="fleetwatch demo", description="simulate a fleet of agents publishing events"
    )
    parser.add_argument(
        "--rate", type=demo_rate, default=2.0, help="new runs per second (0: history only)"
    )
    parser.add_argument(
        "--duration",
        type=seconds,
        help="seconds (default: until Ctrl-C; 0: publish the backfill, then exit)",
    )
    parser.add_argument("--orgs", type=names, default=list(DEMO_ORGS), help="comma-separated orgs")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--speed", type=positive, default=1.0, help="divide run durations by this (> 0)"
    )
    parser.add_argument("--backfill-runs", type=count, default=0, help="past runs to publish first")
    parser.add_argument(
        "--backfill-hours", type=positive, default=24.0, help="spread the past runs over this"
    )
    parser.add_argument("--nats-url", help="default: $NATS_URL")
    parser.add_argument("--prefix", help="subject prefix (default: $FLEETWATCH_SUBJECT_PREFIX)")
    args = parser.parse_args(argv)
    settings = CommonSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        stats = asyncio.run(
            run_demo(
                args.nats_url or settings.nats_url,
                Subjects(args.prefix or settings.subject_prefix),
                args.rate,
                args.duration,
                None,
                orgs=args.orgs,
                seed=args.seed,
                speed=args.speed,
                backfill_runs=args.backfill_runs,
                backfill_hours=args.backfill_hours,
            )
        )
    except KeyboardInterrupt:
        return 0
    print(f"demo: {stats.runs} live runs, {stats.backfilled} backfilled, {stats.errors} errors")
    return 0
