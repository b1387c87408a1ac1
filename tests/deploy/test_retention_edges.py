"""Retention with the values operators really set: a retention meant as "keep forever"."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime

from shared.db import connect
from shared.retention import apply_retention, cutoff_for
from tests.deploy.test_retention import NOW, counts, seed


def test_a_retention_longer_than_the_calendar_expires_nothing() -> None:
    for days in (1_000_000, 2_147_483_647):  # before year 1; past what timedelta holds
        assert cutoff_for(NOW, days) <= datetime(1, 1, 2, tzinfo=UTC)
    assert cutoff_for(NOW, 7) == datetime(2026, 2, 22, tzinfo=UTC)


async def test_an_org_kept_forever_does_not_stop_the_others(fresh_database_url: str) -> None:
    # Orgs run in name order: the "keep forever" one comes first.
    forever, short = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    conn = await connect(fresh_database_url)
    try:
        await seed(conn, forever, 2_147_483_647, [1, 5000])
        await seed(conn, short, 3, [1, 10])
        dry = await apply_retention(conn, now=NOW, dry_run=True)
        assert [(o.org, o.executions) for o in dry.orgs] == [(forever, 0), (short, 1)]
        report = await apply_retention(conn, now=NOW)
        assert [(o.org, o.executions) for o in report.orgs] == [(forever, 0), (short, 1)]
        assert await counts(conn, forever) == (2, 4, 2)
        assert await counts(conn, short) == (1, 2, 1)
    finally:
        await conn.close()


def test_an_org_that_does_not_exist_is_named_not_a_silent_zero(database_url: str) -> None:
    """`--org acme-typo` reported "0 org(s)" and exited 0: a nightly job with a typo never
    deleted anything, and nothing said so."""
    command = ["retention", "--dry-run", "--database-url", database_url, "--org", "no-such-org"]
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "no such org: no-such-org" in done.stderr
