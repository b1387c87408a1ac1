"""A search's cost does not grow with its number of words (migration 0015): over long texts,
a 40-word term costs about what a one-word term does, and the answers stay exact, matches
far into the texts included."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from shared.db import connect
from tests.query.helpers import add_org, client_for, insert, make_rows, settings_for
from tests.query.helpers import token as make_token

ORG = "qc-org"
ADMIN = make_token(ORG, "ada", "admin")
ROWS = 500  # the function's whole sample
TEXT = 16 * 1024
DEEP = 10_000  # characters into a text: past the sample's slice, found all the same
#: Words that occur nowhere (the texts hold only a-j and spaces).
WORDS = [f"zq{i}" for i in range(10, 50)]


def _text(rnd: random.Random) -> str:
    # A 2 KB block repeated: compresses well (a quick insert) and is detoasted in full.
    block = "".join(rnd.choice("abcdefghij ") for _ in range(2048))
    return (block * (TEXT // len(block) + 1))[:TEXT]


@pytest_asyncio.fixture(scope="module")
async def rows(database_url: str) -> list[dict[str, Any]]:
    conn = await connect(database_url)
    try:
        await add_org(conn, ORG)
        rnd = random.Random(21)
        data = make_rows(ORG, ("a1", "a2"), ROWS, seed=21)
        for i, row in enumerate(data):
            row["message"] = _text(rnd)
            row["response"] = _text(rnd) if i % 2 else None
        # A phrase deep in one text, and a word deep in ten (common in the sample, unseen by
        # its slice): the answers must not change.
        data[7]["message"] = data[7]["message"][:DEEP] + " needle in haystack " + "a" * 100
        for row in data[100:110]:
            row["message"] = row["message"][:DEEP] + " deepword " + "b" * 100
        await insert(conn, data)
        await conn.execute("ANALYZE executions")
        return data
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module")
async def client(database_url: str, nats_url: str, rows: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings_for(database_url, nats_url, count_ttl_s=0)) as found:
        yield found


def _expected(rows: list[dict[str, Any]], term: str) -> list[str]:
    hits = [
        r
        for r in rows
        if any(term.lower() in (r[f] or "").lower() for f in ("message", "response"))
    ]
    hits.sort(key=lambda r: (r["started_at"] or r["first_seen_at"], r["id"]), reverse=True)
    return [r["id"] for r in hits]


async def _search(client: httpx.AsyncClient, term: str, limit: int = 1) -> tuple[float, Any]:
    started = time.perf_counter()
    reply = await client.get(
        "/api/executions", params={"search": term, "limit": limit}, headers=ADMIN
    )
    elapsed = time.perf_counter() - started
    assert reply.status_code == 200, (term[:40], reply.status_code, reply.text[:200])
    return elapsed, reply.json()


async def _median(client: httpx.AsyncClient, term: str) -> float:
    await _search(client, term)  # warm: caches, plans
    return statistics.median([(await _search(client, term))[0] for _ in range(3)])


async def test_many_words_cost_about_one_word(client: httpx.AsyncClient) -> None:
    many = " ".join(WORDS)  # 40 words, 199 characters
    assert len(many) <= 200
    one = await _median(client, WORDS[-1])
    repeated = await _median(client, " ".join([WORDS[0]] * 40)[:200])
    forty = await _median(client, many)
    # Before 0015 every word was one more pass over the sample's whole texts: 40 words cost
    # ~40 one-word searches (seconds here). Generous: under load the ratio stays near 1-2.
    for cost in (forty, repeated):
        assert cost < 4 * one + 0.3, (cost, one)


async def test_answers_are_exact_past_the_sample_slice(
    client: httpx.AsyncClient, rows: list[dict[str, Any]]
) -> None:
    for term in ("needle in haystack", "haystack needle", "deepword", "DEEPWORD bbb", "zq10"):
        _, body = await _search(client, term, limit=200)
        assert [e["id"] for e in body["executions"]] == _expected(rows, term), term
        assert body["total_count"] == len(_expected(rows, term)), term
