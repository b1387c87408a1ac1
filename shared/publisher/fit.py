"""Make text a run captures fit what ingest stores: NUL replaced, cut by encoded bytes.

Ingest refuses an event over `MAX_EVENT_BYTES` as published and any string holding NUL
(Postgres text cannot store it). A cut by characters does neither: 400k "漢" are 1.2 MB on
the wire. So text is cut by the length of its JSON encoding (what the event carries), at a
character boundary, and NUL becomes U+FFFD so the reader sees that something was there. So
does a lone surrogate (`json.loads('"\\ud83d"')`, half an escaped emoji), which no UTF-8
encoder writes: left in, it would make the whole event unpublishable.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

#: What a NUL in captured text becomes.
NUL_REPLACEMENT = "\ufffd"

# The longest one character gets in orjson's output: a control character as `\u001f`.
_WORST_BYTES_PER_CHAR = 6
# A torn tail is at most a 5-byte partial `\uXXXX` escape or 3 bytes of a UTF-8 sequence.
_MAX_TORN = 6


#: A code point of a UTF-16 surrogate half: in a Python str, always a lone one.
_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_nul(text: str) -> str:
    return text.replace("\x00", NUL_REPLACEMENT) if "\x00" in text else text


def replace_surrogates(text: str) -> str:
    """`text` with each lone surrogate (which UTF-8 cannot encode) replaced by U+FFFD."""
    return text if text.isascii() else _SURROGATE.sub(NUL_REPLACEMENT, text)


def fit_text(value: str | None, max_bytes: int) -> str | None:
    """`value` with NUL replaced, cut so that its JSON encoding holds at most `max_bytes`
    bytes (quotes aside); also at most `max_bytes` characters, since none is under 1 byte."""
    if value is None:
        return None
    value = replace_nul(value)
    if len(value) * _WORST_BYTES_PER_CHAR <= max_bytes:
        return value
    try:
        encoded = orjson.dumps(value)[1:-1]
    except orjson.JSONEncodeError:  # a lone surrogate; nothing else in a str fails
        value = replace_surrogates(value)
        encoded = orjson.dumps(value)[1:-1]
    if len(encoded) <= max_bytes:
        return value
    return _cut_encoded(encoded, max_bytes)


def _cut_encoded(encoded: bytes, max_bytes: int) -> str:
    """The longest prefix of the JSON string body `encoded` that fits and decodes whole."""
    head = encoded[:max_bytes]
    for torn in range(_MAX_TORN + 1):
        try:
            text = orjson.loads(b'"' + head[: len(head) - torn] + b'"')
        except orjson.JSONDecodeError:
            continue
        assert isinstance(text, str)
        return text
    raise AssertionError("orjson output cannot be torn by more than one escape or character")


def scrub_nul(value: Any) -> Any:
    """A copy of a JSON value with NUL and lone surrogates replaced in every string and key."""
    if isinstance(value, str):
        return replace_surrogates(replace_nul(value))
    if isinstance(value, dict):
        return {
            (replace_surrogates(replace_nul(k)) if isinstance(k, str) else k): scrub_nul(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub_nul(item) for item in value]
    return value
