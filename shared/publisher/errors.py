"""`InvalidEventError`, apart from the checks that raise it, so that building an envelope
(`envelope.py`, which the checks import) can raise it too."""

from __future__ import annotations

from shared.validation import NUL_REFUSED


class InvalidEventError(ValueError):
    """The event is never published nor spooled: ingest would dead-letter it, or NATS
    refuses it for good. `field` names the offending field (`event` for the whole)."""

    def __init__(self, event_id: str, field: str, reason: str, detail: str) -> None:
        where = "" if detail.startswith(f"{field}: ") else f"{field}: "
        super().__init__(f"event {event_id} refused ({reason}): {where}{detail}")
        self.event_id = event_id
        self.field = field
        self.reason = reason
        self.detail = detail

    @property
    def holds_nul(self) -> bool:
        return self.detail == NUL_REFUSED

    @property
    def holds_surrogate(self) -> bool:
        """Refused for a lone surrogate in a string, which no UTF-8 encoder writes."""
        return self.reason == "not_json" and "surrogates not allowed" in self.detail
