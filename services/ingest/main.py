"""`fleetwatch ingest`: run the ingest service."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings


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
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )
    return 0
