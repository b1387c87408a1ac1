"""A generic HTTP engine: a REST API that reports a run's status by id (job engines)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from services.reconciler.engines import EngineError, EngineRun
from services.reconciler.engines.http_client import (
    HttpConnectionError,
    HttpRequestError,
    HttpTimeout,
    KeepAliveClient,
)
from shared.events import Status


@dataclass(frozen=True, slots=True)
class HttpEngineConfig:
    base_url: str
    name: str = "http"
    run_path: str = "/runs/{external_id}"
    list_path: str | None = "/runs"
    status_field: str = "status"
    status_map: Mapping[str, Status] = field(default_factory=dict)
    timeout_seconds: float = 5.0
    not_found_attempts: int = 3
    error_attempts: int = 3
    backoff_seconds: float = 0.5
    max_connections: int = 64
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Listing pages read per pass at most (a page answering `{"runs": [...], "next": c}`
    #: is followed by `?...&cursor=c`); past it the listing is cut and that is reported.
    list_max_pages: int = 100


def _next_cursor(payload: Any) -> str | None:
    """The cursor of the listing's next page: `next` of a `{"runs": ..., "next": c}` page
    (a string, or a number standing for its text); None on the last page."""
    if not isinstance(payload, dict):
        return None
    cursor = payload.get("next")
    if isinstance(cursor, bool) or not isinstance(cursor, str | int):
        return None
    return str(cursor) or None


class _RunPayload(BaseModel):
    """The fields we read from an engine's run; anything else is ignored. Numbers stand for
    their text (engines with numeric job ids)."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    id: str | None = None
    external_id: str | None = None
    started_at: AwareDatetime | None = None
    completed_at: AwareDatetime | None = None
    error: str | None = None
    error_type: str | None = None
    org: str | None = None
    agent_name: str | None = None
    execution_id: str | None = None


#: Fields a run is still read without, when the engine sends them malformed (a naive time, an
#: error object of its own shape). Ids and attribution are never guessed at: without them,
#: or with them malformed, the run cannot be read.
_SPARE = frozenset({"started_at", "completed_at", "error", "error_type"})


def _validated(payload: dict[str, Any]) -> _RunPayload:
    data = dict(payload)
    for key in ("error", "error_type"):
        if isinstance(data.get(key), dict | list):
            data[key] = orjson.dumps(data[key]).decode()  # an error object, kept as its JSON
    while True:
        try:
            return _RunPayload.model_validate(data)
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            if not bad or not bad <= _SPARE:
                raise
            for key in bad:
                data.pop(key, None)


class _NotFound(Exception):
    pass


class _Transient(Exception):
    pass


