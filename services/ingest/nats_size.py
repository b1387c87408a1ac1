"""What fits one NATS message: the server's `max_payload` counts the headers with the body.

nats-py checks only the body against it before sending; a message whose headers take it over
the limit reaches the server, which answers with an error and closes the connection.
"""

from __future__ import annotations

from nats.js import JetStreamContext

#: NATS's own default, for a client that has not read the server's INFO yet.
DEFAULT_MAX_PAYLOAD = 1024 * 1024


def max_payload(js: JetStreamContext) -> int:
    """The connected server's `max_payload` (bytes per message, headers included)."""
    client = getattr(js, "_nc", None)
    return int(getattr(client, "max_payload", 0) or DEFAULT_MAX_PAYLOAD)


def headers_size(headers: dict[str, str]) -> int:
    """Bytes `headers` take on the wire: "NATS/1.0\\r\\n", "Key: Value\\r\\n" each, "\\r\\n"."""
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())
