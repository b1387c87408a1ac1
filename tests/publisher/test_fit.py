"""Pure: captured text is cut by its encoded size at a character boundary, NUL replaced;
which publish failures are permanent."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.events import MAX_LOG
from shared.publisher.checks import is_permanent, settle
from shared.publisher.fit import NUL_REPLACEMENT, fit_text, scrub_nul


def encoded_size(text: str) -> int:
    return len(orjson.dumps(text)) - 2


def test_log_of_wide_characters_is_cut_by_bytes_not_characters() -> None:
    log = "漢" * 400_000  # 400k characters, under MAX_LOG; 1.2 MB as UTF-8
    cut = fit_text(log, MAX_LOG)
    assert cut is not None
    assert len(cut.encode()) <= MAX_LOG
    assert cut == "漢" * (MAX_LOG // 3)


def test_escapes_count_as_what_they_cost_on_the_wire() -> None:
    cut = fit_text('"\x01' * 1000, 100)
    assert cut is not None
    assert encoded_size(cut) <= 100
    assert cut == '"\x01' * 12 + '"'  # 12 * (2 + 6) + 2 bytes; the next \u0001 would not fit


def test_nul_is_replaced_everywhere() -> None:
    assert fit_text("a\x00b", 10) == f"a{NUL_REPLACEMENT}b"
    assert scrub_nul({"k\x00": ["x\x00", 1, None, {"y": "\x00"}]}) == {
        f"k{NUL_REPLACEMENT}": [f"x{NUL_REPLACEMENT}", 1, None, {"y": NUL_REPLACEMENT}]
    }
    assert fit_text(None, 10) is None


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=["Cs"])), limit=st.integers(0, 60))
def test_cut_is_the_longest_prefix_that_fits(text: str, limit: int) -> None:
    clean = text.replace("\x00", NUL_REPLACEMENT)
    cut = fit_text(text, limit)
    assert cut is not None
    assert clean.startswith(cut)
    assert encoded_size(cut) <= limit
    if cut != clean:
        assert encoded_size(clean[: len(cut) + 1]) > limit


def test_only_refusals_for_good_are_permanent_and_settle_walks_past_them() -> None:
    too_big = nats.errors.MaxPayloadError()
    bad_request = nats.js.errors.BadRequestError(code=400, err_code=10054)
    timeout = TimeoutError()
    assert is_permanent(too_big)
    assert is_permanent(bad_request)
    assert not is_permanent(timeout)
    assert not is_permanent(nats.js.errors.ServiceUnavailableError(code=503))
    assert not is_permanent(nats.errors.ConnectionClosedError())

    settled = settle([None, too_big, None, bad_request, timeout, None])
    assert (settled.done, settled.acked, settled.refused) == (4, 2, [1, 3])
    assert settle([]).done == 0
