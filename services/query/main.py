"""`fleetwatch query`: run the query API and dashboard under uvicorn."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn

from services.query.app import create_app
from services.query.settings import QuerySettings
from shared.cli import tcp_port
from shared.token_secret import check_token_secret

#: Seconds a stopping process waits for open requests before cancelling them. Kubernetes sends
#: SIGKILL 30 s after SIGTERM, 5 of them spent in preStop (deploy/k8s/base/query.yaml); a
#: query ends within statement_timeout_s (10 s) when Postgres answers at all, and the pool's
#: close after the requests gets `STOP_POOL_S` of what is left.
GRACEFUL_SHUTDOWN_S = 10


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(
        prog="fleetwatch query", description="run the query API and dashboard"
    )
    parser.add_argument("--host", help="default: $QUERY_HOST or 127.0.0.1")
    parser.add_argument("--port", type=tcp_port, help="default: $QUERY_PORT or 8000")
    args = parser.parse_args(list(argv))
    settings = QuerySettings()
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s %(message)s")
    check_token_secret(settings, host, "query API")
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
        # Off, whatever FORWARDED_ALLOW_IPS says: uvicorn would otherwise believe any
        # X-Forwarded-For from 127.0.0.1 (so a local process could pick its address) and
        # rewrite the peer before the app sees it. The app itself takes the client from
        # X-Forwarded-For only behind FLEETWATCH_TRUSTED_PROXIES (shared/client_address.py).
        proxy_headers=False,
        lifespan="on",
        # uvicorn[standard]: the C event loop and HTTP parser (what "auto" would pick, but
        # a missing one should fail loudly rather than silently halve throughput).
        loop="uvloop",
        http="httptools",
        # Without a bound uvicorn waits for open requests for good: one whose database does
        # not answer (statement_timeout is the server's) held the stop until SIGKILL.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return 0
