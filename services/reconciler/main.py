"""`fleetwatch reconciler`: run the reconciliation loop with /metrics, /healthz, /readyz."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn

from services.reconciler.app import create_app
from services.reconciler.settings import ReconcilerSettings


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(
        prog="fleetwatch reconciler",
        description="check executions against their engines and publish corrections "
        "(settings: NATS_URL, DATABASE_URL, RECONCILER_*)",
    )
    parser.parse_args(argv)
    settings = ReconcilerSettings()
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
