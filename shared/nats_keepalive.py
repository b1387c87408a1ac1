"""How every fleetwatch NATS connection tells a live link from a dead one.

nats-py sends a PING every `ping_interval` seconds and, once `max_outstanding_pings` are
unanswered, drops the connection and reconnects. Its defaults (120 s, 2) left a link cut
without a reset (a NAT or firewall forgetting it, a frozen peer) looking alive for 4-6
minutes: ingest fetched nothing, the notifier told its clients the feed was live, and a
publisher's acks timed out into its spool without reconnecting.
"""

from __future__ import annotations

from typing import NamedTuple

#: Unanswered PINGs after which a connection is taken as dead.
MAX_OUTSTANDING_PINGS = 3
#: Seconds between PINGs: a dead link is noticed within about 4 of them.
DEFAULT_PING_INTERVAL_S = 10


class NatsKeepalive(NamedTuple):
    """`nats.connect(..., ping_interval=k.ping_interval, max_outstanding_pings=...)`."""

    ping_interval: int = DEFAULT_PING_INTERVAL_S
    max_outstanding_pings: int = MAX_OUTSTANDING_PINGS
