"""`fleetwatch notifier`: run one notifier replica until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings
from shared.cli import tcp_port
from shared.token_secret import check_token_secret


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fleetwatch notifier", description=__doc__)
    parser.add_argument("--host", help="listen address (NOTIFIER_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=tcp_port, help="listen port (NOTIFIER_PORT, default 8001)")
    return parser.parse_args(list(argv))


async def run(settings: NotifierSettings) -> None:
    app = create_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    try:
        await stop.wait()
    finally:
        await app.stop()


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = NotifierSettings(**overrides)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # Per-connection open/close lines would drown the log at a thousand clients.
    logging.getLogger("services.notifier.ws").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    check_token_secret(settings, settings.host, "notifier")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(settings))
    return 0
