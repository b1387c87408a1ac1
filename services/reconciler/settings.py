"""Reconciler settings (`RECONCILER_*`): loop, engines, grace periods, fix mode."""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.reconciler.rules import LISTING_MARGIN
from shared.events import Status
from shared.settings import CommonSettings

DEFAULT_STATUS_MAP: dict[str, Status] = {
    "queued": Status.PENDING,
    "pending": Status.PENDING,
    "scheduled": Status.PENDING,
    "running": Status.RUNNING,
    "in_progress": Status.RUNNING,
    "started": Status.RUNNING,
    "succeeded": Status.SUCCESS,
    "success": Status.SUCCESS,
    "completed": Status.SUCCESS,
    "done": Status.SUCCESS,
    "failed": Status.FAILED,
    "error": Status.FAILED,
    "timed_out": Status.FAILED,
    "cancelled": Status.CANCELLED,
    "canceled": Status.CANCELLED,
    "aborted": Status.CANCELLED,
    "terminated": Status.CANCELLED,
}


class ReconcilerSettings(CommonSettings):
    """Everything the reconciler reads from the environment; built in `main()`, never at import."""

    model_config = SettingsConfigDict(
        env_prefix="RECONCILER_", extra="ignore", populate_by_name=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8003, ge=0, le=65535)
    interval_seconds: float = Field(default=30.0, gt=0)
    #: Publish corrections (True) or only report what would be done (False).
    fix: bool = True
    #: Fail executions that stayed running without an external id past the timeout.
    fail_missing_external_id: bool = False
    missing_external_id_timeout_seconds: float = Field(default=600.0, ge=0)
    #: A run younger than this is not checked at all (engines register runs late).
    first_check_grace_seconds: float = Field(default=60.0, ge=0)
    #: A row whose engine run is still not found this long after it started is an orphan.
    orphan_grace_seconds: float = Field(default=900.0, ge=0)
    #: An engine run with no row is created as an execution only this long after it started.
    orphan_run_grace_seconds: float = Field(default=600.0, ge=0)
    #: How far back engines are listed for runs we have no row for.
    lookback_seconds: float = Field(default=3600.0, gt=0)
    concurrency: int = Field(default=64, ge=1, le=10_000)
    #: After this many lookups in a row failed, an engine's other lookups of the pass are
    #: reported as engine errors without being made (0: never).
    engine_error_breaker: int = Field(default=10, ge=0)
    #: An engine's lookups of one pass stop after this long; the rest are reported unchecked.
    engine_pass_timeout_seconds: float = Field(default=120.0, gt=0)
    #: A query to Postgres that has not answered after this long is abandoned and the pass
    #: fails (the next one retries), instead of hanging while the database does not answer.
    db_timeout_seconds: float = Field(default=30.0, gt=0)
    leader_lock_key: int = 0x666C_7774  # "flwt"; the subject prefix is mixed in
    #: A leader cut off from Postgres loses the lock within this long (see leader.py).
    leader_lease_seconds: float = Field(default=30.0, gt=0)

    # Temporal: enabled when an address is set.
    temporal_address: str | None = None
    temporal_namespace: str = "default"
    temporal_engine_name: str = "temporal"
    temporal_timeout_seconds: float = Field(default=10.0, gt=0)
    #: Background component sync of Temporal runs finished within this window.
    component_sync_window_seconds: float = Field(default=3600.0, ge=0)
    #: An on-demand step sync of one execution is answered from the last one this long.
    on_demand_sync_ttl_seconds: float = Field(default=10.0, ge=0, le=3600)

    # Generic HTTP engine: enabled when a base URL is set.
    http_base_url: str | None = None
    http_engine_name: str = "http"
    http_run_path: str = "/runs/{external_id}"
    #: Listing path (query parameters `since`, `until`, and `cursor` for the pages after the
    #: first, from the last page's `next`); None when the engine cannot list.
    http_list_path: str | None = "/runs"
    http_list_max_pages: int = Field(default=100, ge=1, le=100_000)
    http_status_field: str = "status"
    #: Merged over DEFAULT_STATUS_MAP; keys are matched case-insensitively.
    http_status_map: dict[str, Status] = Field(default_factory=lambda: dict(DEFAULT_STATUS_MAP))
    http_timeout_seconds: float = Field(default=5.0, gt=0)
    http_not_found_attempts: int = Field(default=3, ge=1)
    http_error_attempts: int = Field(default=3, ge=1)
    http_backoff_seconds: float = Field(default=0.5, ge=0)
    http_headers: dict[str, str] = Field(default_factory=dict)
    #: Who an engine run with no row belongs to, when the engine does not say.
    orphan_org: str | None = None
    orphan_agent: str | None = None

    @field_validator("http_status_map", mode="after")
    @classmethod
    def _over_the_defaults(cls, value: dict[str, Status]) -> dict[str, Status]:
        # The engine's status is lower-cased before the look-up, so the keys are too; a map
        # that names only an engine's own words keeps the common ones.
        return {**DEFAULT_STATUS_MAP, **{key.lower(): status for key, status in value.items()}}

    @model_validator(mode="after")
    def _failing_has_a_window(self) -> Self:
        """Rows lacking a run id are failed only while they started within the listing window
        less a margin (older ones are flagged: a run naming them would not be listed), so
        with a window no longer than the timeout and margin none would ever be failed."""
        margin = LISTING_MARGIN.total_seconds()
        least = self.missing_external_id_timeout_seconds + margin
        if self.fail_missing_external_id and self.lookback_seconds <= least:
            raise ValueError(
                f"RECONCILER_LOOKBACK_SECONDS ({self.lookback_seconds:g}) must exceed "
                f"RECONCILER_MISSING_EXTERNAL_ID_TIMEOUT_SECONDS + {margin:g} ({least:g}) while "
                "RECONCILER_FAIL_MISSING_EXTERNAL_ID is on: no row lacking its run id would "
                "ever be failed"
            )
        return self
