"""`fleetwatch ingest`: run the ingest service."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.gc_tuning import tune_for_throughput

#: Seconds a stopping process waits for open HTTP requests; the batches in flight drain after,
#: for up to STOP_DRAIN_S (services/ingest/app.py). With preStop's 5 s that fits the 40 s
#: Kubernetes gives ingest (a batch cut short by SIGKILL is redelivered: only time is lost).
GRACEFUL_SHUTDOWN_S = 25


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(
        prog="fleetwatch ingest",
        description="consume execution events from JetStream into PostgreSQL "
        "(settings: NATS_URL, DATABASE_URL, INGEST_*)",
    )
    parser.parse_args(argv)
    settings = IngestSettings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    tune_for_throughput()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return 0
