"""Server URLs as they may be shown: the password of `user:password@` replaced by `***`."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redacted(url: str) -> str:
    """`url` without its password (NATS and Postgres URLs carry one: logs and terminals
    must not). A URL that cannot be read is shown as its scheme only."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        netloc = f"{parts.username or ''}:***@{host}{port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url.split(":", 1)[0] + "://***"
