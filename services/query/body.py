"""JSON request bodies: read only after the caller is authenticated, capped, then validated.

A body model declared as an endpoint parameter is read and decoded by FastAPI before any
dependency runs, so an anonymous client could make the service buffer and parse any amount of
JSON before its 401. Endpoints that take a body instead authenticate first (their caller
dependency), then call `json_body`, which reads at most `MAX_BODY_BYTES` (Content-Length or
not) and answers 413 past it. `openapi_body` keeps the body in the OpenAPI schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, overload

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError, field_validator
from starlette.requests import ClientDisconnect

#: The bodies taken are a few short strings; 64 KiB leaves room and bounds the work.
MAX_BODY_BYTES = 64 * 1024
#: What JSON's `\ud800` escape leaves in a Python str when no second half follows: it cannot
#: be encoded as UTF-8, so neither Postgres nor a JSON reply could carry it.
_SURROGATE = re.compile("[\ud800-\udfff]")

M = TypeVar("M", bound=BaseModel)


class BodyModel(BaseModel):
    """Base of the request bodies: every text field holds whole characters only."""

    @field_validator("*", mode="before")
    @classmethod
    def _whole_characters(cls, value: Any) -> Any:
        if isinstance(value, str) and _SURROGATE.search(value):
            raise ValueError("must not contain a lone UTF-16 surrogate (\\ud800-\\udfff)")
        return value


def openapi_body(model: type[BaseModel], *, required: bool) -> dict[str, Any]:
    """`openapi_extra` describing the JSON body an endpoint reads itself with `json_body`."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": schema}},
        },
        "responses": {
            "413": {"description": f"Request body larger than {MAX_BODY_BYTES} bytes"},
            "415": {"description": "Request body not sent as application/json"},
        },
    }


def _printable(text: str) -> str:
    """`text` as it can be sent back: a lone surrogate (say, in a key) spelled as an escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _invalid(errors: Iterable[Mapping[str, Any]]) -> HTTPException:
    """422 in FastAPI's shape (`detail[].loc` starts with "body"), without echoing the input."""
    detail = [
        {
            "loc": ["body", *(_printable(p) if isinstance(p, str) else p for p in e["loc"])],
            "msg": _printable(e["msg"]),
            "type": e["type"],
        }
        for e in errors
    ]
    return HTTPException(422, detail=detail)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, detail=f"request body larger than {limit} bytes")


async def read_capped(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(400, detail="the client went away while sending the body") from None
    return b"".join(chunks)


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


@overload
async def json_body(request: Request, model: type[M], *, required: Literal[True]) -> M: ...


@overload
async def json_body(request: Request, model: type[M], *, required: Literal[False]) -> M | None: ...


async def json_body(request: Request, model: type[M], *, required: bool) -> M | None:
    """The body as `model`; None when it is empty or JSON `null` and not `required`.

    413 past `MAX_BODY_BYTES`, 415 for a body that is not `application/json`, 422 naming the
    field for anything else (FastAPI's `detail[].loc = ["body", field]`).
    """
    raw = await read_capped(request)
    data: Any = None
    if raw.strip():
        if not _is_json(request.headers.get("content-type")):
            raise HTTPException(415, detail="send the body as application/json")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, or nested too deep
            msg = f"invalid JSON: {exc}"[:200]
            raise _invalid([{"loc": (), "msg": msg, "type": "json_invalid"}]) from None
    if data is None:
        if required:
            raise _invalid([{"loc": (), "msg": "Field required", "type": "missing"}])
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc.errors()) from None
