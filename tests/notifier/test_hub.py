"""Fan-out by group, with one pre-built frame: no NATS or sockets needed for these rules."""

from __future__ import annotations

from typing import Any, cast

import pytest
from websockets.frames import OP_TEXT, Frame
from websockets.protocol import State

from services.notifier.clients import Client
from services.notifier.filters import EVERYTHING, Filter
from services.notifier.hub import Hub, close_reason, text_frame
from services.notifier.metrics import Metrics
from services.notifier.summary import EventMeta, Outgoing
from shared.access import Scope
from shared.auth import Claims, Role
from shared.events import Status


class _Transport:
    def __init__(self) -> None:
        self.data = bytearray()

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.data += data


class _Protocol:
    state = State.OPEN

    def __init__(self) -> None:
        self.control: list[bytes] = []

    def send_text(self, data: bytes) -> None:
        self.control.append(data)


class _Conn:
    def __init__(self) -> None:
        self.protocol = _Protocol()
        self.transport = _Transport()

    def send_data(self) -> None:
        pass


def _client(hub: Hub, scope: Scope) -> Client:
    claims = cast(Any, Claims).model_construct(org=scope.org, sub=scope.user, role=scope.role)
    client = Client(cast(Any, _Conn()), claims, scope)
    client.live = True
    hub.add(client)
    return client


def _event(seq: int, agent: str, status: Status, payload: bytes = b'{"x":1}') -> Outgoing:
    meta = EventMeta(
        org="acme",
        agent=agent,
        status=status,
        execution_id=f"e{seq}",
        triggered_by="schedule",
        is_component=False,
    )
    return Outgoing(seq=seq, meta=meta, payload=payload)


def _got(client: Client) -> bytes:
    return bytes(cast(Any, client.conn).transport.data)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_text_frame_is_what_websockets_would_send(size: int) -> None:
    payload = b"x" * size
    assert text_frame(payload) == Frame(OP_TEXT, payload).serialize(mask=False, extensions=[])


def test_groups_decide_once_and_every_member_gets_the_same_frame() -> None:
    hub = Hub(Metrics(), queue_bytes=1 << 20, pending_max=10, slow_close_grace_s=1)
    admin = Scope(org="acme", user="a", role=Role.ADMIN, agents=None)
    other_admin = Scope(org="acme", user="b", role=Role.ADMIN, agents=None)
    user = Scope(org="acme", user="u", role=Role.USER, agents=frozenset({"x"}))
    a1, a2, u = _client(hub, admin), _client(hub, other_admin), _client(hub, user)
    failed_only = _client(hub, admin)
    hub.set_filter(failed_only, Filter(statuses=frozenset({Status.FAILED})))
    # Both admins unfiltered share a group; the filtered admin and the user have their own.
    assert len(hub.groups) == 3
    assert a1.group is a2.group

    hub.publish(_event(1, "y", Status.RUNNING, b"r" * 300))
    frame = text_frame(b"r" * 300)
    assert _got(a1) == _got(a2) == frame
    assert _got(u) == _got(failed_only) == b""

    hub.publish(_event(2, "x", Status.FAILED))
    assert _got(u) == _got(failed_only) == text_frame(b'{"x":1}')
    assert a1.last_seq == u.last_seq == 2

    hub.set_filter(failed_only, EVERYTHING)
    assert failed_only.group is a1.group
    assert len(hub.groups) == 2
    hub.remove(u)
    assert u.group is None
    assert len(hub.groups) == 1
    hub.publish(_event(3, "x", Status.RUNNING))
    assert _got(failed_only).endswith(text_frame(b'{"x":1}'))
    assert failed_only.last_seq == 3
    assert _got(u) == text_frame(b'{"x":1}')


def test_ring_read_back_at_startup_claims_only_what_it_keeps() -> None:
    hub = Hub(Metrics(), queue_bytes=1 << 20, pending_max=10, slow_close_grace_s=1, ring_size=3)
    recent = [_event(seq, "x", Status.RUNNING) for seq in range(5, 10)]
    hub.start_at(10, recent, floor=4)
    # Only 7..9 fit: a resume needing 6 must read the stream.
    assert hub.ring_floor == 6
    assert hub.replay_from_ring(6) is None
    assert [out.seq for out in hub.replay_from_ring(7) or []] == [7, 8, 9]
    hub.start_at(10)
    assert hub.replay_from_ring(10) is None
    assert hub.replay_from_ring(11) == []


def test_a_new_scope_moves_the_client_and_held_events_meet_todays_rules() -> None:
    hub = Hub(Metrics(), queue_bytes=1 << 20, pending_max=10, slow_close_grace_s=1)
    both = Scope(org="acme", user="u", role=Role.USER, agents=frozenset({"x", "y"}))
    live = _client(hub, both)
    held = _client(hub, both)
    held.live = False
    hub.publish(_event(1, "y", Status.RUNNING))
    hub.publish(_event(2, "x", Status.FAILED))
    assert _got(live) == text_frame(b'{"x":1}') * 2
    # The share on y is gone, and the held client's first frame asked for failures only.
    only_x = Scope(org="acme", user="u", role=Role.USER, agents=frozenset({"x"}))
    for client in (live, held):
        hub.set_scope(client, only_x)
    hub.set_filter(held, Filter(statuses=frozenset({Status.FAILED})))
    assert live.group is not None
    assert live.group.scope is only_x
    hub.publish(_event(3, "y", Status.FAILED, b'{"y":3}'))
    hub.publish(_event(4, "x", Status.RUNNING, b'{"x":4}'))
    assert _got(live) == text_frame(b'{"x":1}') * 2 + text_frame(b'{"x":4}')
    hub.go_live(held, 0)
    # Of the held events only seq 2 (x, failed) is still for this client.
    assert _got(held) == text_frame(b'{"x":1}')
    assert held.last_seq == 2
    assert held.live


@pytest.mark.parametrize("text", ["short", "a" * 200, "é" * 100, "x" + "😀" * 40])
def test_close_reason_fits_a_close_frame_and_keeps_whole_characters(text: str) -> None:
    reason = close_reason(text)
    assert len(reason.encode()) <= 123
    assert text.startswith(reason)
    assert len(reason.encode()) > 123 - 4 or reason == text
