"""Plain HTTP on the WebSocket port: `/healthz`, `/readyz`, `/metrics`; else 404."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from services.notifier.handshake import route

WS_PATH = "/ws"


def make_process_request(
    registry: CollectorRegistry, is_ready: Callable[[], bool]
) -> Callable[[ServerConnection, Request], Response | None]:
    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        path = route(request.path)
        if path == WS_PATH:
            return None  # go on with the WebSocket handshake
        if path == "/healthz":
            return conn.respond(200, "ok\n")
        if path == "/readyz":
            if is_ready():
                return conn.respond(200, "ready\n")
            return conn.respond(503, "not ready\n")
        if path == "/metrics":
            response = conn.respond(200, generate_latest(registry).decode())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response
        return conn.respond(404, "not found\n")

    return process_request
