"""Remember each recent execution's trigger, so a completion that omits it still meets a filter."""

from __future__ import annotations

import dataclasses

from cachetools import LRUCache

from services.notifier.summary import Outgoing


class TriggerMemory:
    """(org, agent, execution id) → triggered_by, learned from the events that carried it.

    Keyed by the agent of the subject too: another agent of the org publishing under the same
    execution id (which ingest refuses) must not change what filters this one's events meet.
    """

    def __init__(self, maxsize: int = 200_000) -> None:
        self._known: LRUCache[tuple[str, str, str], str] = LRUCache(maxsize=maxsize)

    def enrich(self, out: Outgoing) -> Outgoing:
        meta = out.meta
        key = (meta.org, meta.agent, meta.execution_id)
        if meta.triggered_by is not None:
            self._known[key] = meta.triggered_by
            return out
        known = self._known.get(key)
        if known is None:
            return out
        return dataclasses.replace(out, meta=dataclasses.replace(meta, triggered_by=known))
