"""Answer `<prefix>.commands.<org>.<agent>.terminate` for the runs this process holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

import nats.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.events import is_valid_name
from shared.subjects import Subjects

if TYPE_CHECKING:
    from shared.publisher.run import Run

log = logging.getLogger("fleetwatch.publisher")

_REMEMBER_FINISHED = 1000


class TerminateResponder:
    """Tracks running runs by (org, id) and subscribes once per (org, agent) they belong to."""

    def __init__(self, subjects: Subjects, unknown_reply_delay: float = 0.5) -> None:
        self.subjects = subjects
        self.unknown_reply_delay = unknown_reply_delay
        self.runs: dict[tuple[str, str], Run] = {}
        #: (org, id) of recently finished runs -> their agent.
        self._finished: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._subs: dict[tuple[str, str], Subscription | None] = {}
        self._replies: set[asyncio.Task[None]] = set()
        # A run's registration and a reconnect may subscribe the same agent at once.
        self._subscribing = asyncio.Lock()

    def track(self, run: Run) -> bool:
        """Hold `run`; True when its (org, agent) is new. It stays listed without a
        subscription until `subscribe` (or `subscribe_all`, run on every (re)connect) makes one.

        A run whose org or agent no subject can name is not held: its events are refused
        too, and an (org, agent) listed for good would fail every later (re)connect's
        subscribing."""
        if not (is_valid_name(run.org) and is_valid_name(run.agent)):
            return False
        self.runs[(run.org, run.id)] = run
        key = (run.org, run.agent)
        if key in self._subs:
            return False
        self._subs[key] = None
        return True

    def untrack(self, run: Run) -> None:
        if self.runs.get((run.org, run.id)) is not run:
            return
        del self.runs[(run.org, run.id)]
        self._finished[(run.org, run.id)] = run.agent
        while len(self._finished) > _REMEMBER_FINISHED:
            self._finished.popitem(last=False)

    async def subscribe_all(self, nc: NatsClient) -> None:
        """Subscribe for every agent seen so far that has no subscription yet (runs begun
        before the first connect, or while reconnecting). Each on its own: one that fails is
        logged and tried again on the next (re)connect, and the others are still made."""
        for org, agent in list(self._subs):
            try:
                await self.subscribe(nc, org, agent)
            except (nats.errors.Error, OSError) as exc:
                log.warning("no terminate subscription for %s/%s yet: %r", org, agent, exc)

    async def subscribe(self, nc: NatsClient, org: str, agent: str) -> None:
        async with self._subscribing:
            if self._subs.get((org, agent)) is not None:
                return

            async def handler(msg: Msg) -> None:
                await self._on_request(org, agent, msg)

            self._subs[(org, agent)] = await nc.subscribe(
                self.subjects.terminate(org, agent), cb=handler
            )

    async def close(self) -> None:
        tasks = list(self._replies)
        for task in tasks:
            task.cancel()
        if tasks:  # `wait` lets a cancel of close() itself through, and leaves them be
            await asyncio.wait(tasks)

    async def _on_request(self, org: str, agent: str, msg: Msg) -> None:
        """Answer a request on `agent`'s subject: only that agent's runs are its to stop (a
        request naming another agent's run of this process is answered as unknown)."""
        try:
            request = orjson.loads(msg.data)
            execution_id = str(request["execution_id"])
            reason = request.get("reason")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await _reply(msg, False, "request must be JSON with execution_id")
            return
        run = self.runs.get((org, execution_id))
        if run is not None and run.agent == agent:
            accepted, why = await run.request_terminate(reason if isinstance(reason, str) else None)
            await _reply(msg, accepted, why)
        elif run is None and self._finished.get((org, execution_id)) == agent:
            await _reply(msg, False, "execution already finished")
        else:
            # Several processes may serve one agent: answer "not here" late, so that the
            # process that holds the run answers first (a request takes the first reply).
            task = asyncio.create_task(self._reply_unknown(msg))
            self._replies.add(task)
            task.add_done_callback(self._replies.discard)

    async def _reply_unknown(self, msg: Msg) -> None:
        await asyncio.sleep(self.unknown_reply_delay)
        await _reply(msg, False, "execution is not running in this agent")


async def _reply(msg: Msg, accepted: bool, reason: str | None) -> None:
    if msg.reply:
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.respond(orjson.dumps({"accepted": accepted, "reason": reason}))
