"""The agent client: publish execution and step events to fleetwatch over NATS JetStream.

Imports only nats-py, pydantic (through the event contract) and orjson.
"""

from __future__ import annotations

from shared.publisher.checks import InvalidEventError
from shared.publisher.client import Fleet, PublishError, PublisherStats
from shared.publisher.envelope import OutgoingEvent, component_event, execution_event, new_id
from shared.publisher.run import Run, Step, current_run
from shared.publisher.spool import Spool, SpoolFullError, SpoolLockedError
from shared.publisher.sync import (
    FleetClosedError,
    FleetNotStartedError,
    SyncFleet,
    SyncRun,
    SyncStep,
)

__all__ = [
    "Fleet",
    "FleetClosedError",
    "FleetNotStartedError",
    "InvalidEventError",
    "OutgoingEvent",
    "PublishError",
    "PublisherStats",
    "Run",
    "Spool",
    "SpoolFullError",
    "SpoolLockedError",
    "Step",
    "SyncFleet",
    "SyncRun",
    "SyncStep",
    "component_event",
    "current_run",
    "execution_event",
    "new_id",
]
