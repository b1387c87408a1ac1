"""Settings of the query service (`QUERY_*`), on top of the common ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings

STATIC_DIR = Path(__file__).parent / "static"


class QuerySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="QUERY_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    pool_min_size: int = Field(default=2, ge=1)
    pool_max_size: int = Field(default=10, ge=1)
    #: How long a request waits for a free pool connection (or an export for its slot)
    #: before it is answered 503 with `Retry-After`.
    pool_acquire_timeout_s: float = Field(default=5.0, gt=0)
    #: A statement running longer than this is cancelled by Postgres and its request answered
    #: 503, so that one pathological query cannot hold a pool connection for good (0: no
    #: limit). Exports stream in batches; the limit applies to each batch's statement.
    statement_timeout_s: float = Field(default=10.0, ge=0)
    #: How long stats stay cached per caller scope.
    stats_ttl_s: float = Field(default=5.0, ge=0)
    #: How long a user's or client's visible agents stay cached (0: read on every request).
    #: Owner and share changes made through this process apply at once; others within this.
    scope_ttl_s: float = Field(default=15.0, ge=0)
    #: How long a list's capped `total_count` stays cached per (scope, filters); paging
    #: through one list and dashboard refreshes count once (0: count on every page).
    count_ttl_s: float = Field(default=5.0, ge=0)
    #: Sustained requests per caller per minute, and the burst allowed above it.
    rate_limit_per_minute: float = Field(default=1200, gt=0)
    rate_limit_burst: int = Field(default=200, ge=1)
    #: Requests whose token is missing or refused, per client address (an IPv6 one by its
    #: /64) per minute, and the burst allowed above it. Past them the address is answered 429
    #: before its token is even checked, whatever the token, until its bucket refills; other
    #: addresses, and authenticated callers' own limits, are untouched. The address is the
    #: connection's peer, or the one a proxy listed in `FLEETWATCH_TRUSTED_PROXIES` put in
    #: `X-Forwarded-For` (shared/client_address.py).
    auth_failure_per_minute: float = Field(default=30, gt=0)
    auth_failure_burst: int = Field(default=60, ge=1)
    #: How many addresses' failure buckets are kept (least recently failed forgotten first).
    auth_failure_addresses: int = Field(default=50_000, ge=1)
    terminate_timeout_s: float = Field(default=3.0, gt=0)
    #: Waiting for the reconciler to fetch an execution's steps from its engine on detail open.
    sync_timeout_s: float = Field(default=0.8, gt=0, le=1.0)
    #: `total_count` is exact up to this many rows, then reported as this with
    #: `total_count_exact: false` (0: always exact, however slow).
    exact_count_limit: int = Field(default=10_000, ge=0)
    #: A search's `total_count` counts matches among the newest this many rows of the list
    #: (exact when the list is shorter, else a lower bound): ILIKE cannot use the trigram
    #: index under row-level security, so an uncapped search count reads the whole org.
    #: 0: count searches like other filters (up to `exact_count_limit` matches).
    search_count_scan: int = Field(default=2_000, ge=0)
    #: A search first asks `search_candidates()` (migrations 0012, 0014: trigram index, as the
    #: function's owner, for the transaction's org and the caller's agents only) for the
    #: matching ids when there are fewer than this many; the list, its count and the export
    #: then read those ids by primary key under RLS. A common term keeps the ordered scan.
    #: 0: never ask.
    search_candidates: int = Field(default=2_000, ge=0, le=100_000)
    export_batch_size: int = Field(default=2000, ge=10, le=50_000)
    #: An export batch also stops once its rows' message, response and error pass this many
    #: bytes (64 KiB each at most): memory per export stays near it, whatever the rows hold.
    export_batch_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    #: Exports streamed at once: each holds one pool connection until its body is sent (at
    #: the client's pace), so keep this below `pool_max_size` to leave room for the rest.
    export_concurrency: int = Field(default=4, ge=1)
    #: Of those, how many one org may hold at once, so that one tenant's exports cannot
    #: keep every other tenant's waiting (and then refused with 503).
    export_per_org: int = Field(default=2, ge=1)
    #: An export reads one snapshot, which holds back vacuum while it is open: a client that
    #: takes nothing for this long (seconds) has its export ended by Postgres.
    export_idle_timeout_s: float = Field(default=300.0, gt=0, le=86_400)
    #: Links from an execution to its run in an outside engine, per engine name, with
    #: `{external_id}` (URL-quoted) in the template, e.g. (JSON in `QUERY_ENGINE_URLS`)
    #: `{"temporal": "http://temporal-ui:8233/namespaces/default/workflows/{external_id}"}`.
    engine_urls: dict[str, str] = Field(default_factory=dict)
    #: Shown to the dashboard by `/api/config` (None: the page picks `ws://<host>:8001/ws`).
    notifier_url: str | None = None
    static_dir: Path = STATIC_DIR
