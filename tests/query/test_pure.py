"""Pure logic of the query service: filters, cursor, SQL building, stats folding, rate limit."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.query.cursor import CursorError, CursorKey, decode_cursor, encode_cursor
from services.query.filters import (
    FilterError,
    ListFilters,
    escape_like,
    parse_agent_list_query,
    parse_list_query,
    parse_time,
)
from services.query.routes.listing import proven_matches
from services.query.stats import StatsGroup, TimelineRow, fill_timeline, fold_stats
from services.query.where import after, filtered, search_agents
from shared.ratelimit import RateLimiter


def parse(*items: tuple[str, str]):  # type: ignore[no-untyped-def]
    return parse_list_query(items)


def test_repeated_and_comma_values_are_ored_and_deduplicated() -> None:
    q = parse(("status", "failed"), ("status", "running,failed"), ("agent_name", "a"))
    assert q.filters.status == ("failed", "running")
    assert q.filters.agent_name == ("a",)
    assert q.page.limit == 50


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ((("status", "done"),), "status"),
        ((("limit", "300"),), "limit"),
        ((("search", "a"), ("search", "b")), "search"),
        ((("cursor", "x"), ("offset", "5")), "offset"),
        ((("start_time", "2026-13-01"),), "start_time"),
        ((("colour", "red"),), "colour"),
        ((("project", ""),), "project"),
    ],
)
def test_bad_values_name_their_field(items: tuple[tuple[str, str], ...], field: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_list_query(items)
    assert caught.value.field == field


def test_times_accept_z_and_naive_as_utc() -> None:
    q = parse(("start_time", "2026-02-05T10:00:00Z"), ("end_time", "2026-02-06"))
    assert q.filters.start_time == datetime(2026, 2, 5, 10, tzinfo=UTC)
    assert q.filters.end_time == datetime(2026, 2, 6, tzinfo=UTC)
    assert q.filters.applied() == {
        "start_time": "2026-02-05T10:00:00Z",
        "end_time": "2026-02-06T00:00:00Z",
    }


@pytest.mark.parametrize("blank", ["", "   ", "\t\n "])
def test_blank_search_is_refused_not_dropped(blank: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse(("search", blank))
    assert caught.value.field == "search"
    assert parse(("search", "  refund ")).filters.search == "refund"


def test_path_agent_name_is_one_name() -> None:
    query = parse_agent_list_query("a-1", [("status", "failed"), ("limit", "5")])
    assert query.filters.agent_name == ("a-1",)
    assert query.filters.status == ("failed",)
    assert query.page.limit == 5
    for name in ("a,b", "a,", "", "a b", "x" * 65):
        with pytest.raises(FilterError) as caught:
            parse_agent_list_query(name, [])
        assert (caught.value.where, caught.value.field) == ("path", "name")
    with pytest.raises(FilterError) as caught:
        parse_agent_list_query("a", [("agent_name", "b")])
    assert (caught.value.where, caught.value.field) == ("query", "agent_name")


def test_search_commonness_is_judged_within_the_scope() -> None:
    assert search_agents(None, ()) is None
    assert search_agents(None, ("a",)) == frozenset({"a"})
    assert search_agents(frozenset({"a", "b"}), ()) == frozenset({"a", "b"})
    assert search_agents(frozenset({"a", "b"}), ("b", "c")) == frozenset({"b"})


def test_an_empty_page_proves_no_match() -> None:
    assert proven_matches(0, 0, has_more=False) == 0
    assert proven_matches(40, 0, has_more=False) == 0
    assert proven_matches(40, 3, has_more=False) == 43
    assert proven_matches(40, 10, has_more=True) == 51


@given(st.text(max_size=50))
def test_escape_like_leaves_no_bare_metacharacter(text: str) -> None:
    escaped = escape_like(text)
    i = 0
    while i < len(escaped):
        if escaped[i] == "\\":
            assert escaped[i + 1] in "\\%_"
            i += 2
            continue
        assert escaped[i] not in "%_"
        i += 1


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2190, 1, 1), timezones=st.just(UTC)
    ),
    # Stored ids never hold NUL (PostgreSQL text cannot: cursors holding one are refused)
    # nor lone surrogates (JSON text cannot carry them).
    st.text(
        st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
        min_size=1,
        max_size=200,
    ),
)
def test_cursor_round_trips(moment: datetime, ident: str) -> None:
    key = CursorKey(moment, ident)
    assert decode_cursor(encode_cursor(key)) == key


@pytest.mark.parametrize("text", ["", "abc", "e30", "eyJ2IjoyfQ", "!!!"])
def test_foreign_cursors_are_refused(text: str) -> None:
    with pytest.raises(CursorError):
        decode_cursor(text)


def _forged(moment: str) -> str:
    raw = orjson.dumps({"v": 1, "t": moment, "i": "x"})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_cursor_times_past_the_utc_range_are_refused(moment: str) -> None:
    with pytest.raises(CursorError):
        decode_cursor(_forged(moment))


def test_cursor_times_come_back_in_utc() -> None:
    key = decode_cursor(_forged("2026-02-05T12:00:00+02:00"))
    assert key.sort_at == datetime(2026, 2, 5, 10, tzinfo=UTC)
    assert key.sort_at.utcoffset() == timedelta(0)
    edge = decode_cursor(_forged("0001-01-01T00:00:00-01:00"))
    assert edge.sort_at == datetime(1, 1, 1, 1, tzinfo=UTC)


def test_where_always_starts_with_org_and_binds_every_value() -> None:
    filters = ListFilters(
        agent_name=("a",),
        status=("failed", "running"),
        triggered_by=("api", "other"),
        search="50%' OR 1=1 --",
    )
    where = filtered("acme", frozenset({"a", "b"}), filters)
    assert where.clauses[0] == "org = $1"
    assert "OR 1=1" not in where.sql
    assert "%50\\%' OR 1=1 --%" in where.args
    assert len(set(re.findall(r"\$\d+", where.sql))) == len(where.args)
    paged = after(where, CursorKey(datetime(2026, 1, 1, tzinfo=UTC), "x"))
    assert paged.clauses[-1].startswith("(sort_at, id) < (")
    assert len(where.args) + 2 == len(paged.args)
    assert filtered("acme", frozenset(), ListFilters()).clauses[-1] == "false"


def test_fold_stats_counts_outcomes_triggers_and_agents() -> None:
    groups = [
        StatsGroup("a", "manual", "success", 3, 0.3, 300.0, 3),
        StatsGroup("a", "webhook", "failed", 1, 0.1, 50.0, 1),
        StatsGroup("b", None, "running", 2, 0.0, 0.0, 0),
    ]
    stats = fold_stats(groups, running_now=5, display_names={"a": "Alpha"})
    assert stats["total"] == 6
    assert stats["successful"] == 3
    assert stats["failed"] == 1
    assert stats["running"] == 5
    assert stats["success_rate"] == 0.75
    assert stats["avg_duration_ms"] == 87.5
    assert stats["by_trigger"]["manual"] == 3
    assert stats["by_trigger"]["other"] == 3
    assert stats["by_agent"][0] == {
        "agent_name": "a",
        "display_name": "Alpha",
        "count": 4,
        "failed": 1,
        "success_rate": 0.75,
        "cost": 0.4,
    }
    assert stats["by_agent"][1]["success_rate"] is None
    assert fold_stats([], running_now=0)["avg_duration_ms"] is None


def test_timeline_fills_gaps_with_zeros() -> None:
    start = datetime(2026, 2, 5, 10, 30, tzinfo=UTC)
    end = start + timedelta(hours=4)
    rows = [TimelineRow(datetime(2026, 2, 5, 12, tzinfo=UTC), "failed", 2, 0.5)]
    series = fill_timeline(rows, start=start, end=end, bucket="hour")
    assert [b["bucket"] for b in series] == [f"2026-02-05T{h}:00:00Z" for h in (10, 11, 12, 13, 14)]
    assert [b["total"] for b in series] == [0, 0, 2, 0, 0]
    assert series[2]["failed"] == 2
    assert series[2]["cost"] == 0.5
    days = fill_timeline([], start=start, end=start + timedelta(days=2), bucket="day")
    assert len(days) == 3


def test_timeline_counts_rows_dated_after_now_in_the_current_bucket() -> None:
    """A publisher's clock a few minutes ahead dates a run in the next hour: the stats count it
    in the window, and the timeline dropped it, so its buckets no longer added up to them."""
    start = datetime(2026, 2, 5, 10, 30, tzinfo=UTC)
    end = datetime(2026, 2, 5, 12, 58, tzinfo=UTC)
    ahead = [
        TimelineRow(datetime(2026, 2, 5, 13, tzinfo=UTC), "success", 3, 0.25),
        TimelineRow(datetime(2026, 2, 5, 12, tzinfo=UTC), "success", 1, 0.5),
    ]
    series = fill_timeline(ahead, start=start, end=end, bucket="hour")
    assert [b["bucket"][11:13] for b in series] == ["10", "11", "12"]
    assert series[-1]["total"] == 4
    assert series[-1]["success"] == 4
    assert series[-1]["cost"] == 0.75


def test_rate_limiter_refills_over_time() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert limiter.check("x") is None
    assert limiter.check("x") is None
    wait = limiter.check("x")
    assert wait == pytest.approx(1.0)
    assert limiter.check("y") is None
    now[0] = 1.0
    assert limiter.check("x") is None


def test_times_in_either_case_of_rfc_3339_are_read() -> None:
    """RFC 3339 allows `t` and `z` in lower case: `...T10:00:00z` was a 422."""
    want = datetime(2026, 2, 5, 10, tzinfo=UTC)
    for text in ("2026-02-05T10:00:00z", "2026-02-05t10:00:00Z", " 2026-02-05T10:00:00Z "):
        assert parse_time("start_time", text) == want
    with pytest.raises(FilterError) as refused:
        parse_time("start_time", "yesterdayZ")
    assert "'yesterdayZ'" in str(refused.value)
