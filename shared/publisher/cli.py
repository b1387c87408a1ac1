"""`fleetwatch emit`: publish events from the shell, for scripts and cron jobs.

    fleetwatch emit --org acme --agent ruby-agent --type execution_started --id run-1 \
        --field message="Process invoice" --field triggered_by=schedule
    fleetwatch emit --json events.ndjson        # one event, a JSON array, or NDJSON; - for stdin

Values of `--field k=v` are read as JSON when they parse (`cost=0.02`, `tool_calls=[]`),
else as text. Every event is validated before anything is published; the command exits 0
only when JetStream acknowledged all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats.errors
import orjson

from shared.events import EventType
from shared.publisher.checks import InvalidEventError, checked
from shared.publisher.client import Fleet, PublishError
from shared.publisher.envelope import component_event, execution_event, new_id
from shared.settings import CommonSettings
from shared.subjects import Subjects
from shared.urls import redacted


class UsageError(ValueError):
    pass


def parse_value(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def parse_fields(pairs: Sequence[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--field {pair!r} must read key=value")
        fields[key] = parse_value(value)
    return fields


def event_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    for flag in ("org", "agent", "type", "id"):
        if not getattr(args, flag):
            raise UsageError(f"--{flag} is required without --json")
    type_ = EventType(args.type)
    fields = parse_fields(args.field)
    if type_.is_component:
        return component_event(
            type_, org=args.org, agent=args.agent, event_id=args.event_id,
            component={"execution_id": args.id, **fields}, source=args.source,
        )  # fmt: skip
    return execution_event(
        type_, org=args.org, event_id=args.event_id,
        execution={"id": args.id, "agent_name": args.agent, **fields}, source=args.source,
    )  # fmt: skip


def events_from_json(text: bytes, org: str | None) -> list[dict[str, Any]]:
    try:
        parsed = orjson.loads(text)
        items = parsed if isinstance(parsed, list) else [parsed]
    except orjson.JSONDecodeError:
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise UsageError(f"line {number} is not JSON: {exc}") from None
    events: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise UsageError("each event must be a JSON object")
        if org is not None:
            item.setdefault("org", org)
        item.setdefault("event_id", new_id())
        events.append(item)
    if not events:
        raise UsageError("no events in the input")
    return events


def check(events: list[dict[str, Any]], subjects: Subjects | None = None) -> list[str]:
    """Why ingest would dead-letter each event, judged by its own validator on the exact
    bytes `publish` sends (contract, 900 KiB limit, NUL); empty when every event passes."""
    problems = []
    for index, event in enumerate(events):
        try:
            checked(subjects or Subjects(), event)
        except InvalidEventError as exc:
            problems.append(f"event {index}: {exc}")
    return problems


async def publish(events: list[dict[str, Any]], nats_url: str, subjects: Subjects) -> None:
    fleet = Fleet(nats_url, org=str(events[0]["org"]), subjects=subjects)
    try:
        await fleet.start()
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise PublishError(
            f"NATS at {redacted(nats_url)} did not answer ({str(exc) or type(exc).__name__}); "
            "is it running? check NATS_URL or --nats-url"
        ) from None
    try:
        for event in events:
            await fleet.publish(event)
            print(f"published {event['type']} {event['event_id']}")
    finally:
        await fleet.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetwatch emit", description="publish events to fleetwatch from the shell"
    )
    parser.add_argument("--org")
    parser.add_argument("--agent")
    parser.add_argument("--type", choices=[t.value for t in EventType])
    parser.add_argument("--id", help="the execution id")
    parser.add_argument("--field", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--event-id", help="default: a new random id")
    parser.add_argument("--source", help="who publishes (default agent:<agent>)")
    parser.add_argument("--json", metavar="FILE", help="events as JSON or NDJSON; - for stdin")
    parser.add_argument("--nats-url", help="default: $NATS_URL")
    parser.add_argument("--prefix", help="subject prefix (default: $FLEETWATCH_SUBJECT_PREFIX)")
    return parser


def emit_main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    settings = CommonSettings()
    try:
        if args.json:
            text = sys.stdin.buffer.read() if args.json == "-" else Path(args.json).read_bytes()
            events = events_from_json(text, args.org)
        else:
            if args.source is None and args.agent:
                args.source = f"agent:{args.agent}"
            events = [event_from_flags(args)]
    except (UsageError, ValueError) as exc:
        print(f"fleetwatch emit: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fleetwatch emit: cannot read {args.json}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    subjects = Subjects(args.prefix or settings.subject_prefix)
    problems = check(events, subjects)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    try:
        asyncio.run(publish(events, args.nats_url or settings.nats_url, subjects))
    except (PublishError, InvalidEventError, OSError, TimeoutError, nats.errors.Error) as exc:
        # Some (a refused connection, a timeout) say nothing but their type.
        print(f"fleetwatch emit: not published: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return 1
    return 0
