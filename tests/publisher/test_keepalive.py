"""A publisher's link to NATS cut without a reset (a NAT or firewall forgetting it) looked
alive to nats-py for 4-6 minutes (a PING every 120 s, 2 unanswered): every ack timed out
into the spool and nothing reconnected. The keepalive (`ping_interval`, 3 unanswered PINGs)
now drops such a link, reconnects and re-sends the spool."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from shared.publisher import Fleet
from shared.subjects import Subjects
from tests.chaos.infra import port_of, proxy_to, url_through
from tests.publisher.conftest import completed, wait_for_count

#: Held back this long, a chunk never arrives: the link is silent, yet open on both ends.
FROZEN_S = 3600.0


async def test_a_silently_cut_link_is_dropped_and_the_spool_resent(
    nats_url: str, streams: Subjects, js: JetStreamContext, org: str, tmp_path: Path
) -> None:
    async with proxy_to(port_of(nats_url, 4222)) as proxy:
        fleet = Fleet(
            url_through(nats_url, proxy.port),
            org=org,
            subjects=streams,
            spool_dir=tmp_path / "spool",
            ack_timeout=0.5,
            ping_interval=1,
        )
        await fleet.start()
        try:
            assert await fleet.publish(completed(org, "before")) is True
            proxy.latency = FROZEN_S  # the link goes silent; no one is told
            assert await fleet.publish(completed(org, "during")) is False  # spooled
            assert fleet.stats.spooled == 1
            cut = time.monotonic()
            proxy.latency = 0.0  # new connections get through; the old one stays silent
            # Noticed after ~4 unanswered PINGs of 1 s, then reconnected and re-sent.
            # Seconds, where nats-py's defaults took minutes (generous for a loaded machine).
            assert await fleet.flush(25), "the spool was not re-sent: the dead link was kept"
            took = time.monotonic() - cut
            assert took < 20, took
            messages = await wait_for_count(js, streams.events_stream, 2)
            assert [m[2]["execution"]["id"] for m in messages] == ["before", "during"]
        finally:
            await fleet.close(0)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_ping_interval_must_be_whole_seconds(bad: object) -> None:
    with pytest.raises(ValueError, match="ping_interval"):
        Fleet(org="acme", ping_interval=bad)  # type: ignore[arg-type]
