"""Pure rules of the notifier: resume planning, client frames, fan-out filters, summaries."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import orjson
import pytest
from nats.js import JetStreamContext

from services.notifier.feed import LiveFeed, was_reset
from services.notifier.filters import ClientFrame, Filter, FrameError, delivers, parse_frame
from services.notifier.handshake import (
    choose_subprotocol,
    initial_frame,
    offered_subprotocols,
    token_from,
)
from services.notifier.resume import Replay, Resync, UpToDate, plan_resume
from services.notifier.scopes import ScopeCache, scope_key
from services.notifier.stream import StreamBounds
from services.notifier.summary import TEXT_CUT, build_outgoing, decode, meta_of
from services.notifier.triggers import TriggerMemory
from shared.access import Scope
from shared.auth import Claims, Role
from shared.events import Event, Status
from shared.subjects import Subjects


def _event(
    type_: str = "execution_started", agent: str = "x", org: str = "acme", **ex: object
) -> Event:
    body: dict[str, object] = {"id": "e1", "agent_name": agent, **ex}
    return Event.model_validate(
        {
            "type": type_,
            "event_id": "ev1",
            "occurred_at": datetime(2026, 2, 5, tzinfo=UTC),
            "org": org,
            "execution": body,
        }
    )


def test_a_stream_made_anew_is_told_by_its_creation_time_or_its_last_sequence() -> None:
    made = datetime(2026, 2, 5, tzinfo=UTC)
    again = datetime(2026, 2, 6, tzinfo=UTC)
    followed = StreamBounds(first_seq=1, last_seq=100, created=made)
    assert not was_reset(StreamBounds(50, 180, made), followed, position=150)
    # Purged: the first sequence moves, the last one stays.
    assert not was_reset(StreamBounds(151, 150, made), followed, position=150)
    # Made anew and already past where fan-out stood: only the creation time tells.
    assert was_reset(StreamBounds(1, 400, again), followed, position=150)
    # Without creation times (an older server), a last sequence that went back does.
    assert was_reset(StreamBounds(1, 3, None), followed, position=150)
    assert not was_reset(StreamBounds(1, 150, None), followed, position=150)


class TestPlanResume:
    def test_replays_exactly_the_missed_range(self) -> None:
        assert plan_resume(10, stream_first=1, stream_last=20, live_seq=18) == Replay(11, 18)

    def test_up_to_date_when_nothing_missed(self) -> None:
        assert plan_resume(18, stream_first=1, stream_last=20, live_seq=18) == UpToDate()

    def test_past_retention_asks_for_resync(self) -> None:
        plan = plan_resume(10, stream_first=12, stream_last=20, live_seq=20)
        assert isinstance(plan, Resync)
        assert plan.reason == "past_retention"

    def test_first_kept_event_right_after_resume_point_is_not_past_retention(self) -> None:
        assert plan_resume(10, stream_first=11, stream_last=20, live_seq=20) == Replay(11, 20)

    def test_unknown_future_sequence_asks_for_resync(self) -> None:
        plan = plan_resume(50, stream_first=1, stream_last=20, live_seq=20)
        assert isinstance(plan, Resync)
        assert plan.reason == "unknown_sequence"

    def test_purged_stream_asks_for_resync(self) -> None:
        # An emptied stream reports first = last + 1.
        assert isinstance(plan_resume(5, stream_first=21, stream_last=20, live_seq=20), Resync)


class TestClientFrames:
    @pytest.mark.parametrize(
        ("data", "error"),
        [
            ("not json", "invalid_json"),
            ("[1, 2]", "invalid_frame"),
            ('{"subscribe": {"status": ["bogus"]}}', "invalid_frame"),
            ('{"subscribe": {"agent_name": ["bad name!"]}}', "invalid_frame"),
            ('{"resume_from": -1}', "invalid_frame"),
            # Not sequence 1: a client bug must not silently replay the whole stream.
            ('{"resume_from": true}', "invalid_frame"),
            ('{"unsubscribe": true}', "invalid_frame"),
        ],
    )
    def test_invalid_frames_are_named(self, data: str, error: str) -> None:
        found = parse_frame(data)
        assert isinstance(found, FrameError)
        assert found.error == error

    def test_valid_frame(self) -> None:
        found = parse_frame(
            '{"subscribe": {"status": ["failed"], "agent_name": ["x"]}, "resume_from": 7}'
        )
        assert isinstance(found, ClientFrame)
        assert found.resume_from == 7
        assert found.subscribe is not None
        assert found.subscribe.status == [Status.FAILED]


class TestDelivers:
    admin = Scope(org="acme", user="a", role=Role.ADMIN, agents=None)
    user = Scope(org="acme", user="u", role=Role.USER, agents=frozenset({"x"}))

    def test_org_is_a_hard_wall(self) -> None:
        assert not delivers(self.admin, Filter(), meta_of(_event(org="other")))

    def test_user_sees_only_their_agents(self) -> None:
        assert delivers(self.user, Filter(), meta_of(_event(agent="x")))
        assert not delivers(self.user, Filter(), meta_of(_event(agent="y")))

    def test_filters_narrow(self) -> None:
        failed = meta_of(_event("execution_failed", triggered_by="schedule"))
        assert delivers(self.admin, Filter(statuses=frozenset({Status.FAILED})), failed)
        assert not delivers(self.admin, Filter(statuses=frozenset({Status.SUCCESS})), failed)
        assert delivers(self.admin, Filter(triggers=frozenset({"schedule"})), failed)
        assert not delivers(self.admin, Filter(agents=frozenset({"y"})), failed)

    def test_a_status_filter_is_told_when_a_row_leaves_it(self) -> None:
        """Under `status=running` the run's end was never delivered: a client kept it running
        for good while the list dropped it. An event ranked above one of the filter's statuses
        may take a row out, so it is delivered; one at or below never."""
        running = Filter(statuses=frozenset({Status.RUNNING}))
        for ending in ("execution_completed", "execution_failed", "execution_cancelled"):
            assert delivers(self.admin, running, meta_of(_event(ending)))
        assert not delivers(self.admin, running, meta_of(_event("execution_queued")))
        failed = Filter(statuses=frozenset({Status.FAILED}))
        for other in ("execution_queued", "execution_started", "execution_completed"):
            assert not delivers(self.admin, failed, meta_of(_event(other)))
        mixed = Filter(statuses=frozenset({Status.RUNNING, Status.FAILED}))
        assert delivers(self.admin, mixed, meta_of(_event("execution_completed")))
        assert not delivers(self.admin, mixed, meta_of(_event("execution_queued")))
        queued = Filter(statuses=frozenset({Status.PENDING}))
        assert delivers(self.admin, queued, meta_of(_event("execution_started")))
        # A step's end takes no execution out of a filter: steps match their own status.
        for step_end in ("component_completed", "component_failed"):
            step = Event.model_validate(
                {
                    "type": step_end,
                    "event_id": "ev2",
                    "occurred_at": datetime(2026, 2, 5, tzinfo=UTC),
                    "org": "acme",
                    "agent_name": "x",
                    "component": {"execution_id": "e1", "node_id": "fetch"},
                }
            )
            assert not delivers(self.admin, running, meta_of(step))
        # The rest of the filter still narrows a leaving event.
        theirs = Filter(statuses=frozenset({Status.RUNNING}), agents=frozenset({"y"}))
        assert not delivers(self.admin, theirs, meta_of(_event("execution_failed")))

    def test_unknown_trigger_matches_other_and_missing_trigger_never_widens(self) -> None:
        odd = meta_of(_event(triggered_by="webhook"))
        assert delivers(self.admin, Filter(triggers=frozenset({"other"})), odd)
        assert not delivers(self.admin, Filter(triggers=frozenset({"other"})), meta_of(_event()))

    def test_trigger_memory_fills_a_later_event(self) -> None:
        memory = TriggerMemory()
        memory.enrich(build_outgoing(1, _event(triggered_by="schedule")))
        later = memory.enrich(build_outgoing(2, _event("execution_completed")))
        assert later.meta.triggered_by == "schedule"

    def test_another_agent_cannot_change_the_trigger_an_execution_is_filtered_by(self) -> None:
        memory = TriggerMemory()
        memory.enrich(build_outgoing(1, _event(triggered_by="schedule")))
        memory.enrich(build_outgoing(2, _event(agent="intruder", triggered_by="manual")))
        later = memory.enrich(build_outgoing(3, _event("execution_completed")))
        assert later.meta.triggered_by == "schedule"


class TestSummary:
    def test_summary_cuts_text_and_never_carries_the_log(self) -> None:
        out = build_outgoing(
            42,
            _event(
                "execution_failed",
                message="m" * 1000,
                execution_log="secret log",
                error="boom",
                tool_calls=[1, 2],
            ),
        )
        frame = orjson.loads(out.payload)
        assert frame["type"] == "execution_failed"
        assert frame["seq"] == 42
        ex = frame["execution"]
        assert len(ex["message"]) == TEXT_CUT
        assert "execution_log" not in ex
        assert b"secret log" not in out.payload
        assert ex["has_error"] is True
        assert ex["status"] == "failed"
        assert ex["tool_call_count"] == 2

    def test_component_event_carries_a_component_summary(self) -> None:
        subjects = Subjects("fleet")
        raw = {
            "type": "component_failed",
            "event_id": "c1",
            "occurred_at": "2026-02-05T10:00:00Z",
            "org": "acme",
            "component": {
                "execution_id": "e1",
                "node_id": "n1",
                "attempt": 2,
                "input": {"big": "x"},
            },
        }
        event = decode(subjects, "fleet.events.acme.x.component_failed", orjson.dumps(raw))
        assert event is not None
        frame = orjson.loads(build_outgoing(3, event).payload)
        assert frame["execution"] == {"id": "e1", "agent_name": "x"}
        assert frame["component"]["status"] == "failed"
        assert frame["component"]["attempt"] == 2
        assert "input" not in frame["component"]

    def test_decode_trusts_the_subject(self) -> None:
        subjects = Subjects("fleet")
        data = orjson.dumps(
            {
                "type": "execution_started",
                "event_id": "1",
                "occurred_at": "2026-02-05T10:00:00Z",
                "org": "evil",
                "execution": {"id": "e", "agent_name": "x"},
            }
        )
        assert decode(subjects, "fleet.events.acme.x.execution_started", data) is None
        assert decode(subjects, "fleet.events.evil.x.execution_started", data) is not None
        assert decode(subjects, "fleet.events.evil.x.execution_started", b"{not json") is None


class TestHandshake:
    def test_token_from_subprotocol_pair_or_query(self) -> None:
        assert token_from("/ws", ["bearer", "abc"]) == "abc"
        assert token_from("/ws?token=qq", []) == "qq"
        assert token_from("/ws", ["bearer"]) is None
        assert token_from("/ws", []) is None

    def test_subprotocol_header_forms(self) -> None:
        assert offered_subprotocols(["bearer, tok"]) == ["bearer", "tok"]
        assert offered_subprotocols(["bearer", "tok"]) == ["bearer", "tok"]
        assert choose_subprotocol(["bearer", "tok"]) == "bearer"
        assert choose_subprotocol(["chat"]) is None

    def test_initial_frame_from_url(self) -> None:
        found = initial_frame("/ws?token=t&resume_from=9&status=failed,running&agent_name=x")
        assert isinstance(found, ClientFrame)
        assert found.resume_from == 9
        assert found.subscribe is not None
        assert found.subscribe.status == [Status.FAILED, Status.RUNNING]
        assert initial_frame("/ws?token=t") is None
        assert isinstance(initial_frame("/ws?resume_from=abc"), FrameError)

    @pytest.mark.parametrize(
        ("query", "named"),
        [
            ("status=bogus", "status.0:"),
            ("status=failed,bogus", "status.1:"),
            ("agent_name=bad%20name!", "agent_name.0:"),
            ("resume_from=abc", "resume_from:"),
            ("resume_from=-1", "resume_from:"),
            ("resume_from=1&resume_from=2", "resume_from: given more than once"),
            ("project=billing", "project: unknown parameter"),
            ("agent=x", "agent: unknown parameter"),
        ],
    )
    def test_a_url_request_that_cannot_be_read_names_its_parameter(
        self, query: str, named: str
    ) -> None:
        found = initial_frame(f"/ws?token=t&{query}")
        assert isinstance(found, FrameError)
        assert found.error == "invalid_query"
        assert found.detail.startswith(named), found.detail


class TestScopeCache:
    async def test_a_scope_younger_than_asked_is_reused_an_older_one_reloaded(self) -> None:
        now = [0.0]
        loads: list[str] = []

        async def load(claims: Claims) -> Scope:
            loads.append(claims.sub)
            return Scope(org=claims.org, user=claims.sub, role=claims.role, agents=frozenset())

        cache = ScopeCache(load, ttl_s=10, clock=lambda: now[0])
        claims = Claims(sub="u", org="acme", role=Role.USER, exp=0)
        first = await cache.get(claims)
        now[0] = 7.0
        assert await cache.get(claims) is first
        assert cache.peek(scope_key(claims), max_age_s=7.5) is first
        # The refresh asks for a scope younger than the TTL: reloaded before it runs out.
        assert cache.peek(scope_key(claims), max_age_s=6.0) is None
        assert await cache.get(claims, max_age_s=6.0) is not first
        assert loads == ["u", "u"]
        now[0] = 17.5
        await cache.get(claims)
        assert loads == ["u", "u", "u"]


class _StreamInfoWhileFanOutGoesOn:
    """A JetStream context whose stream info answers with the stream as it was asked about,
    while fan-out passes another event meanwhile (as the live consumer does under load)."""

    def __init__(self, position: list[int], created: datetime) -> None:
        self.position = position
        self.created = created

    async def stream_info(self, name: str) -> SimpleNamespace:
        last = self.position[0]
        self.position[0] += 1
        state = SimpleNamespace(first_seq=1, last_seq=last)
        return SimpleNamespace(state=state, created=self.created)


async def test_an_event_fanned_out_during_the_stream_check_is_no_reset() -> None:
    made = datetime(2026, 2, 5, tzinfo=UTC)
    position = [100]
    js = _StreamInfoWhileFanOutGoesOn(position, made)

    async def handler(msg: object) -> None: ...

    async def ensure() -> None: ...

    feed = LiveFeed(
        cast(JetStreamContext, js),
        Subjects("t"),
        handler,
        position=lambda: position[0],
        on_reset=lambda found: None,
        ensure_stream=ensure,
        check_s=1.0,
    )
    feed._followed = StreamBounds(1, 100, made)
    assert not await feed.looks_reset()
    js.created = datetime(2026, 2, 6, tzinfo=UTC)
    assert await feed.looks_reset()
