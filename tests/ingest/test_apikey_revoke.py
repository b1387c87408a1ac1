"""`fleetwatch apikey revoke` takes the key itself as well as its id: an operator revoking a
leaked key pastes what leaked, and was told "no active key" while it kept working."""

from __future__ import annotations

import asyncio

import pytest

from services.ingest import apikeys
from shared.db import connect


@pytest.mark.parametrize("named", ["whole", "start", "id"])
async def test_revoke_by_the_whole_key_its_start_or_its_id(
    database_url: str, org: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = await connect(database_url)
    try:
        new = await apikeys.create_key(conn, org, "leaked")
        assert await apikeys.org_for_key(conn, new.key) == org
        given = {"whole": new.key, "start": f"fwk_{new.key_id}", "id": new.key_id}[named]
        code = await asyncio.to_thread(
            apikeys.main, ["--database-url", database_url, "revoke", "--org", org, given]
        )
        out, err = capsys.readouterr()
        assert (code, err) == (0, "")
        assert out == f"revoked {new.key_id}\n"
        assert await apikeys.org_for_key(conn, new.key) is None
    finally:
        await conn.close()


def test_a_secret_holding_underscores_still_names_its_id() -> None:
    assert apikeys.named_key_id("fwk_00ab_c_d_e") == "00ab"
    assert apikeys.named_key_id(" 00ab\n") == "00ab"
    assert apikeys.named_key_id("other_00ab") == "other_00ab"
