"""What `fleetwatch up` reads before it starts anything: its command-line numbers, each
service's port and address (from the environment), and the URLs derived from them. Pure:
nothing here opens a socket or a file, so `up` itself keeps only the I/O and supervision."""

from __future__ import annotations

import os

SERVICES: dict[str, int] = {"ingest": 8002, "query": 8000, "notifier": 8001, "reconciler": 8003}


def _port(name: str) -> int:
    return int(os.environ.get(f"{name.upper()}_PORT", SERVICES[name]))


def _address(name: str) -> str:
    """`host:port` to reach service `name` from this machine: where it listens (its
    `<NAME>_HOST`), loopback for a wildcard address."""
    host = os.environ.get(f"{name.upper()}_HOST", "127.0.0.1").strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{_port(name)}" if ":" in host else f"{host}:{_port(name)}"


def _nats_url(url: str) -> str:
    """`url` with the scheme nats-py (and the nats CLI) assume when there is none: they take
    `host[:port]` as `nats://host[:port]`, and so must the reachability check and the printed
    URLs, which read it with urlsplit (`localhost:4222` has scheme `localhost` and no host)."""
    return url if "://" in url else f"nats://{url}"


def _notifier_url() -> str:
    """Where the page finds the live feed: the user's QUERY_NOTIFIER_URL (a public wss://
    URL behind a proxy, say), else the notifier `up` starts. Empty is unset, as templates
    write it."""
    return os.environ.get("QUERY_NOTIFIER_URL", "").strip() or f"ws://{_address('notifier')}/ws"
