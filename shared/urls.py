"""Server URLs as they may be shown: the password of `user:password@` (and a NATS token,
`nats://TOKEN@host`) replaced by `***`, and so is a `password` or `sslpassword` query
parameter (asyncpg and libpq read those too)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

#: `password=...` / `sslpassword=...` in a query string, up to the next parameter.
_QUERY_SECRET = re.compile(r"(?i)(?<![^?&])((?:ssl)?password=)[^&#]*")


def redacted(url: str) -> str:
    """`url` without its password (NATS and Postgres URLs carry one: logs and terminals
    must not). A URL that cannot be read is shown as its scheme only (and its query)."""
    head, question, query = url.partition("?")
    return _without_user_password(head) + question + _QUERY_SECRET.sub(r"\1***", query)


def _without_user_password(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{host}{port}"
        elif parts.username and parts.scheme.startswith(("nats", "tls", "ws")):
            netloc = f"***@{host}{port}"  # NATS reads `nats://TOKEN@host` as a token
        else:
            return url
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url.split(":", 1)[0] + "://***"
