"""The opaque keyset cursor of the list: the last row's `(sort_at, id)` and a fingerprint of
the filters it was made under, base64 of JSON."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson


class CursorError(ValueError):
    """A cursor this service did not make (or made by an incompatible version)."""


@dataclass(frozen=True, slots=True)
class CursorKey:
    sort_at: datetime
    id: str
    #: `ListFilters.fingerprint()` of the list it continues (None: a cursor made before
    #: cursors carried it, accepted as it is).
    filters: str | None = None


_VERSION = 1


def encode_cursor(key: CursorKey) -> str:
    data = {"v": _VERSION, "t": key.sort_at.isoformat(), "i": key.id}
    if key.filters is not None:
        data["f"] = key.filters
    raw = orjson.dumps(data)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> CursorKey:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("v") != _VERSION:
            raise CursorError("unknown cursor version")
        moment = datetime.fromisoformat(data["t"])
        ident = data["i"]
        filters = data.get("f")
    except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CursorError):
            raise
        raise CursorError("not a cursor of this list") from None
    if (
        moment.tzinfo is None
        or not isinstance(ident, str)
        or not 1 <= len(ident) <= 200
        or "\x00" in ident  # PostgreSQL text cannot hold it
        or not (filters is None or isinstance(filters, str))
    ):
        raise CursorError("not a cursor of this list")
    try:
        # In UTC, as the database compares it: an offset can carry year 1 or 9999 past
        # what a datetime (and the driver's encoder) can hold.
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise CursorError("not a cursor of this list") from None
    return CursorKey(sort_at=moment, id=ident, filters=filters)