class HttpEngine:
    """Retries not-found (runs register late) and 5xx/timeouts with exponential backoff."""

    def __init__(self, config: HttpEngineConfig) -> None:
        self._config = config
        self._status_map = {key.lower(): status for key, status in config.status_map.items()}
        #: Why items of the last listing could not be read (they were left out of it).
        self.listing_problems: list[str] = []
        self._client = KeepAliveClient(
            config.base_url,
            max_connections=config.max_connections,
            timeout=config.timeout_seconds,
            headers=dict(config.headers),
        )

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def lists_runs(self) -> bool:
        """False with `LIST_PATH` empty: the engine is asked about single runs only."""
        return bool(self._config.list_path)

    async def close(self) -> None:
        await self._client.aclose()

    def parse_run(self, payload: Any, external_id: str | None = None) -> EngineRun:
        """One run from the engine's JSON, or EngineError naming what is wrong with it."""
        cfg = self._config
        if not isinstance(payload, dict):
            raise EngineError(
                f"{cfg.name}: bad payload: expected a JSON object, got {type(payload).__name__}"
            )
        raw_status = payload.get(cfg.status_field)
        if not isinstance(raw_status, str):
            raise EngineError(
                f"{cfg.name}: bad payload: field {cfg.status_field!r} missing or not a string"
            )
        status = self._status_map.get(raw_status.lower())
        if status is None:
            raise EngineError(f"{cfg.name}: bad payload: unknown status {raw_status!r}")
        try:
            run = _validated(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise EngineError(f"{cfg.name}: bad payload: {where}: {first['msg']}") from None
        found_id = external_id or run.external_id or run.id
        if not found_id:
            raise EngineError(f"{cfg.name}: bad payload: run without an id")
        return EngineRun(
            engine=cfg.name,
            external_id=found_id,
            status=status,
            started_at=run.started_at,
            completed_at=run.completed_at,
            error=run.error,
            error_type=run.error_type,
            org=run.org,
            agent_name=run.agent_name,
            execution_id=run.execution_id,
        )

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            response = await self._client.get(path, params)
        except (HttpTimeout, HttpConnectionError) as exc:
            raise _Transient(str(exc)) from exc
        except HttpRequestError as exc:
            raise EngineError(f"{self._config.name}: {exc}") from None
        if response.status_code == 404:
            raise _NotFound
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise EngineError(f"{self._config.name}: GET {path}: HTTP {response.status_code}")
        try:
            return orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise EngineError(f"{self._config.name}: GET {path}: bad payload: not JSON") from None

    async def _with_retries(self, path: str, params: dict[str, str] | None = None) -> Any:
        cfg = self._config
        not_found = errors = 0
        while True:
            try:
                return await self._get_json(path, params)
            except _NotFound:
                not_found += 1
                if not_found >= cfg.not_found_attempts:
                    raise
            except _Transient as exc:
                errors += 1
                if errors >= cfg.error_attempts:
                    raise EngineError(
                        f"{cfg.name}: GET {path}: {exc} (after {errors} attempts)"
                    ) from None
            await asyncio.sleep(cfg.backoff_seconds * 2 ** (not_found + errors - 1))

    async def get_run(self, external_id: str, *, with_steps: bool = False) -> EngineRun | None:
        # Escaped whole, `/` included: an id with `?` or `#` must not name another run.
        path = self._config.run_path.format(external_id=quote(external_id, safe=""))
        try:
            payload = await self._with_retries(path)
        except _NotFound:
            return None
        return self.parse_run(payload, external_id)

    async def list_runs(self, since: datetime, until: datetime) -> list[EngineRun]:
        # The problems are this listing's: a listing that is gone (404) or fails has none of
        # the last one's, which would otherwise be flagged and counted again every pass.
        self.listing_problems = []
        cfg = self._config
        list_path = cfg.list_path
        if not list_path:
            return []
        params = {"since": since.isoformat(), "until": until.isoformat()}
        # Keyed by what tells runs apart, not by id alone: run ids are unique per org only,
        # and an engine may list several runs under one id (a reused job id).
        runs: dict[tuple[str, str | None, str | None], list[EngineRun]] = {}
        problems: list[str] = []
        seen_cursors: set[str] = set()
        for page in range(cfg.list_max_pages):
            try:
                payload = await self._with_retries(list_path, params)
            except _NotFound:
                if page:  # a cursor the engine no longer knows: keep the pages read
                    problems.append(f"page {page + 1} of the listing is gone (HTTP 404)")
                    break
                # Not "no runs": a listing that is not there (a wrong path) would otherwise
                # hide every orphan run for good, with nothing reported.
                raise EngineError(
                    f"{cfg.name}: GET {list_path}: HTTP 404, no listing there (set "
                    "RECONCILER_HTTP_LIST_PATH to the engine's, or empty to list nothing)"
                ) from None
            items = payload.get("runs") if isinstance(payload, dict) else payload
            if not isinstance(items, list):
                raise EngineError(f"{cfg.name}: bad payload: run list is not a list")
            # One run the engine reports oddly must not hide the others (their orphans and
            # finished-row corrections): it is left out and reported.
            for index, item in enumerate(items):
                try:
                    run = self.parse_run(item)
                except EngineError as exc:
                    where = f"page {page + 1}, run {index}" if page else f"run {index}"
                    problems.append(f"{where} of the listing: {exc}")
                    continue
                add_listed(runs, run)
            cursor = _next_cursor(payload)
            if cursor is None:
                break
            if cursor in seen_cursors:
                problems.append(f"the listing's page {page + 1} points back to cursor {cursor!r}")
                break
            seen_cursors.add(cursor)
            params = {**params, "cursor": cursor}
        else:
            problems.append(
                f"the listing has more than {cfg.list_max_pages} pages: the rest was not read "
                "(RECONCILER_HTTP_LIST_MAX_PAGES)"
            )
        self.listing_problems = problems
        return [run for same_key in runs.values() for run in same_key]


def _same_run(a: EngineRun, b: EngineRun) -> bool:
    # Two starts that differ are two runs (an engine reusing a job id); a run listed before
    # it started (no start yet) and after is one.
    return a.started_at is None or b.started_at is None or a.started_at == b.started_at


def _later(a: EngineRun, b: EngineRun) -> EngineRun:
    """Of two sightings of one run, the one further along (status, then a known start)."""
    if b.status.rank != a.status.rank:
        return b if b.status.rank > a.status.rank else a
    return b if a.started_at is None and b.started_at is not None else a


def add_listed(
    runs: dict[tuple[str, str | None, str | None], list[EngineRun]], run: EngineRun
) -> None:
    """Add one listed run, each run once. Pages may overlap (runs started while paging shift
    them), so a run may be listed twice, even queued on one page and started on the next.
    Runs are told apart by id, org and execution (two teams' job 42 are two runs) and by
    their start (an engine reusing a job id)."""
    same_key = runs.setdefault((run.external_id, run.org, run.execution_id), [])
    for index, seen in enumerate(same_key):
        if _same_run(seen, run):
            same_key[index] = _later(seen, run)
            return
    same_key.append(run)
