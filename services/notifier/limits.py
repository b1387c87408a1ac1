"""What one notifier process lets in: open sockets in all (`NOTIFIER_MAX_SOCKETS`); the failed
authentications per client address are counted by `shared.ratelimit`."""

from __future__ import annotations


class SocketSlots:
    """Open sockets of the process, at most `limit`. A session takes its place right after the
    handshake and gives it back when it ends, which is once its socket is closed (the server's
    reads end only then), so a socket still closing keeps its place."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        """Take a place if one is free (synchronous: sockets arriving together cannot all pass)."""
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1
