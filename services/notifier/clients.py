"""One connection's state (`Client`) and the fan-out group it shares with like clients."""

from __future__ import annotations

from collections import deque

from websockets.asyncio.server import ServerConnection

from services.notifier.filters import EVERYTHING, Filter
from services.notifier.summary import Outgoing
from shared.access import Scope
from shared.auth import Claims

#: What decides whether a client receives an event: the rows its scope covers, its filters.
GroupKey = tuple[tuple[str, str, str], Filter]


class Client:
    """One authenticated connection: who it is, what it asked for, where it stands."""

    __slots__ = (
        "claims",
        "conn",
        "filter",
        "group",
        "last_seq",
        "live",
        "pending",
        "queued",
        "resumed",
        "scope",
        "sent_event",
        "told_live",
    )

    def __init__(self, conn: ServerConnection, claims: Claims, scope: Scope) -> None:
        self.conn = conn
        self.claims = claims
        self.scope = scope
        #: Set through `Hub.set_filter`, which moves the client to its new group.
        self.filter: Filter = EVERYTHING
        self.group: Group | None = None
        #: Until live, events are held in `pending` (hello window, then replay).
        self.live = False
        self.pending: deque[Outgoing] = deque()
        #: Bytes in its transport's write buffer when fan-out last wrote to it (or looked again,
        #: over budget); `Hub.queued_bytes` is the sum over all clients.
        self.queued = 0
        #: Highest stream seq sent to this client: the dedupe mark at the replay→live hand-over.
        self.last_seq = 0
        #: Whether any event frame (live, held or replayed) was written to this client; until
        #: then a late `resume_from` can still be honoured (`Hub.hold`).
        self.sent_event = False
        #: Whether a `resume_from` was taken: one per connection, each costs a replay.
        self.resumed = False
        #: The feed's state as last told in `feed_status` (a client assumes live until told).
        self.told_live = True


class Group:
    """Clients whose scopes cover the same rows and who asked for the same filters."""

    __slots__ = ("filter", "key", "members", "scope")

    def __init__(self, key: GroupKey, scope: Scope, flt: Filter) -> None:
        self.key = key
        #: Any member's scope: they all cover the same rows (`Scope.cache_key`).
        self.scope = scope
        self.filter = flt
        self.members: dict[Client, None] = {}
