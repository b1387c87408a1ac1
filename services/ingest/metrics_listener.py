"""`/metrics` on a port of its own (`INGEST_METRICS_PORT`), apart from the gateway's.

Ingest's fleet metrics carry every org's agents, execution counts and costs side by side, and
its main port is also the HTTP gateway publishers reach (compose publishes it). With a port of
its own, only what can reach that port (Prometheus, on the deployment's network) reads them.
prometheus_client serves it from a thread; a scrape every few seconds costs ingest nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


@contextlib.contextmanager
def metrics_listener(host: str, port: int | None, registry: CollectorRegistry) -> Iterator[None]:
    """Serve `registry` on `host:port` for the duration of the block (nothing if `port` is
    None). A port in use fails at once, as the main port would."""
    if port is None:
        yield
        return
    server, thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on %s:%d", host, port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
