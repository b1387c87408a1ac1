"""Retention's test of a running execution's steps stays one primary-key probe per row.

As a plain `EXISTS` inside `NOT (... OR EXISTS ...)`, the planner may hash the whole steps
table (every org's) once per delete batch instead: it did with a `work_mem` of 64 MB, a
common production value, at ~1 s per batch on 3M steps against 3.5 ms probing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared import retention
from shared.db import connect


@pytest.mark.parametrize("sql", ["DELETE_EXECUTIONS_SQL", "COUNT_SQL"])
async def test_steps_are_probed_per_row_not_hashed_whole(fresh_database_url: str, sql: str) -> None:
    conn = await connect(fresh_database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL work_mem = '64MB'")
            statement = getattr(retention, sql)
            args: list[object] = ["acme", datetime.now(UTC)]
            if "$3" in statement:
                args.append(5000)
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {statement}", *args))
    finally:
        await conn.close()
    assert "hashed SubPlan" not in plan, plan
    assert "component_executions_pkey on component_executions s" in plan, plan
