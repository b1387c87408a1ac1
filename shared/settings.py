"""Settings every service shares, read from the environment (never at import)."""

from __future__ import annotations

import logging
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.client_address import Network, parse_trusted_proxies
from shared.events import NAME_PATTERN
from shared.nats_keepalive import DEFAULT_PING_INTERVAL_S, NatsKeepalive
from shared.subjects import Subjects

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Public (it is in the source): services refuse it off loopback (shared/token_secret.py).
DEFAULT_JWT_SECRET = "fleetwatch-development-secret-change-me-0123"  # noqa: S105 (public by design; refused off loopback)
#: JetStream keeps a stream's max age in int64 nanoseconds (~106,751 days); 0 means forever.
MAX_STREAM_AGE_DAYS = 100_000
#: JetStream's largest replica count.
MAX_STREAM_REPLICAS = 5
#: Clock difference forgiven on a token's `exp`, `nbf` and `iat` (PyJWT's `leeway`).
DEFAULT_JWT_LEEWAY_S = 30.0
MAX_JWT_LEEWAY_S = 300.0


class CommonSettings(BaseSettings):
    """`NATS_URL`, `DATABASE_URL`, `FLEETWATCH_*`: what every process needs."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    nats_url: str = Field(default=DEFAULT_NATS_URL, validation_alias="NATS_URL")
    database_url: str = Field(default=DEFAULT_DATABASE_URL, validation_alias="DATABASE_URL")
    #: Checked here, so that a prefix no subject can hold stops a service with its name.
    subject_prefix: str = Field(
        default="fleet", validation_alias="FLEETWATCH_SUBJECT_PREFIX", pattern=NAME_PATTERN
    )
    jwt_secret: SecretStr = Field(
        default=SecretStr(DEFAULT_JWT_SECRET), validation_alias="FLEETWATCH_JWT_SECRET"
    )
    #: Start query and notifier off loopback even with a public or short HS256 secret.
    allow_weak_secret: bool = Field(default=False, validation_alias="FLEETWATCH_ALLOW_WEAK_SECRET")
    jwks_url: str | None = Field(default=None, validation_alias="FLEETWATCH_JWKS_URL")
    #: When set, tokens must carry this `aud` / `iss` (set both with a shared identity provider).
    jwt_audience: str | None = Field(default=None, validation_alias="FLEETWATCH_JWT_AUDIENCE")
    jwt_issuer: str | None = Field(default=None, validation_alias="FLEETWATCH_JWT_ISSUER")
    #: Seconds of clock difference forgiven between the token's issuer and this machine: an
    #: identity provider whose clock runs ahead issues tokens "from the future" (`iat`, `nbf`).
    jwt_leeway_s: float = Field(
        default=DEFAULT_JWT_LEEWAY_S,
        ge=0,
        le=MAX_JWT_LEEWAY_S,
        validation_alias="FLEETWATCH_JWT_LEEWAY_S",
    )
    #: Seconds between the PINGs that tell a live NATS connection from a dead one (see
    #: shared/nats_keepalive.py).
    nats_ping_interval_s: int = Field(
        default=DEFAULT_PING_INTERVAL_S,
        ge=1,
        le=600,
        validation_alias="FLEETWATCH_NATS_PING_INTERVAL_S",
    )
    log_level: str = Field(default="INFO", validation_alias="FLEETWATCH_LOG_LEVEL")
    stream_max_age_days: float = Field(
        default=7.0, gt=0, le=MAX_STREAM_AGE_DAYS, validation_alias="FLEETWATCH_RETENTION_DAYS"
    )
    stream_replicas: int = Field(
        default=1, ge=1, le=MAX_STREAM_REPLICAS, validation_alias="FLEETWATCH_STREAM_REPLICAS"
    )
    #: Proxies (IP addresses or CIDR networks, comma-separated) whose `X-Forwarded-For` is
    #: believed when query and notifier key failed authentications by client address.
    #: Empty (the default): nothing is trusted, the connection's peer is the client.
    trusted_proxies: Annotated[tuple[Network, ...], NoDecode] = Field(
        default=(), validation_alias="FLEETWATCH_TRUSTED_PROXIES"
    )

    @field_validator("jwks_url", "jwt_audience", "jwt_issuer", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `FLEETWATCH_JWT_AUDIENCE=` is how templates write "not set"; taken as a value, an
        # empty audience or issuer would refuse every token.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_list(cls, value: object) -> object:
        # The environment gives `10.0.0.0/8,127.0.0.1`, not JSON.
        if isinstance(value, str):
            return parse_trusted_proxies(value)
        return value

    @field_validator("log_level", mode="after")
    @classmethod
    def _known_level(cls, value: str) -> str:
        # `debug` as well as `DEBUG`: logging itself knows only the upper-case names.
        level = value.strip().upper()
        if level not in logging.getLevelNamesMapping():
            known = ", ".join(n for n in logging.getLevelNamesMapping() if n != "NOTSET")
            raise ValueError(f"unknown log level {value!r} (one of {known})")
        return level

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.subject_prefix)

    @property
    def nats_keepalive(self) -> NatsKeepalive:
        """The keepalive options of every NATS connection a service opens."""
        return NatsKeepalive(ping_interval=self.nats_ping_interval_s)
