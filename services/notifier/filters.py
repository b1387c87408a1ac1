"""Client frames (`subscribe`, `resume_from`) and the rule deciding who receives which event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from services.notifier.summary import EventMeta
from shared.access import Scope
from shared.events import STATUS_RANK, Name, Status, trigger_group
from shared.validation import describe

Trigger = Annotated[str, Field(min_length=1, max_length=64)]


def _not_a_boolean(value: object) -> object:
    # JSON `true` would pass as sequence 1 and replay the whole stream.
    if isinstance(value, bool):
        raise ValueError("must be a stream sequence number, not a boolean")
    return value


StreamSeq = Annotated[int, Field(ge=0, le=2**63), BeforeValidator(_not_a_boolean)]


class Subscribe(BaseModel):
    """Optional narrowing filters; an empty or missing list means "any"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_name: Annotated[list[Name], Field(max_length=1000)] | None = None
    status: Annotated[list[Status], Field(max_length=10)] | None = None
    triggered_by: Annotated[list[Trigger], Field(max_length=100)] | None = None


class ClientFrame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    subscribe: Subscribe | None = None
    resume_from: StreamSeq | None = None


@dataclass(frozen=True, slots=True)
class FrameError:
    """Why a client frame was refused; sent back as an `error` frame."""

    error: str
    detail: str


@dataclass(frozen=True, slots=True)
class Filter:
    """A client's filters as sets, ready for the per-event check."""

    agents: frozenset[str] | None = None
    statuses: frozenset[Status] | None = None
    triggers: frozenset[str] | None = None
    #: Execution events of a status ranked above this may take a row out of `statuses`
    #: (statuses only move forward: pending -> running -> a terminal one). Derived.
    leaving_rank: int = field(init=False, default=2)

    def __post_init__(self) -> None:
        if self.statuses:
            object.__setattr__(self, "leaving_rank", min(STATUS_RANK[s] for s in self.statuses))

    @classmethod
    def from_subscribe(cls, sub: Subscribe) -> Filter:
        return cls(
            agents=frozenset(sub.agent_name) if sub.agent_name else None,
            statuses=frozenset(sub.status) if sub.status else None,
            triggers=frozenset(sub.triggered_by) if sub.triggered_by else None,
        )


EVERYTHING = Filter()
#: Until a valid `subscribe`, after an invalid opening request: a filter never widens silently.
NOTHING = Filter(agents=frozenset())


def parse_frame(data: str | bytes) -> ClientFrame | FrameError:
    """A valid client frame, or the error to answer with (the connection stays usable)."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return FrameError("invalid_json", str(exc))
    if not isinstance(raw, dict):
        return FrameError("invalid_frame", "a frame is a JSON object")
    try:
        return ClientFrame.model_validate(raw)
    except ValidationError as exc:
        return FrameError("invalid_frame", describe(exc, "frame"))


def visible(scope: Scope, meta: EventMeta) -> bool:
    """Access: the caller's org, then their agents (admins: all of them)."""
    return meta.org == scope.org and scope.allows(meta.agent)


def wanted(flt: Filter, meta: EventMeta) -> bool:
    """The client's own filters. Under a status filter, an execution event whose status ranks
    above one of the filter's is delivered too (it may be a row leaving the filter; its status
    shows it). A
    filter never widens otherwise: an event that cannot show it matches
    (an event whose trigger is unknown, even after `TriggerMemory`) is left out. `other` stands
    for every unknown trigger, as in the stats' grouping.
    """
    if flt.agents is not None and meta.agent not in flt.agents:
        return False
    if (
        flt.statuses is not None
        and meta.status not in flt.statuses
        # Past a status the filter holds, an execution event may take a row out of it
        # (running -> failed under `status=running`): it is delivered, so that the client
        # sees it leave. A step's end takes no execution out of anything.
        and (meta.is_component or STATUS_RANK[meta.status] <= flt.leaving_rank)
    ):
        return False
    if flt.triggers is not None:
        if meta.triggered_by is None:
            return False
        if (
            meta.triggered_by not in flt.triggers
            and trigger_group(meta.triggered_by) not in flt.triggers
        ):
            return False
    return True


def delivers(scope: Scope, flt: Filter, meta: EventMeta) -> bool:
    return visible(scope, meta) and wanted(flt, meta)
