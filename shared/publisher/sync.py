"""A blocking facade over `Fleet` for agents that are not written with asyncio.

The event loop runs in a daemon thread; the agent's code runs in its own thread, so a
terminate command cannot cancel it: it sets `run.terminate_requested` (and calls
`on_terminate`), which the code checks between units of work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from shared.publisher.client import Fleet
from shared.publisher.run import Run, Step

T = TypeVar("T")


class FleetClosedError(RuntimeError):
    """A blocking call made after `SyncFleet.close()`, or still waiting when it ended."""


class FleetNotStartedError(FleetClosedError):
    """A call on a `SyncFleet` that is not running: never started, or its `start()` failed
    (then chained as the cause). `start()` may be called again to retry."""


def _closed_while_starting() -> FleetClosedError:
    return FleetClosedError("SyncFleet.close() was called while it started")


class SyncFleet:
    """`with SyncFleet(url, org="acme") as fleet: with fleet.execution("a") as run: ...`"""

    def __init__(self, nats_url: str = "nats://127.0.0.1:4222", **options: Any) -> None:
        self._new_loop()
        self._nats_url = nats_url
        self._options = options
        self._fleet: Fleet | None = None
        #: Per thread, the runs entered and not yet left, innermost last: a run entered
        #: inside another one's `with` in the same thread is its child.
        self._local = threading.local()
        #: The calls other threads wait on; `close()` lets them end, then ends those left:
        #: once the loop stops, nothing would ever complete them and their threads hung.
        self._calls: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._closed = False
        self._starting = False
        #: Why the last `start()` failed: the cause of the calls refused until a retry works.
        self._start_error: BaseException | None = None
        #: While `start()` runs: its future on the loop, and set once `make()` has ended
        #: (its clean-up included), so that nothing stops the loop in the middle of it.
        self._start_future: concurrent.futures.Future[Fleet] | None = None
        self._start_ended = threading.Event()

    def _new_loop(self) -> None:
        # A failed start() stops and closes its loop; a retry runs on a new loop and thread.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fleetwatch-publisher", daemon=True
        )

    def _not_started(self) -> FleetNotStartedError:
        if self._start_error is None:
            return FleetNotStartedError(
                "SyncFleet is not started: call start() first, or use "
                "`with SyncFleet(...) as fleet`"
            )
        error = FleetNotStartedError(
            f"SyncFleet failed to start ({self._start_error!r}), so it runs no calls: "
            "call start() again to retry"
        )
        error.__cause__ = self._start_error
        return error

    def _refuse_loop_thread(self, coro: Coroutine[Any, Any, Any] | None = None) -> None:
        if threading.current_thread() is self._thread:
            # From the loop's own thread (an `on_terminate` or `on_overflow` callback) the
            # wait below would block the loop that has to run `coro`: a hang for good.
            if coro is not None:
                coro.close()
            raise RuntimeError(
                "SyncFleet's blocking methods cannot be called from its event-loop thread "
                "(an on_terminate or on_overflow callback): make the callback async and await "
                "the async API (`fleet.fleet`, `run.run`), or hand the work to another thread"
            )

    def _call(self, coro: Coroutine[Any, Any, T], *, closing: bool = False) -> T:
        self._refuse_loop_thread(coro)
        name = getattr(coro, "__qualname__", "call")
        with self._lock:
            if self._closed and not closing:
                coro.close()
                raise FleetClosedError(f"SyncFleet is closed: {name} was not run")
            if self._loop.is_closed() or not self._thread.is_alive():
                # Not started, or its start() failed: the loop would never run `coro`.
                coro.close()
                raise self._not_started()
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._calls.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if not self._closed:
                raise
            raise FleetClosedError(
                f"SyncFleet.close() ended {name} while it waited (after the drain timeout): "
                "it did not complete"
            ) from None
        finally:
            with self._lock:
                self._calls.discard(future)

    def _open_runs(self) -> list[Run]:
        runs: list[Run] | None = getattr(self._local, "runs", None)
        if runs is None:
            runs = self._local.runs = []
        return runs

    @property
    def fleet(self) -> Fleet:
        """The async `Fleet`; FleetNotStartedError (or FleetClosedError) when there is none."""
        fleet = self._fleet
        if fleet is None:
            if self._closed:
                raise FleetClosedError("SyncFleet is closed: it has no fleet")
            raise self._not_started()
        return fleet

    def start(self) -> SyncFleet:
        """Connect (as `Fleet.start`). If it fails, the error is raised, the event-loop
        thread stopped and calls refused with FleetNotStartedError; `start()` may be called
        again to retry. Refused with RuntimeError once started (or while starting), and
        with FleetClosedError after `close()`."""
        self._refuse_loop_thread()
        with self._lock:
            if self._closed:
                raise FleetClosedError("SyncFleet is closed: make a new one to start again")
            if self._fleet is not None or self._starting:
                raise RuntimeError("SyncFleet is already started")
            self._starting = True
            if self._loop.is_closed():
                self._new_loop()
            self._thread.start()

        future, ended = self._submit_start()
        try:
            fleet = future.result()
        except BaseException as exc:
            # `with` never calls __exit__ when __enter__ raises: stop the thread here, once
            # the start has cleaned up after itself.
            self._abandon_start(future, ended)
            self._stop_loop()
            with self._lock:
                self._start_error = exc
                self._starting = False
                self._start_future = None
                closed = self._closed
            if closed and isinstance(exc, concurrent.futures.CancelledError):
                raise _closed_while_starting() from None
            raise
        with self._lock:
            self._starting, self._start_future = False, None
            if self._closed:
                # close() came as the start ended: it saw a start, not a fleet, and closed
                # the fleet that start made (see _abandon_start).
                raise _closed_while_starting()
            self._fleet, self._start_error = fleet, None
        return self

    def _submit_start(self) -> tuple[concurrent.futures.Future[Fleet], threading.Event]:
        """Hand the connect to the loop thread (started by `start()`); FleetClosedError if
        close() came first."""
        ended = threading.Event()

        async def make() -> Fleet:
            try:
                fleet = Fleet(self._nats_url, **self._options)
                try:
                    return await fleet.start()
                except BaseException:
                    # A retry must find the spool's lock free and no task left behind (also
                    # when the start is abandoned: Ctrl-C, or close() from another thread);
                    # a failure to clean up must not hide why the start failed.
                    with contextlib.suppress(Exception):
                        await fleet.close(0)
                    raise
            finally:
                ended.set()

        with self._lock:
            if not self._closed:
                future = asyncio.run_coroutine_threadsafe(make(), self._loop)
                self._start_future, self._start_ended = future, ended
                return future, ended
            self._starting = False
        # close() came after the loop thread started and before the connect was handed to
        # it: it found no start to end, and stops the loop, so nothing would ever run this
        # one (the wait for it hung for good). Stopped here too, before saying so.
        self._stop_loop()
        raise _closed_while_starting()

    def _abandon_start(
        self, future: concurrent.futures.Future[Fleet], ended: threading.Event
    ) -> None:
        """Cancel a start still running and wait (a few seconds at most) for its clean-up;
        a start that did complete (Ctrl-C just after) has its Fleet closed here instead."""
        if not future.done():
            future.cancel()  # the task on the loop gets CancelledError, and closes its Fleet
        ended.wait(5)
        if future.done() and not future.cancelled() and future.exception() is None:
            closing = asyncio.run_coroutine_threadsafe(future.result().close(0), self._loop)
            with contextlib.suppress(Exception):
                closing.result(5)

    def close(self, drain_timeout: float = 5.0) -> None:
        """Let the calls other threads wait on end (up to `drain_timeout`, shared with the
        spool's drain), close the fleet, and end every call still waiting with
        FleetClosedError; calls made from now on raise it at once."""
        self._refuse_loop_thread()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting = list(self._calls)
            starting = self._start_future
        try:
            if self._fleet is not None:
                self._call(self._shutdown(self._fleet, waiting, drain_timeout), closing=True)
            elif starting is not None:
                # Another thread is in start(): end it, and let it release what it took.
                self._abandon_start(starting, self._start_ended)
        finally:
            self._stop_loop()
            with self._lock:
                waiting = list(self._calls)
            for future in waiting:  # the loop is stopped: they would wait for good
                future.cancel()

    async def _shutdown(
        self, fleet: Fleet, waiting: list[concurrent.futures.Future[Any]], drain_timeout: float
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        if waiting:
            # First, so a publish in flight ends acked or spooled rather than cut off by
            # the disconnect (it takes at most `ack_timeout`); a `flush()` waits with close.
            # Past the timeout, the rest are cancelled, and their threads are told so.
            calls = asyncio.gather(*map(asyncio.wrap_future, waiting), return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await calls
        await fleet.close(max(0.0, deadline - loop.time()))

    def _stop_loop(self) -> None:
        # One thread at a time: a close() while start() fails would otherwise close the
        # loop twice at once (asyncio's close is not thread-safe).
        with self._stop_lock:
            if self._loop.is_closed():
                return
            if self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(5)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> SyncFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execution(self, agent: str, **options: Any) -> SyncRun:
        """As `Fleet.execution`; inside another run's `with` in this thread it links to it as
        parent (the async client does so within a task, which blocking code has not)."""
        options.setdefault("cancel_task", False)
        open_runs = self._open_runs()
        if options.get("parent") is None and open_runs:
            options["parent"] = open_runs[-1]
        return SyncRun(self, self.fleet.execution(agent, **options))

    def publish(self, event: dict[str, Any]) -> bool:
        return self._call(self.fleet.publish(event))

    def flush(self, timeout: float | None = None) -> bool:
        return self._call(self.fleet.flush(timeout))


class SyncRun:
    """A `Run` driven from blocking code; its fields (`response`, `cost`, ...) pass through."""

    _owner: SyncFleet
    run: Run

    def __init__(self, owner: SyncFleet, run: Run) -> None:
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "run", run)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.run, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.run, name, value)

    def __enter__(self) -> SyncRun:
        self._owner._call(self.run.__aenter__())
        self._owner._open_runs().append(self.run)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        open_runs = self._owner._open_runs()
        if self.run in open_runs:
            open_runs.remove(self.run)
        return self._owner._call(self.run.__aexit__(exc_type, exc, tb))

    def progress(self, **fields: Any) -> None:
        self._owner._call(self.run.progress(**fields))

    def child(self, agent: str, **options: Any) -> SyncRun:
        """An execution of another agent that this run triggers (`parent_execution_id`); the
        `Run.child` it stood for gave an async run, which a `with` refuses (TypeError)."""
        options.setdefault("triggered_by", "agent")
        return self._owner.execution(agent, parent=self.run, **options)

    def component(self, name: str, **options: Any) -> SyncStep:
        return SyncStep(self._owner, self.run.component(name, **options))


class SyncStep:
    """A `Step` driven from blocking code; set `output` before leaving it."""

    _owner: SyncFleet
    step: Step

    def __init__(self, owner: SyncFleet, step: Step) -> None:
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "step", step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.step, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.step, name, value)

    def __enter__(self) -> SyncStep:
        self._owner._call(self.step.__aenter__())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._owner._call(self.step.__aexit__(exc_type, exc, tb))
