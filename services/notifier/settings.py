"""Settings of the notifier (`NOTIFIER_*`), built in `main()` or by tests, never at import."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings


class NotifierSettings(CommonSettings):
    """Where to listen, how long to wait for slow or silent clients, and how much to buffer."""

    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    #: Keepalive: a ping every `ping_interval_s`; no pong within `ping_timeout_s` reaps the socket.
    ping_interval_s: float = Field(default=20.0, gt=0)
    ping_timeout_s: float = Field(default=20.0, gt=0)
    #: A client's outgoing queue (bytes written but not yet taken by the kernel). Past it the
    #: client is closed with 4008 and dropped from fan-out, so nobody else waits for it.
    client_queue_bytes: int = Field(default=512 * 1024, ge=1024)
    #: All clients' outgoing queues together. A fan-out that takes their sum past it closes
    #: the clients holding the most with 4008 (as above) until the sum is back under it; without
    #: it only `max_sockets` x `client_queue_bytes` (~10 GB) bounded them.
    buffer_budget_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    #: Open sockets one caller (one user of an org) may hold; the next is closed with 4429.
    #: A dashboard holds one per tab, but a service token may feed a wall of screens: this
    #: bounds what a client reconnecting in a loop can take (~30 kB a socket), no more.
    max_sockets_per_caller: int = Field(default=256, ge=1)
    #: Open sockets of this process in all (authenticated or not yet); the next is closed with
    #: 1013 right after its handshake, before its token is read, and cut 0.5 s later. Bounds
    #: file descriptors and memory whoever connects (plus half a second of refused attempts).
    max_sockets: int = Field(default=20_000, ge=1)
    #: Failed authentications (missing or bad token) per client address, an IPv6 one by its
    #: /64: a bucket of `auth_failure_burst` refilled at `auth_failure_per_minute`. Past it a
    #: failure closes with 4429 instead of 4401; a good token is still admitted. At most
    #: `auth_failure_addresses` addresses are tracked (the least recently seen are forgotten).
    auth_failure_per_minute: float = Field(default=30.0, gt=0)
    auth_failure_burst: int = Field(default=60, ge=1)
    auth_failure_addresses: int = Field(default=50_000, ge=1)
    #: Recent events kept in memory for resumes (read back from the stream at startup);
    #: a resume from further back reads the stream through its own consumer.
    ring_size: int = Field(default=10_000, ge=1)
    #: Replays from the stream (past the ring) running at once; the others wait their turn
    #: (held, as during any replay). Each reads through its own consumer, and a thousand of
    #: them at once stalled the NATS server for every publisher.
    replay_concurrency: int = Field(default=16, ge=1)
    #: Live events held for a client while its replay runs (events, not bytes).
    replay_pending_max: int = Field(default=10_000, ge=1)
    #: SO_SNDBUF of each client socket; 0 keeps the kernel's autotuning. A fixed small buffer
    #: bounds what a stuck client pins in the kernel and makes 4008 come sooner.
    socket_sndbuf: int = Field(default=64 * 1024, ge=0)
    #: How long a slow client gets to read the buffered events and the 4008 close frame.
    slow_close_grace_s: float = Field(default=5.0, ge=0)
    #: During a replay from the stream, a client that takes no event for this long is cut off
    #: (4008), so that it does not keep a replay turn; longer than `slow_close_grace_s`, for
    #: slow links sending a large event.
    replay_send_timeout_s: float = Field(default=15.0, gt=0)
    #: How long a new connection waits for its first frame (filters, resume_from) before live.
    hello_timeout_s: float = Field(default=0.25, ge=0)
    #: How long a caller's scope (org, role, visible agents) is cached.
    scope_ttl_s: float = Field(default=15.0, gt=0)
    #: A scope query that takes longer fails (a hung database must not hold up the sweep that
    #: keeps every open connection's access current, nor a handshake).
    scope_load_timeout_s: float = Field(default=5.0, gt=0)
    #: Largest frame a client may send.
    max_client_frame: int = Field(default=16 * 1024, ge=256)
    close_timeout_s: float = Field(default=5.0, gt=0)
    #: How often the events stream is looked at for having been made anew (sequences reset).
    stream_check_s: float = Field(default=5.0, gt=0)
    db_pool_max: int = Field(default=5, ge=1)
