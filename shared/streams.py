"""The JetStream streams of DESIGN.md, created or brought up to date idempotently."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import BadRequestError, NotFoundError

from shared.settings import CommonSettings

DUPLICATE_WINDOW_S = 120.0
DLQ_MAX_AGE_DAYS = 30.0
_DAY = 86_400.0
#: JetStream's error code for "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058
#: "subjects overlap with an existing stream": also what the server answers, now and then,
#: to the second of two processes creating the same stream at the same moment.
_SUBJECTS_OVERLAP = 10065
#: How long a stream another process is creating may take to show (looks, and between them).
_CREATED_LOOKS = 10
_LOOK_WAIT_S = 0.1


class StreamConflictError(RuntimeError):
    """A stream of our name exists for another subject prefix's subjects, or another
    stream holds our subjects."""


def stream_configs(settings: CommonSettings) -> list[StreamConfig]:
    subjects = settings.subjects
    common = {
        "retention": RetentionPolicy.LIMITS,
        "storage": StorageType.FILE,
        "num_replicas": settings.stream_replicas,
        "discard": DiscardPolicy.OLD,
        "duplicate_window": DUPLICATE_WINDOW_S,
    }
    return [
        StreamConfig(
            name=subjects.events_stream,
            subjects=[subjects.all_events],
            max_age=settings.stream_max_age_days * _DAY,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=subjects.dlq_stream,
            subjects=[subjects.all_dlq],
            max_age=DLQ_MAX_AGE_DAYS * _DAY,
            **common,  # type: ignore[arg-type]
        ),
    ]


async def ensure_streams(
    js: JetStreamContext, settings: CommonSettings, *, update: bool = False
) -> None:
    """Create FLEET_EVENTS and FLEET_DLQ (for the configured prefix) where missing; with
    `update`, also bring their limits to `settings`.

    Only ingest, the streams' owner, updates: the retention and replicas are the deployment's,
    and a notifier, a reconciler or an operator's one-off `fleetwatch reconcile --fix` started
    without the deployment's `FLEETWATCH_RETENTION_DAYS` would otherwise cut a 30-day stream to
    the default 7 days, dropping every older event.
    """
    for config in stream_configs(settings):
        assert config.name is not None
        try:
            found = await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config=config)
                continue
            except BadRequestError as exc:
                # Another process created it between our look and our add (a service starting
                # beside its replicas): the server says its name is in use or, while that
                # creation is under way, that its subjects overlap an existing stream's.
                if exc.err_code not in (_STREAM_NAME_IN_USE, _SUBJECTS_OVERLAP):
                    raise
                found = await _made_by_another(js, config, exc)
        theirs = found.config.subjects or []
        if not set(config.subjects or []) <= set(theirs):
            # Prefixes that differ only in case or `-`/`_` share stream names: this one is
            # another prefix's, and updating it would take its subjects away.
            raise StreamConflictError(
                f"stream {config.name} holds {', '.join(theirs) or 'no subjects'}, not "
                f"{', '.join(config.subjects or [])}: another FLEETWATCH_SUBJECT_PREFIX uses "
                "this stream name (prefixes differing only in case or '-'/'_' share one); "
                "choose a prefix of its own"
            )
        if update:
            # Only the limits the deployment sets here; what an operator added to the stream
            # (a disk cap, a message size limit, more subjects) stays as it is.
            wanted = dataclasses.replace(
                found.config,
                max_age=config.max_age,
                num_replicas=config.num_replicas,
                duplicate_window=config.duplicate_window,
            )
            if wanted != found.config:
                await js.update_stream(config=wanted)


async def _made_by_another(
    js: JetStreamContext, config: StreamConfig, refused: BadRequestError
) -> StreamInfo:
    """The stream another process made as we tried to; StreamConflictError, naming the
    stream in the way, when none of that name shows and the subjects are another's."""
    assert config.name is not None
    for look in range(_CREATED_LOOKS):
        try:
            return await js.stream_info(config.name)
        except NotFoundError:
            if look + 1 < _CREATED_LOOKS:
                await asyncio.sleep(_LOOK_WAIT_S)
    subjects = ", ".join(config.subjects or [])
    holder = "another stream"
    with contextlib.suppress(Exception):
        holder = f"stream {await js.find_stream_name_by_subject((config.subjects or [''])[0])}"
    raise StreamConflictError(
        f"stream {config.name} cannot be made: {holder} already takes its subjects "
        f"({subjects}; the server said {refused.description!r}). Delete that stream, or give "
        "this deployment a FLEETWATCH_SUBJECT_PREFIX of its own"
    ) from refused
