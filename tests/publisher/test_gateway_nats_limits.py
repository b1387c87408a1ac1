"""Events NATS can never take are not answered 503 ("resend"), on real nats-servers.

One bigger than the server's max_payload refuses the batch before anything is published
(413, naming it); one JetStream refuses as a bad request (here: over the stream's
max_msg_size) is listed as `refused` in a 422 while the rest of the batch is published.
"""

from __future__ import annotations

from typing import Any

import httpx

from shared.subjects import Subjects
from tests.chaos.infra import own_nats
from tests.publisher.conftest import gateway_app, stream_messages
from tests.publisher.test_gateway import started


def _big(org: str, run_id: str, size: int) -> dict[str, Any]:
    return started(org, "a", run_id, execution_log="x" * size)


async def test_an_event_over_the_servers_max_payload_refuses_the_batch_before_publishing(
    database_url: str, api_key: str, org: str
) -> None:
    subjects = Subjects("limits")
    async with (
        own_nats("max_payload: 65536\n") as server,
        gateway_app(server.url, database_url, subjects) as (http, js),
    ):
        # Under the gateway's own per-event limit (900 KB), over this server's 64 KiB.
        batch = [started(org, "a", "r1"), _big(org, "r2", 70_000), started(org, "a", "r3")]
        response = await http.post("/api/events", json=batch, headers={"X-API-Key": api_key})
        assert response.status_code == 413, response.text
        body = response.json()
        assert [e["index"] for e in body["errors"]] == [1]
        assert "65536" in body["errors"][0]["message"]
        assert "nothing was published" in body["detail"]
        assert await stream_messages(js, subjects.events_stream) == []
        # The connection is still usable: the batch without the big event goes through.
        response = await http.post(
            "/api/events", json=[batch[0], batch[2]], headers={"X-API-Key": api_key}
        )
        assert response.status_code == 202, response.text


async def test_a_header_that_takes_an_event_over_max_payload_counts_too(
    database_url: str, api_key: str, org: str
) -> None:
    # The body alone fits, its Nats-Msg-Id header does not: nats-py would send it and the
    # server would close the connection.
    subjects = Subjects("limits")
    async with (
        own_nats("max_payload: 65536\n") as server,
        gateway_app(server.url, database_url, subjects) as (http, _),
    ):
        probe = _big(org, "r1", 0)
        fixed = len(httpx.Request("POST", "/", json=probe).content)
        event = _big(org, "r1", 65536 - fixed - 5)
        response = await http.post("/api/events", json=event, headers={"X-API-Key": api_key})
        assert response.status_code == 413, response.text


async def test_an_event_jetstream_refuses_for_good_is_listed_and_the_rest_published(
    nats_url: str, database_url: str, api_key: str, org: str, subjects: Subjects
) -> None:
    async with gateway_app(nats_url, database_url, subjects) as (http, js):
        info = await js.stream_info(subjects.events_stream)
        info.config.max_msg_size = 4096
        await js.update_stream(info.config)
        batch = [started(org, "a", "r1"), _big(org, "r2", 8000), started(org, "a", "r3")]
        response = await http.post("/api/events", json=batch, headers={"X-API-Key": api_key})
        assert response.status_code == 422, response.text
        body = response.json()
        assert [(r["index"], r["event_id"]) for r in body["refused"]] == [(1, batch[1]["event_id"])]
        assert (body["accepted"], body["refused_count"]) == (2, 1)
        stored = [m[2]["event_id"] for m in await stream_messages(js, subjects.events_stream)]
        assert stored == [batch[0]["event_id"], batch[2]["event_id"]]
