"""Routes that match on the path as sent, so a percent-encoded `/` stays inside its segment.

Execution ids (`wf/run-1`), workflow and project names (`team/etl`) and share user ids
(`corp/alice`) may hold `/`; clients percent-encode them as one path segment (`wf%2Frun-1`).
"""

from __future__ import annotations

from urllib.parse import unquote

from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope


def _sent_path(scope: Scope) -> str | None:
    """The route path with the client's percent-encoding kept, when the server passed it on
    (ASGI `raw_path`) and it is the path being routed (not a rewritten one)."""
    raw = scope.get("raw_path")
    if not raw:
        return None
    try:
        sent = bytes(raw).split(b"?", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and sent.startswith(root) and path.startswith(root):
        sent, path = sent[len(root) :], path[len(root) :]
    return sent if unquote(sent) == path else None


class SentPathRoute(APIRoute):
    """Matches on the path as sent, so `%2F` inside a parameter stays inside its one segment.

    Starlette routes the decoded path, where `/api/executions/wf%2Frun-1/log` would read as
    the execution `wf` with extra segments (404), and `.../a%2Flog` as the log of `a`.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        sent = _sent_path(scope)
        if sent is None:
            return super().matches(scope)
        match, child = super().matches({**scope, "path": sent, "root_path": ""})
        if match is not Match.NONE:
            params = dict(child["path_params"])
            for name in self.param_convertors:
                params[name] = unquote(params[name])
            child["path_params"] = params
        return match, child
