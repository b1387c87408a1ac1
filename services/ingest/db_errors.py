"""Which database errors a batch's content caused, and which say the database cannot write now.

The difference decides what happens to the events: content errors are bisected down to the
one refused event, which is dead-lettered; every other error is waited out and retried, with
nothing acked and nothing dead-lettered (a read-only replica, a full disk, a missing table
before `fleetwatch migrate`, a revoked grant or a crash restart must not send good events to
the dead-letter stream).
"""

from __future__ import annotations

import asyncpg

#: SQLSTATE classes in which Postgres refuses the values a statement carries:
#: 22 data exception, 23 integrity constraint violation, 54 program limit exceeded (a value
#: too large for an index row, say).
CONTENT_CLASSES = frozenset({"22", "23", "54"})


def refused_content(exc: BaseException) -> bool:
    """True when the batch's values caused `exc`; False when the database is the problem."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "")[:2] in CONTENT_CLASSES
    if isinstance(exc, asyncpg.InterfaceError):
        # asyncpg's client-side DataError (an argument it cannot encode) is the one interface
        # error that is also a ValueError; the others are about the connection.
        return isinstance(exc, ValueError)
    if isinstance(exc, OSError | TimeoutError):
        return False
    # Encoding a value in Python (orjson, datetime arithmetic): one event's content.
    return isinstance(exc, ValueError | TypeError | OverflowError | ArithmeticError)
