"""What the opening handshake carries: the token, the subprotocol to echo, initial filters."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from services.notifier.filters import ClientFrame, FrameError, Subscribe
from shared.validation import describe

BEARER = "bearer"
_FILTER_PARAMS = ("agent_name", "status", "triggered_by")
_PARAMS = frozenset({"token", "resume_from", *_FILTER_PARAMS})


def offered_subprotocols(headers: Sequence[str]) -> list[str]:
    """`Sec-WebSocket-Protocol` values (one header or several) as a flat list."""
    return [p.strip() for value in headers for p in value.split(",") if p.strip()]


def token_from(path: str, subprotocols: Sequence[str]) -> str | None:
    """The bearer token: subprotocol pair `bearer, <token>` first, else `?token=`."""
    if BEARER in subprotocols:
        at = subprotocols.index(BEARER)
        if at + 1 < len(subprotocols):
            return subprotocols[at + 1]
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values else None


def choose_subprotocol(offered: Sequence[str]) -> str | None:
    """Echo `bearer` (browsers fail a handshake whose offered protocols were all ignored)."""
    return BEARER if BEARER in offered else None


def route(path: str) -> str:
    return urlsplit(path).path


def initial_frame(path: str) -> ClientFrame | FrameError | None:
    """Filters and `resume_from` given in the URL (`/ws?resume_from=41&status=failed`).

    A URL-given request starts at once, without waiting for the client's first frame. As in
    the query API, a parameter it does not know (`project=`, a misspelt `agent=`) is an error,
    not a filter silently left out.
    """
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)
    unknown = sorted(set(query) - _PARAMS)
    if unknown:
        allowed = ", ".join(sorted(_PARAMS))
        return FrameError("invalid_query", f"{unknown[0]}: unknown parameter (allowed: {allowed})")
    wanted = {k: v for k, v in query.items() if k in _FILTER_PARAMS}
    # Lists may come as repeated parameters or comma-separated, as in the query API.
    lists = {k: [x for item in v for x in item.split(",")] for k, v in wanted.items()}
    for name, values in sorted(lists.items()):
        if "" in values:
            # `?agent_name=` (a name that went missing) would otherwise mean "any agent": the
            # query API answers it with 422, and a filter never widens silently.
            return FrameError(
                "invalid_query", f"{name}: empty value (leave the parameter out for any)"
            )
    resume = query.get("resume_from")
    if not lists and not resume:
        return None
    if resume is not None and len(resume) > 1:
        return FrameError("invalid_query", "resume_from: given more than once")
    try:
        return ClientFrame.model_validate(
            {
                "subscribe": Subscribe.model_validate(lists) if lists else None,
                "resume_from": resume[0] if resume else None,
            }
        )
    except ValidationError as exc:
        return FrameError("invalid_query", describe(exc, "query"))
