"""A fix for faststream 0.7.8's JetStream pull loop, applied where the broker is built.

faststream catches `nats.errors.TimeoutError` around `fetch()`, but nats-py 2.16 raises the
plain `asyncio.TimeoutError` when a fetch window ends empty. The error then escapes, the
supervisor restarts the consume task, and the messages that task had already collected for
the batch are neither handled nor nak'd: they come back only after `ack_wait` (30 s), which
showed as 30-second p99 latencies in bench/ingest.py. Catching the builtin base class (of
which the nats error is a subclass) keeps the partial batch.
"""

from __future__ import annotations

from faststream.nats.subscriber.usecases import stream_pull_subscriber


def patch_pull_timeout() -> None:
    """Make faststream's pull loop treat every fetch timeout as an empty window (idempotent)."""
    setattr(stream_pull_subscriber, "TimeoutError", TimeoutError)  # noqa: B010
