"""Settings of the ingest service (`INGEST_` prefix)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings

#: HTTP gateway: batches checked and published at once, and how long one waits for its turn.
GATEWAY_CONCURRENCY = 2
GATEWAY_WAIT_S = 10.0
#: Bytes of request bodies inside the gateway at once (being read, waiting or running): they
#: are read before a turn, so this bounds their memory. An org may hold half of it; when it
#: is spent, an org with nothing inside may still use a quarter more.
GATEWAY_BODY_BUDGET_MB = 128


class IngestSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8002, ge=0, le=65535)
    durable: str = "ingest"
    #: A port of its own for `/metrics` (on `host`); unset, the main port serves it. The fleet
    #: metrics hold every org's agents, counts and costs: where the main port is the public
    #: gateway (deploy/compose.yaml), give them a port only Prometheus reaches.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: Messages taken per batch, and how long to wait to fill one (seconds). Each batch holds
    #: one advisory lock per execution until it commits (see the README on the lock table).
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    batch_timeout: float = Field(default=0.05, gt=0, le=30)
    #: JetStream redelivers a message not acked within this time (seconds).
    ack_wait: float = Field(default=10.0, gt=0)
    max_ack_pending: int = Field(default=20_000, ge=1)
    #: Backoff between retries while the database is unreachable (seconds).
    retry_min: float = Field(default=0.2, gt=0)
    retry_max: float = Field(default=5.0, gt=0)
    db_pool_size: int = Field(default=4, ge=1)
    #: Batches processed at once (each in its own transaction; rows are locked per execution).
    #: Two: a lone process folds and encodes one while Postgres writes the other (with one, it
    #: left the machine ~38% idle; four only contended in Postgres). Replicas do better with
    #: one batch of 2,000 each (the Kubernetes base): the others keep Postgres busy. Each
    #: holds up to batch_size advisory locks: replicas x max_in_flight x batch_size must fit
    #: Postgres's lock table.
    max_in_flight: int = Field(default=2, ge=1, le=16)
    lag_poll_interval: float = Field(default=5.0, gt=0)
    #: HTTP gateway: batches checked and published at once (checked on the event loop in
    #: slices, between the consumer's turns), and seconds a batch waits for its turn before
    #: a 503.
    gateway_concurrency: int = Field(default=GATEWAY_CONCURRENCY, ge=1, le=64)
    gateway_wait_s: float = Field(default=GATEWAY_WAIT_S, gt=0, le=300)
    #: HTTP gateway: MiB of request bodies inside at once (an org: half; an org with none
    #: inside: a quarter more); a request past it is answered 503 busy at once, body unread.
    gateway_body_budget_mb: int = Field(default=GATEWAY_BODY_BUDGET_MB, ge=16, le=16_384)
    #: How often the running/stuck gauges are read from Postgres (seconds).
    running_poll_interval: float = Field(default=30.0, gt=0)
