"""Settings of the ingest service (`INGEST_` prefix)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings

#: HTTP gateway: batches checked and published at once, and how long one waits for its turn.
GATEWAY_CONCURRENCY = 2
GATEWAY_WAIT_S = 10.0
#: Requests inside the gateway at once (reading, waiting or running), per org and in all:
#: bodies of up to 8 MiB are read before a turn, so this bounds their memory (32 x 8 MiB in all).
GATEWAY_ADMIT_PER_ORG = 8
GATEWAY_ADMIT_TOTAL = 32


class IngestSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8002, ge=0, le=65535)
    durable: str = "ingest"
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
    #: HTTP gateway: requests one org, and all orgs together, may have inside at once (their
    #: bodies are held in memory); one more is answered 503 busy at once, its body unread.
    gateway_admit_per_org: int = Field(default=GATEWAY_ADMIT_PER_ORG, ge=1, le=1024)
    gateway_admit_total: int = Field(default=GATEWAY_ADMIT_TOTAL, ge=1, le=4096)
    #: How often the running/stuck gauges are read from Postgres (seconds).
    running_poll_interval: float = Field(default=30.0, gt=0)
