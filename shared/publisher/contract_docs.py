"""Generate the checked-in contract documents from the event models.

`python -m shared.publisher.contract_docs` writes `shared/schema/asyncapi.json` (AsyncAPI 3.0:
the event channels and the terminate request/reply), `shared/schema/event.schema.json` (the
envelope) and one `shared/schema/<event_type>.schema.json` per event type; `--check` exits 1
when the checked-in files differ from what the code generates.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from shared.events import (
    NAME_PATTERN,
    Event,
    EventType,
    TerminateReply,
    TerminateRequest,
    event_json_schema,
)

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schema"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
_COMPONENTS_REF = "#/components/schemas/{model}"

_NAME_PARAM = {
    "description": "Matches [A-Za-z0-9_-]{1,64}; the subject decides the tenant and the agent.",
}
_HEADERS = {
    "type": "object",
    "required": ["Nats-Msg-Id"],
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "description": "`<org>:<event_id>`: JetStream drops repeats inside its "
            "duplicate window, so re-sending after a lost ack is safe. The org prefix keeps "
            "one org's ids from hiding another's (the bare event_id is still accepted). "
            "An event_id with a control character or whitespace at either end (which a header "
            "value loses) is sent as `<org>:sha256:<hex of its UTF-8>`.",
        }
    },
}
_DESCRIPTIONS = {
    EventType.EXECUTION_QUEUED: "An execution is accepted and waits (status pending).",
    EventType.EXECUTION_STARTED: "An execution began running.",
    EventType.EXECUTION_PROGRESS: "An update while running (tokens, cost, log so far).",
    EventType.EXECUTION_COMPLETED: "An execution ended with success.",
    EventType.EXECUTION_FAILED: "An execution ended with an error (error, error_type).",
    EventType.EXECUTION_CANCELLED: "An execution was stopped (terminate or cancel).",
    EventType.COMPONENT_STARTED: "A step (attempt n) of an execution began.",
    EventType.COMPONENT_COMPLETED: "A step attempt ended with success.",
    EventType.COMPONENT_FAILED: "A step attempt failed; a later attempt may follow.",
}


def _with_name_patterns(node: Any) -> Any:
    """Write the org/agent name rule (a pydantic validator, so not in the generated schema)."""
    if isinstance(node, dict):
        out = {k: _with_name_patterns(v) for k, v in node.items()}
        props = out.get("properties")
        if isinstance(props, dict):
            for key in ("org", "agent_name"):
                if key in props:
                    props[key] = _name_rule(props[key])
        return out
    if isinstance(node, list):
        return [_with_name_patterns(v) for v in node]
    return node


def _name_rule(prop: dict[str, Any]) -> dict[str, Any]:
    if prop.get("type") == "string":
        return {**prop, "maxLength": 64, "pattern": NAME_PATTERN}
    if "anyOf" in prop:
        return {**prop, "anyOf": [_name_rule(p) for p in prop["anyOf"]]}
    return prop


def _specialise(envelope: dict[str, Any], type_: EventType) -> dict[str, Any]:
    """The envelope schema narrowed to one event type."""
    schema = copy.deepcopy(envelope)
    props = schema["properties"]
    props["type"] = {"const": type_.value, "title": "Type"}
    body, other = ("component", "execution") if type_.is_component else ("execution", "component")
    props.pop(other, None)
    props[body] = {"$ref": props[body]["anyOf"][0]["$ref"]}
    schema["required"] = sorted({*schema.get("required", []), body})
    if type_.is_component:
        props["agent_name"]["description"] = (
            "The agent that ran the step. Over NATS it may be left out (the subject's agent "
            "token is used); the HTTP gateway requires it."
        )
    else:
        props.pop("agent_name", None)
    schema["title"] = type_.value
    schema["description"] = _DESCRIPTIONS[type_]
    return schema


def event_type_schemas() -> dict[str, dict[str, Any]]:
    """A standalone JSON Schema per event type (`$defs` inside each)."""
    envelope = _with_name_patterns(event_json_schema())
    out = {}
    for type_ in EventType:
        schema = _specialise(envelope, type_)
        out[type_.value] = {"$schema": DIALECT, "$id": f"{type_.value}.schema.json", **schema}
    return out


def envelope_schema() -> dict[str, Any]:
    return {
        "$schema": DIALECT,
        "$id": "event.schema.json",
        **_with_name_patterns(event_json_schema()),
    }


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the event contract and the terminate command."""
    envelope = _with_name_patterns(
        Event.model_json_schema(mode="validation", ref_template=_COMPONENTS_REF)
    )
    schemas: dict[str, Any] = dict(envelope.pop("$defs"))
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for type_ in EventType:
        name = type_.value
        schemas[name] = _specialise(envelope, type_)
        messages[name] = {
            "name": name,
            "title": name,
            "summary": _DESCRIPTIONS[type_],
            "contentType": "application/json",
            "headers": _HEADERS,
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        channels[name] = {
            "address": f"{{prefix}}.events.{{org}}.{{agent}}.{name}",
            "parameters": {
                "prefix": {"description": "Subject prefix (default fleet).", "default": "fleet"},
                "org": _NAME_PARAM,
                "agent": _NAME_PARAM,
            },
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"publish_{name}"] = {
            "action": "send",
            "summary": f"An agent publishes {name} to JetStream stream FLEET_EVENTS.",
            "channel": {"$ref": f"#/channels/{name}"},
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
        }
    schemas["TerminateRequest"] = TerminateRequest.model_json_schema(ref_template=_COMPONENTS_REF)
    schemas["TerminateReply"] = TerminateReply.model_json_schema(ref_template=_COMPONENTS_REF)
    messages["terminateRequest"] = {
        "name": "terminateRequest",
        "contentType": "application/json",
        "payload": {"$ref": "#/components/schemas/TerminateRequest"},
    }
    messages["terminateReply"] = {
        "name": "terminateReply",
        "contentType": "application/json",
        "payload": {"$ref": "#/components/schemas/TerminateReply"},
    }
    channels["terminate"] = {
        "address": "{prefix}.commands.{org}.{agent}.terminate",
        "description": "NATS request/reply: fleetwatch asks an agent to stop one execution. "
        "The agent answers, then publishes execution_cancelled. No responder means the "
        "agent is unreachable.",
        "parameters": {
            "prefix": {"description": "Subject prefix (default fleet).", "default": "fleet"},
            "org": _NAME_PARAM,
            "agent": _NAME_PARAM,
        },
        "messages": {"terminateRequest": {"$ref": "#/components/messages/terminateRequest"}},
    }
    channels["terminateReply"] = {
        "address": None,
        "description": "The request's reply inbox.",
        "messages": {"terminateReply": {"$ref": "#/components/messages/terminateReply"}},
    }
    operations["answer_terminate"] = {
        "action": "receive",
        "summary": "An agent receives a terminate request for its running execution.",
        "channel": {"$ref": "#/channels/terminate"},
        "messages": [{"$ref": "#/channels/terminate/messages/terminateRequest"}],
        "reply": {
            "channel": {"$ref": "#/channels/terminateReply"},
            "messages": [{"$ref": "#/channels/terminateReply/messages/terminateReply"}],
        },
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "fleetwatch events",
            "version": "1.0.0",
            "description": "Events agents publish about their executions, over NATS "
            "JetStream (or POST /api/events on the ingest service). Contract changes are "
            "additive only.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "NATS with JetStream; stream FLEET_EVENTS holds "
                "fleet.events.>, invalid events go to FLEET_DLQ.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def render(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def documents() -> dict[str, bytes]:
    """File name → content of every generated contract document."""
    files = {"asyncapi.json": render(asyncapi()), "event.schema.json": render(envelope_schema())}
    for name, schema in event_type_schemas().items():
        files[f"{name}.schema.json"] = render(schema)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if files are stale")
    parser.add_argument("--out", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, content in documents().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_bytes() != content:
                stale.append(name)
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    if stale:
        print("stale contract documents: " + ", ".join(stale), file=sys.stderr)
        print("regenerate: python -m shared.publisher.contract_docs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
