"""Subject and stream names of DESIGN.md, derived from one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from shared.events import EventType, is_valid_name


class SubjectError(ValueError):
    """A subject that is not `<prefix>.events.<org>.<agent>.<type>`."""


@dataclass(frozen=True, slots=True)
class EventSubject:
    org: str
    agent: str
    type: EventType


@dataclass(frozen=True, slots=True)
class Subjects:
    """All names that hang off one prefix: `fleet` gives `fleet.events.>` and `FLEET_EVENTS`."""

    prefix: str = "fleet"

    def __post_init__(self) -> None:
        if not is_valid_name(self.prefix):
            raise ValueError(f"subject prefix {self.prefix!r} must match [A-Za-z0-9_-]{{1,64}}")

    @property
    def _stream_base(self) -> str:
        return self.prefix.upper().replace("-", "_")

    @property
    def events_stream(self) -> str:
        return f"{self._stream_base}_EVENTS"

    @property
    def dlq_stream(self) -> str:
        return f"{self._stream_base}_DLQ"

    @property
    def all_events(self) -> str:
        return f"{self.prefix}.events.>"

    @property
    def all_dlq(self) -> str:
        return f"{self.prefix}.dlq.>"

    def event(self, org: str, agent: str, type_: EventType | str) -> str:
        type_value = EventType(type_).value
        for label, token in (("org", org), ("agent", agent)):
            if not is_valid_name(token):
                raise SubjectError(f"{label} {token!r} must match [A-Za-z0-9_-]{{1,64}}")
        return f"{self.prefix}.events.{org}.{agent}.{type_value}"

    def org_events(self, org: str) -> str:
        return f"{self.prefix}.events.{org}.>"

    def dlq(self, reason: str) -> str:
        return f"{self.prefix}.dlq.{reason}"

    def terminate(self, org: str, agent: str) -> str:
        return f"{self.prefix}.commands.{org}.{agent}.terminate"

    def all_terminate(self) -> str:
        return f"{self.prefix}.commands.*.*.terminate"

    def sync_components(self) -> str:
        """Request/reply subject on which the reconciler syncs one execution's steps."""
        return f"{self.prefix}.rpc.reconciler.sync_components"

    def parse_event(self, subject: str) -> EventSubject:
        """The org, agent and type a subject names; raises SubjectError for any other shape."""
        return _parse_event(self.prefix, subject)


@lru_cache(maxsize=8192)
def _parse_event(prefix: str, subject: str) -> EventSubject:
    # Cached: a fleet publishes on a bounded set of subjects, and ingest parses every message's.
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != prefix or parts[1] != "events":
        raise SubjectError(f"subject {subject!r} is not {prefix}.events.<org>.<agent>.<type>")
    _, _, org, agent, type_token = parts
    if not is_valid_name(org) or not is_valid_name(agent):
        raise SubjectError(f"subject {subject!r} has an invalid org or agent token")
    try:
        type_ = EventType(type_token)
    except ValueError:
        raise SubjectError(f"subject {subject!r} names unknown event type {type_token!r}") from None
    return EventSubject(org=org, agent=agent, type=type_)
