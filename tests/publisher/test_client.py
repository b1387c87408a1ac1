"""The client against a real JetStream: what each kind of run publishes, and how."""

from __future__ import annotations

import asyncio
import threading
import time

import nats
import orjson
import pytest
from nats.js import JetStreamContext

from shared.events import Event
from shared.publisher import Fleet, InvalidEventError, SyncFleet, current_run
from shared.subjects import Subjects
from tests.procs import free_port
from tests.publisher.conftest import ask_terminate, stream_messages, wait_for_count


class Boom(RuntimeError):
    pass


async def test_success_publishes_started_then_completed(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    async with (
        Fleet(nats_url, org=org, subjects=streams) as fleet,
        fleet.execution(
            "ruby-agent", message="Process invoice", triggered_by="schedule", project="billing"
        ) as run,
    ):
        await asyncio.sleep(0.02)
        run.response = "done"
        run.set(cost=0.02, tokens_in=120, tokens_out=40)
    messages = await stream_messages(js, streams.events_stream)
    assert [m[2]["type"] for m in messages] == ["execution_started", "execution_completed"]
    subject, headers, body = messages[1]
    assert subject == streams.event(org, "ruby-agent", "execution_completed")
    assert headers["Nats-Msg-Id"] == f"{org}:{body['event_id']}"
    assert messages[0][2]["event_id"] != body["event_id"]
    event = Event.model_validate(body)
    assert event.execution is not None
    assert event.execution.id == run.id
    assert event.execution.status == "success"
    assert event.execution.response == "done"
    assert event.execution.cost == 0.02
    assert (event.execution.tokens_in, event.execution.tokens_out) == (120, 40)
    assert event.execution.triggered_by == "schedule"
    assert event.execution.project == "billing"
    assert event.execution.duration_ms is not None
    assert event.execution.duration_ms >= 20
    assert event.execution.completed_at is not None
    assert event.source == "agent:ruby-agent"


async def test_numbers_the_contract_refuses_are_refused_where_the_code_sets_them(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    """Before, `cost = -3` went out unchecked (without `strict`) and ingest dead-lettered the
    run's completed event: the run stayed `running` and the agent never knew."""
    async with (
        Fleet(nats_url, org=org, subjects=streams) as fleet,
        fleet.execution("ruby-agent", message="m") as run,
    ):
        with pytest.raises(ValueError, match=r"Run\.cost = -3 refused: .*greater than or equal"):
            run.cost = -3
        with pytest.raises(ValueError, match=r"Run\.tokens_in = 1\.5 refused"):
            run.set(response="kept?", tokens_in=1.5)
        assert run.response is None  # all or none
        with pytest.raises(ValueError, match=r"Run\.cost = nan refused"):
            run.set(cost=float("nan"))
        run.set(cost=0.25, tokens_in="12")  # what the contract accepts is kept, as a number
        run.tokens_out = None
    messages = await stream_messages(js, streams.events_stream)
    body = messages[-1][2]
    assert body["type"] == "execution_completed"
    assert (body["execution"]["cost"], body["execution"]["tokens_in"]) == (0.25, 12)
    assert "tokens_out" not in body["execution"]


async def test_failure_publishes_exception_type_and_message(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:
        with pytest.raises(Boom):
            async with fleet.execution("a1", message="x"):
                raise Boom("upstream 502")
    messages = await stream_messages(js, streams.events_stream)
    last = Event.model_validate(messages[-1][2])
    assert last.type == "execution_failed"
    assert last.execution is not None
    assert (last.execution.error_type, last.execution.error) == ("Boom", "upstream 502")


async def test_cancelled_task_publishes_cancelled_and_keeps_cancelling(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    entered = asyncio.Event()
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:

        async def work() -> None:
            async with fleet.execution("a1"):
                entered.set()
                await asyncio.sleep(30)

        task = asyncio.create_task(work())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    last = Event.model_validate((await stream_messages(js, streams.events_stream))[-1][2])
    assert last.type == "execution_cancelled"


async def test_components_count_attempts_and_children_link_to_parent(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    async with (
        Fleet(nats_url, org=org, subjects=streams) as fleet,
        fleet.execution("planner") as parent,
    ):
        for _ in range(2):
            try:
                async with parent.component(
                    "fetch", input={"url": "u"}, retry_policy="fixed", max_attempts=3
                ) as step:
                    if step.attempt == 1:
                        raise TimeoutError("read timed out")
                    step.output = {"rows": 3}
                break
            except TimeoutError:
                continue
        async with fleet.execution("writer") as nested:
            pass
        async with parent.child("reviewer", triggered_by="mcp") as explicit:
            pass
    events = [Event.model_validate(m[2]) for m in await stream_messages(js, streams.events_stream)]
    steps = [e for e in events if e.component is not None]
    assert [(e.type.value, e.component.attempt) for e in steps if e.component] == [
        ("component_started", 1),
        ("component_failed", 1),
        ("component_started", 2),
        ("component_completed", 2),
    ]
    failed = steps[1].component
    assert failed is not None
    assert failed.error_type == "TimeoutError"
    assert failed.retry_policy == "fixed"
    assert failed.max_attempts == 3
    assert steps[3].component is not None
    assert steps[3].component.output == {"rows": 3}
    assert all(e.agent_name == "planner" for e in steps)
    children = {
        e.execution.agent_name: e.execution
        for e in events
        if e.execution is not None and e.type == "execution_completed"
    }
    assert children["writer"].parent_execution_id == parent.id == nested.parent_execution_id
    assert children["writer"].triggered_by == "agent"
    assert children["reviewer"].parent_execution_id == parent.id
    assert explicit.triggered_by == "mcp"
    assert children["planner"].parent_execution_id is None


async def test_terminate_cancels_the_run_and_answers(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    entered = asyncio.Event()
    async with Fleet(nats_url, org=org, subjects=streams) as fleet:

        async def work() -> str:
            async with fleet.execution("long-agent"):
                entered.set()
                await asyncio.sleep(30)
            return "after the run"

        task = asyncio.create_task(work())
        await entered.wait()
        nc = fleet._nc
        assert nc is not None
        subject = streams.terminate(org, "long-agent")
        reply = await nc.request(subject, b'{"execution_id": "nope"}', timeout=3)
        assert reply.data == b'{"accepted":false,"reason":"execution is not running in this agent"}'
        run_id = next(iter(fleet.terminate.runs))[1]
        reply = await nc.request(
            subject, f'{{"execution_id": "{run_id}", "reason": "by ops"}}'.encode(), timeout=3
        )
        assert reply.data == b'{"accepted":true,"reason":null}'
        # The run's own cancellation stops at the `async with`: the task carries on.
        assert await asyncio.wait_for(task, 5) == "after the run"
        again = await nc.request(subject, f'{{"execution_id": "{run_id}"}}'.encode(), timeout=3)
        assert b'"accepted":false' in again.data
    last = Event.model_validate((await stream_messages(js, streams.events_stream))[-1][2])
    assert last.type == "execution_cancelled"
    assert last.execution is not None
    assert last.execution.error == "by ops"


async def test_terminate_callback_instead_of_cancel(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    stop = asyncio.Event()
    reasons: list[str | None] = []

    def on_terminate(reason: str | None) -> None:
        reasons.append(reason)
        stop.set()

    async with (
        Fleet(nats_url, org=org, subjects=streams) as fleet,
        fleet.execution("cb-agent", on_terminate=on_terminate) as run,
    ):
        reply = await ask_terminate(fleet, streams, org, "cb-agent", run.id)
        assert b'"accepted":true' in reply
        await asyncio.wait_for(stop.wait(), 3)
    assert reasons == ["terminated on request"]
    last = (await stream_messages(js, streams.events_stream))[-1][2]
    assert last["type"] == "execution_cancelled"


async def test_sync_wrapper(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    def blocking() -> str:
        with SyncFleet(nats_url, org=org, subjects=streams) as fleet:
            with fleet.execution("cron-agent", triggered_by="schedule") as run:
                with run.component("step") as step:
                    step.output = "ok"
                run.response = "sync done"
                run.cost = 0.5
            return str(run.id)

    run_id = await asyncio.to_thread(blocking)
    messages = await wait_for_count(js, streams.events_stream, 4)
    assert [m[2]["type"] for m in messages] == [
        "execution_started",
        "component_started",
        "component_completed",
        "execution_completed",
    ]
    done = messages[-1][2]["execution"]
    assert (done["id"], done["response"], done["cost"]) == (run_id, "sync done", 0.5)


def publisher_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "fleetwatch-publisher")


def test_sync_wrapper_failed_start_leaves_no_thread_behind(org: str) -> None:
    before = publisher_threads()
    unreachable = f"nats://127.0.0.1:{free_port()}"
    for _ in range(5):
        with (
            pytest.raises((TimeoutError, OSError, nats.errors.Error)),
            SyncFleet(unreachable, org=org, connect_timeout=0.3),
        ):
            pass
    assert publisher_threads() == before


async def test_sync_wrapper_terminate_sets_the_flag(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    ids: list[str] = []

    def blocking() -> bool | None:
        with (
            SyncFleet(nats_url, org=org, subjects=streams) as fleet,
            fleet.execution("cron-agent") as run,
        ):
            ids.append(run.id)
            loop.call_soon_threadsafe(started.set)
            deadline = time.monotonic() + 5
            while not run.terminate_requested and time.monotonic() < deadline:
                time.sleep(0.02)
            return bool(run.terminate_requested)
        return None  # reached only if the run's exit swallowed an error raised in the block

    worker = asyncio.create_task(asyncio.to_thread(blocking))
    await started.wait()
    nc = await nats.connect(nats_url)
    try:
        reply = await nc.request(
            streams.terminate(org, "cron-agent"), orjson.dumps({"execution_id": ids[0]}), timeout=3
        )
    finally:
        await nc.close()
    assert orjson.loads(reply.data)["accepted"] is True
    assert await worker is True
    messages = await wait_for_count(js, streams.events_stream, 2)
    assert messages[-1][2]["type"] == "execution_cancelled"


async def test_one_orgs_event_id_does_not_hide_anothers(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    """JetStream dedupes across the stream; event ids are unique per org only."""
    other = f"{org}-b"
    for tenant in (org, other, org):  # the third is a real retry: dropped
        async with Fleet(nats_url, org=tenant, subjects=streams) as fleet:
            assert await fleet.publish(
                {
                    "type": "execution_started",
                    "event_id": "run-42-started",
                    "occurred_at": "2026-11-01T12:00:00Z",
                    "org": tenant,
                    "execution": {"id": "run-42", "agent_name": "ruby"},
                }
            )
    messages = await stream_messages(js, streams.events_stream)
    assert sorted(m[2]["org"] for m in messages) == sorted([org, other])


async def test_a_run_whose_started_event_is_refused_leaves_nothing_behind(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    """Entering held the run for terminate and made it the task's current run before
    publishing `execution_started`, and a failed publish undid neither: a terminate for its
    id cancelled whatever the task did next, and the task's next runs named it as parent."""
    async with Fleet(nats_url, org=org, subjects=streams, strict=True) as fleet:
        refused = fleet.execution("worker", project="p" * 300)  # the contract allows 200
        with pytest.raises(InvalidEventError, match="project"):
            async with refused:
                pass
        assert current_run.get() is None
        assert fleet.terminate.runs == {}
        assert fleet._nc is not None
        async with fleet.execution("worker", message="next job") as run:
            reply = await fleet._nc.request(
                streams.terminate(org, "worker"),
                orjson.dumps({"execution_id": refused.id}),
                timeout=3,
            )
            assert orjson.loads(reply.data)["accepted"] is False
            await asyncio.sleep(0.05)  # where a cancellation of this task would land
        assert run.parent_execution_id is None
    messages = await stream_messages(js, streams.events_stream)
    assert [(m[2]["type"], m[2]["execution"]["id"]) for m in messages] == [
        ("execution_started", run.id),
        ("execution_completed", run.id),
    ]
    assert all("parent_execution_id" not in m[2]["execution"] for m in messages)


async def test_terminate_on_one_agents_subject_leaves_another_agents_run_alone(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str
) -> None:
    """Runs were found by (org, execution_id) alone: a request on agent-a's subject stopped
    agent-b's run when one process held both."""
    entered = asyncio.Event()
    runs: list[str] = []
    async with (
        Fleet(nats_url, org=org, subjects=streams, unknown_reply_delay=0.1) as fleet,
        fleet.execution("agent-a"),
    ):

        async def other_agent() -> None:
            async with fleet.execution("agent-b") as run:
                runs.append(run.id)
                entered.set()
                await asyncio.sleep(30)

        task = asyncio.create_task(other_agent())
        await entered.wait()
        nc = fleet._nc
        assert nc is not None
        request = orjson.dumps({"execution_id": runs[0]})
        reply = await nc.request(streams.terminate(org, "agent-a"), request, timeout=3)
        assert orjson.loads(reply.data) == {
            "accepted": False,
            "reason": "execution is not running in this agent",
        }
        await asyncio.sleep(0.05)
        assert not task.done()
        reply = await nc.request(streams.terminate(org, "agent-b"), request, timeout=3)
        assert orjson.loads(reply.data) == {"accepted": True, "reason": None}
        await asyncio.wait_for(task, 5)
        # Finished, it is still not agent-a's run to speak of.
        reply = await nc.request(streams.terminate(org, "agent-a"), request, timeout=3)
        assert orjson.loads(reply.data)["reason"] == "execution is not running in this agent"
    last = {
        m[2]["execution"]["agent_name"]: m[2]["type"]
        for m in await stream_messages(js, streams.events_stream)
    }
    assert last == {"agent-a": "execution_completed", "agent-b": "execution_cancelled"}
