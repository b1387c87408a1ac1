"""Rows as the API shows them (pure): summaries, components with their retry class."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import Response

from shared.retries import classify_retry

_HIDDEN = frozenset({"sort_at", "first_seen_at"})


def json_bytes(body: Any) -> bytes:
    """JSON as FastAPI's encoder writes it (datetimes in ISO 8601), through orjson."""
    return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)


def json_response(body: Any, status_code: int = 200) -> Response:
    """A ready JSON answer: skips FastAPI's response validation and jsonable_encoder."""
    return Response(json_bytes(body), status_code=status_code, media_type="application/json")


def summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """An execution in a list: short message, `has_error`, no log."""
    out = {k: v for k, v in row.items() if k not in _HIDDEN}
    out.setdefault("agent_display_name", None)
    return out


def component(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["retry_class"] = classify_retry(row["retry_policy"], row["attempt"], row["max_attempts"])
    return out


def retry_counts(components: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"expected": 0, "unexpected": 0}
    for c in components:
        if c["retry_class"] is not None:
            counts[c["retry_class"]] += 1
    return counts
