"""A local HTTP engine for tests and the benchmark: runs by id, with misbehaviour by id prefix.

The listing (`/runs?since=&until=`) pages by `page_size` with a `next` cursor when set.
Prefixes: `slow-` answers after `slow_s`; `e500-` always 500; `flaky-` one 500 then the run;
`late-` 404 twice then the run; `bad-` an unknown status; `notjson-` a non-JSON body;
`synth-<n>` (when `synthetic`) a run made up on the fly: success when n % 3 == 0, else running.
Run it alone with `python -m tests.reconciler.http_engine --port P` (the benchmark does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


@dataclass
class EngineState:
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    slow_s: float = 2.0
    delay_s: float = 0.0
    synthetic: bool = False
    #: Runs per listing page, with `next` = the offset of the following page (None: one page).
    page_size: int | None = None
    #: Every page's `next` points back to the first page (a broken engine's cursor).
    cursor_loops: bool = False
    #: Pages after the first answer 404 (a cursor the engine has expired).
    cursor_expires: bool = False

    def add(self, run_id: str, status: str, **extra: Any) -> None:
        self.runs[run_id] = {"id": run_id, "status": status, **extra}


def create_app(state: EngineState) -> Starlette:
    async def get_run(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        state.calls[run_id] += 1
        calls = state.calls[run_id]
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if run_id.startswith("slow-"):
            await asyncio.sleep(state.slow_s)
        if run_id.startswith("e500-") or (run_id.startswith("flaky-") and calls == 1):
            return PlainTextResponse("internal error", status_code=500)
        if run_id.startswith("late-") and calls <= 2:
            return JSONResponse({"error": "not found"}, status_code=404)
        if run_id.startswith("bad-"):
            return JSONResponse({"id": run_id, "status": "exploded"})
        if run_id.startswith("notjson-"):
            return PlainTextResponse("<html>oops</html>")
        if state.synthetic and run_id.startswith("synth-"):
            n = int(run_id.rsplit("-", 1)[1])
            status = "succeeded" if n % 3 == 0 else "running"
            return JSONResponse({"id": run_id, "status": status})
        run = state.runs.get(run_id)
        if run is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse(run)

    async def list_runs(request: Request) -> Response:
        since = datetime.fromisoformat(request.query_params["since"])
        until = datetime.fromisoformat(request.query_params["until"])
        found = [
            run
            for run in state.runs.values()
            if "started_at" in run and since <= datetime.fromisoformat(run["started_at"]) <= until
        ]
        state.calls["listing"] += 1
        if state.page_size is None:
            return JSONResponse({"runs": found})
        if state.cursor_expires and "cursor" in request.query_params:
            return JSONResponse({"error": "cursor expired"}, status_code=404)
        start = int(request.query_params.get("cursor", "0"))
        end = start + state.page_size
        page: dict[str, Any] = {"runs": found[start:end]}
        if end < len(found):
            page["next"] = "0" if state.cursor_loops else str(end)
        return JSONResponse(page)

    return Starlette(
        routes=[Route("/runs/{run_id}", get_run), Route("/runs", list_runs)],
    )


@contextlib.asynccontextmanager
async def serving(state: EngineState, port: int, *, keep_alive_s: int = 5) -> AsyncIterator[str]:
    """The engine on 127.0.0.1:port inside this event loop, for the block's duration.

    `keep_alive_s`: how long uvicorn keeps an idle connection open (its default is 5 s).
    """
    config = uvicorn.Config(
        create_app(state),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_keep_alive=keep_alive_s,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    state = EngineState(synthetic=True, delay_s=args.delay_ms / 1000)
    uvicorn.run(
        create_app(state), host="127.0.0.1", port=args.port, log_level="warning", lifespan="off"
    )


if __name__ == "__main__":
    main()
