"""Acknowledge a batch of JetStream messages in one write to the connection.

`Msg.ack()` is a full publish per message: subject checks, a protocol line built, a buffer
append and a flush check, then the flusher writes a thousand small buffers. `ack_all` builds
the same `PUB <reply> 0` lines (an empty payload is JetStream's +ACK, as `Msg.ack` sends)
for the whole batch and hands them to nats-py's pending buffer at once. It leans on nats-py
2.x internals (`_send_command`, `_flush_pending`, `_ackd`): where they are missing, or a
message is not a plain unacked JetStream delivery, it acks message by message as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from nats.aio.msg import Msg

# A reply subject is the server's, but a line break in it would inject protocol commands.
_UNSAFE = re.compile(r"\s")


def _bulk_capable(client: Any) -> bool:
    return (
        hasattr(client, "_send_command")
        and hasattr(client, "_flush_pending")
        and getattr(client, "is_connected", False)
        and not getattr(client, "is_draining_pubs", True)
    )


async def ack_all(messages: Sequence[Msg]) -> None:
    """`msg.ack()` for every message, as one protocol write where nats-py allows it."""
    if not messages:
        return
    client: Any = getattr(messages[0], "_client", None)
    bulk = (
        client is not None
        and _bulk_capable(client)
        and all(
            getattr(m, "_client", None) is client
            and m.reply
            and not getattr(m, "_ackd", True)
            and not _UNSAFE.search(m.reply)
            for m in messages
        )
    )
    if not bulk:
        for msg in messages:
            await msg.ack()
        return
    await client._send_command(b"".join(b"PUB %s 0\r\n\r\n" % m.reply.encode() for m in messages))
    for msg in messages:
        msg._ackd = True
    client.stats["out_msgs"] += len(messages)
    if client._flush_queue is not None and client._flush_queue.empty():
        await client._flush_pending()
