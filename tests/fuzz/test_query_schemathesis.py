"""Schemathesis over the query service's OpenAPI: every operation, valid tokens of each role
(admin, user, client), generated valid and invalid input: no 5xx, and every documented answer
matches its schema.

A real `fleetwatch query` process serves a seeded world (tests/isolation/world.py). Each
operation is fuzzed twice: with free path parameters (mostly unknown ids and names) and with
path parameters pinned to rows that exist, so the handlers past the 404 run too.

Terminate publishes a NATS request to the agent: a responder in the test answers it (accepting),
so `not_a_server_error` holds for that operation as for every other one — without a responder
the documented answer is 503 "agent unreachable", which is a 5xx by definition and would have
to be excluded from the check.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from shared.db import connect
from shared.events import TerminateReply
from shared.subjects import Subjects
from tests.isolation.world import World, query_env, seed_world
from tests.procs import Service, running

pytestmark = pytest.mark.e2e

ROLES = ("a-admin", "a-owner", "a-client")
RANDOM_EXAMPLES = 12
PINNED_EXAMPLES = 6
NEGATIVE_EXAMPLES = 6
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest_asyncio.fixture(scope="module")
async def fuzz_target(nats_url: str, database_url: str) -> AsyncIterator[tuple[Service, World]]:
    """A seeded query process, plus an agent that accepts every terminate request."""
    conn = await connect(database_url)
    try:
        world = await seed_world(conn)
    finally:
        await conn.close()
    env = query_env(nats_url, database_url)
    subjects = Subjects(env["FLEETWATCH_SUBJECT_PREFIX"])
    nc = await nats.connect(nats_url)

    async def accept(msg: Any) -> None:
        await msg.respond(TerminateReply(accepted=True, reason=None).model_dump_json().encode())

    await nc.subscribe(f"{subjects.prefix}.commands.>", cb=accept)
    await nc.flush()
    try:
        async with running("query", env) as service:
            yield service, world
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def api(fuzz_target: tuple[Service, World]) -> Any:
    service, _ = fuzz_target
    return schemathesis.openapi.from_url(service.url + "/openapi.json")


def _pinned(world: World, path: str) -> dict[str, Any]:
    """Path parameters naming rows of org A that exist (the first one visible to its owner)."""
    row = next(r for r in world.rows if r["org"] == world.org_a and r["agent_name"] == "alpha")
    running_row = next(
        r
        for r in world.rows
        if r["org"] == world.org_a and r["status"] == "running" and r["agent_name"] == "beta"
    )
    values: dict[str, Any] = {}
    if "{execution_id}" in path:
        values["execution_id"] = running_row["id"] if path.endswith("terminate") else row["id"]
    if "{name}" in path:
        values["name"] = row["workflow"] if "workflows" in path else "beta"
        if "projects" in path:
            values["name"] = "alpha" if row["project"] is None else row["project"]
    if "{user}" in path:
        values["user"] = "someone"
    return values


class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.statuses: dict[int, int] = {}
        self.by_operation: dict[tuple[str, int], int] = {}

    def add(self, label: str, status: int) -> None:
        with self.lock:
            self.calls += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            key = (label, status)
            self.by_operation[key] = self.by_operation.get(key, 0) + 1


@pytest.fixture(scope="module")
def tally() -> Iterator[_Tally]:
    found = _Tally()
    yield found
    print(f"\nschemathesis: {found.calls} calls, statuses {sorted(found.statuses.items())}")


def _operations(api: Any) -> list[Any]:
    return [result.ok() for result in api.get_all_operations()]


def test_schema_lists_every_endpoint(api: Any) -> None:
    labels = {op.label for op in _operations(api)}
    for expected in (
        "GET /api/executions",
        "GET /api/executions/stats",
        "GET /api/executions/timeline",
        "GET /api/executions/export",
        "GET /api/executions/{execution_id}",
        "GET /api/executions/{execution_id}/log",
        "POST /api/executions/{execution_id}/terminate",
        "GET /api/agents",
        "GET /api/agents/{name}/executions",
        "PUT /api/agents/{name}",
        "PUT /api/agents/{name}/shares/{user}",
        "DELETE /api/agents/{name}/shares/{user}",
        "GET /api/workflows",
        "GET /api/workflows/{name}/stats",
        "GET /api/projects",
        "GET /api/projects/{name}/stats",
    ):
        assert expected in labels, (expected, sorted(labels))


@pytest.mark.parametrize("role", ROLES)
async def test_every_operation_no_5xx_and_schema_conformant(
    api: Any, fuzz_target: tuple[Service, World], role: str, tally: _Tally
) -> None:
    # Schemathesis calls are blocking: they run in a thread while this loop keeps serving the
    # terminate responder.
    failures = await asyncio.to_thread(_fuzz_all, api, fuzz_target, role, tally)
    assert not failures, "\n\n".join(failures)


def _fuzz_all(api: Any, fuzz_target: tuple[Service, World], role: str, tally: _Tally) -> list[str]:
    service, world = fuzz_target
    caller = world.callers[role]
    session = requests.Session()
    session.headers.update(caller.headers)
    failures: list[str] = []

    for operation in _operations(api):
        pinned = _pinned(world, operation.path)
        plans: list[tuple[Any, int, bool]] = [
            (operation.as_strategy(GenerationMode.POSITIVE), RANDOM_EXAMPLES, False),
            (operation.as_strategy(GenerationMode.NEGATIVE), NEGATIVE_EXAMPLES, True),
        ]
        if pinned:
            strategy = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=pinned)
            plans.append((strategy, PINNED_EXAMPLES, False))
        for strategy, examples, negative in plans:

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                response = case.call(base_url=service.url, session=session, timeout=20)
                tally.add(case.operation.label, response.status_code)
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                # No invalid input exists for it (no parameters, or free-form strings only).
                if not negative:
                    failures.append(f"{operation.label} ({role}): no valid input generated")
            except Exception as exc:  # collect all operations' failures, then fail once
                failures.append(f"{operation.label} ({role}): {str(exc)[:1500]}")
    session.close()
    return failures


def test_tally_saw_real_answers(tally: _Tally) -> None:
    """The fuzz runs above reached the handlers: successes and refusals both happened."""
    assert tally.calls > 300
    assert tally.statuses.get(200, 0) > 50, tally.statuses
    assert any(400 <= s < 500 for s in tally.statuses), tally.statuses
    # Terminate got past the checks to the agent, which accepted.
    assert tally.by_operation.get(("POST /api/executions/{execution_id}/terminate", 200)), (
        tally.by_operation
    )
