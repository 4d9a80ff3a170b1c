"""coderd's AsyncAPI 3.0 document and its messages' JSON Schemas, generated from the pydantic
models in `messages.py`, never written by hand (tests/test_asyncapi.py checks the committed files):

    python -m daemon.asyncapi     # rewrites docs/asyncapi.yaml and docs/schemas/*.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field
from pydantic.json_schema import GenerateJsonSchema

from .. import __version__
from ..broker.connection import request_queue_arguments
from ..config import Settings
from ..request.messages import CodeRequest, Record, RecordResult, Reply

ROOT = Path(__file__).resolve().parents[2]
DRAFT = "https://json-schema.org/draft/2020-12/schema"
GENERATED = "Generated from the pydantic models by `python -m daemon.asyncapi`: do not edit."
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}
REQUEST_QUEUE, REPLY_QUEUE = DEFAULTS["request_queue"], DEFAULTS["default_reply_queue"]
INTERACTIVE_QUEUE = f"{REQUEST_QUEUE}.interactive"


class RequestProperties(BaseModel):
    """AMQP properties of a request message."""

    reply_to: str | None = Field(None, description=f"The queue for the reply; else `{REPLY_QUEUE}`.")
    correlation_id: str | None = Field(None, description="Echoed on the reply; when missing, `message_id` is "
                                                         "echoed; when both are, coderd makes one up.")
    message_id: str | None = None
    content_type: str = Field("application/json", description="Any JSON body is accepted whatever this says.")
    delivery_mode: Literal[1, 2] = Field(2, description="2 (persistent) is recommended.")


class ReplyProperties(BaseModel):
    """AMQP properties and headers of a reply message."""

    correlation_id: str = Field(description="The request's. Delivery is at-least-once: a request may be "
                                            "answered twice, so de-duplicate replies by this.")
    content_type: Literal["application/json"] = "application/json"
    delivery_mode: Literal[2] = Field(2, description="Replies are persistent.")
    undeliverable_to: str | None = Field(None, alias="x-coderd-undeliverable-to", description=(
        f"Header of a reply that could not be routed to its `reply_to` and went to `{REPLY_QUEUE}`: that `reply_to`."))


_ORDER = ["$ref", "title", "description", "type", "enum", "const", "properties", "required", "items", "anyOf",
          "oneOf", "if", "then", "default", "examples"]


class _Generator(GenerateJsonSchema):
    """pydantic's generator with no title on every field, readable key order, examples as written."""

    def field_title_should_be_set(self, schema) -> bool:
        return False

    def sort(self, value: Any, parent_key: str | None = None) -> Any:
        if parent_key in ("examples", "default"):
            return value
        if isinstance(value, dict):
            keys = value if parent_key == "properties" else sorted(
                value, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER) - 2, k))
            return {key: self.sort(value[key], key) for key in keys}
        return [self.sort(item, parent_key) for item in value] if isinstance(value, list) else value


def _map(node: Any, fn) -> Any:
    """`node` with `fn` applied to every object in it, innermost first."""
    if isinstance(node, list):
        return [_map(item, fn) for item in node]
    return fn({key: _map(value, fn) for key, value in node.items()}) if isinstance(node, dict) else node


def json_schema(model: type[BaseModel], *, share: tuple[type[BaseModel], ...] = ()) -> dict:
    """The model's JSON Schema (Draft 2020-12); models in `share`, which the model's own
    schema inlines, become `$defs` and `$ref`s."""
    named = {m.__name__: m for m in share}
    refer = lambda node: {"$ref": f"#/$defs/{node['title']}"} if node.get("title") in named else node  # noqa: E731
    schema = _map(model.model_json_schema(schema_generator=_Generator), refer)
    defs = {**schema.pop("$defs", {}),
            **{name: m.model_json_schema(schema_generator=_Generator) for name, m in named.items()}}
    return {"$schema": DRAFT, "$comment": GENERATED, **schema, **({"$defs": defs} if defs else {})}


def schemas() -> dict[str, dict]:
    """docs/schemas/<name>.schema.json"""
    return {"request": json_schema(CodeRequest, share=(Record,)), "reply": json_schema(Reply),
            "record-result": json_schema(RecordResult)}


def components(*roots: dict) -> dict[str, dict]:
    """Each schema and its `$defs`, by title, as AsyncAPI components with refs rewritten."""
    out: dict[str, dict] = {}
    def rewrite(node: dict) -> dict:
        return {**node, "$ref": node["$ref"].replace("#/$defs/", "#/components/schemas/")} if "$ref" in node else node
    for root in roots:
        root = {k: v for k, v in root.items() if k not in ("$schema", "$comment")}
        defs = root.pop("$defs", {})
        for name, schema in [(root["title"], root), *defs.items()]:
            schema = _map(schema, rewrite)
            if out.setdefault(name, schema) != schema:
                raise ValueError(f"two different schemas are called {name}")
    return out


def _message(name: str, title: str, headers: str, schema: dict, example_headers: dict) -> dict:
    return {"name": name, "title": title, "summary": schema["description"].replace("\n", " "),
            "contentType": "application/json", "correlationId": {"$ref": "#/components/correlationIds/correlationId"},
            "headers": {"$ref": f"#/components/schemas/{headers}"}, "payload": {"$ref": f"#/components/schemas/{name}"},
            "examples": [{"headers": example_headers, "payload": example} for example in schema.get("examples", [])]}


def document() -> dict:
    """The AsyncAPI 3.0.0 document, from a producer's point of view."""
    comps = components(*schemas().values(), json_schema(RequestProperties), json_schema(ReplyProperties))
    ref = lambda path: {"$ref": path}  # noqa: E731
    amqp = {"bindingVersion": "0.3.0"}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "coderd", "version": __version__, "license": {"name": "Apache-2.0"}, "description": (
            "Occupation coding over RabbitMQ: publish a CodeRequest; one Reply comes back (at least once) to its "
            "`reply_to`, with its `correlation_id`. See docs/integrators.md. " + GENERATED)},
        "defaultContentType": "application/json",
        "servers": {"broker": {"host": "127.0.0.1:5672", "protocol": "amqp", "protocolVersion": "0.9.1",
                               "description": f"The daemon's `amqp_url` (default `{DEFAULTS['amqp_url']}`)."}},
        "channels": {
            "codingRequests": {
                "address": REQUEST_QUEUE,
                "description": "The request queue (config `request_queue`): a durable quorum queue that coderd "
                               "declares. Publish to the default exchange with its name as routing key.",
                "messages": {"CodeRequest": ref("#/components/messages/CodeRequest")},
                "bindings": {"amqp": {"is": "queue", "queue": {"name": REQUEST_QUEUE, "durable": True,
                                                               "exclusive": False, "autoDelete": False}, **amqp}},
                "x-amqp-queue-arguments": request_queue_arguments(REQUEST_QUEUE),
            },
            "interactiveCodingRequests": {
                "address": INTERACTIVE_QUEUE,
                "description": "The interactive lane (config `interactive_queue`, default `request_queue` + "
                               "`.interactive`): the same messages, for a person waiting. Its records go into the "
                               "very next call, ahead of the request queue's, and wait for quota pacing at most "
                               "`interactive_max_wait_seconds`. Declared like the request queue; who may publish "
                               "to it is a RabbitMQ permission.",
                "messages": {"CodeRequest": ref("#/components/messages/CodeRequest")},
                "bindings": {"amqp": {"is": "queue", "queue": {"name": INTERACTIVE_QUEUE, "durable": True,
                                                               "exclusive": False, "autoDelete": False}, **amqp}},
                "x-amqp-queue-arguments": request_queue_arguments(INTERACTIVE_QUEUE),
            },
            "codingReplies": {
                "address": None,
                "description": f"The request's `reply_to` queue (the producer's), or `{REPLY_QUEUE}` (config "
                               f"`default_reply_queue`) without one; replies go through the default exchange.",
                "messages": {"Reply": ref("#/components/messages/Reply")},
                "bindings": {"amqp": {"is": "routingKey", "exchange": {"name": "", "type": "default"}, **amqp}},
            },
        },
        "operations": {"sendInteractiveCodingRequest": {
            "action": "send", "channel": ref("#/channels/interactiveCodingRequests"),
            "summary": "The same, for a person waiting: answered ahead of bulk requests.",
            "messages": [ref("#/channels/interactiveCodingRequests/messages/CodeRequest")],
            "bindings": {"amqp": {"deliveryMode": 2, **amqp}},
            "reply": {"address": {"location": "$message.header#/reply_to",
                                  "description": f"The request's `reply_to`; `{REPLY_QUEUE}` without one."},
                      "channel": ref("#/channels/codingReplies"),
                      "messages": [ref("#/channels/codingReplies/messages/Reply")]},
        }, "sendCodingRequest": {
            "action": "send", "channel": ref("#/channels/codingRequests"),
            "summary": "Ask coderd to code records; it answers on the request's `reply_to`.",
            "messages": [ref("#/channels/codingRequests/messages/CodeRequest")],
            "bindings": {"amqp": {"deliveryMode": 2, **amqp}},
            "reply": {"address": {"location": "$message.header#/reply_to",
                                  "description": f"The request's `reply_to`; `{REPLY_QUEUE}` without one."},
                      "channel": ref("#/channels/codingReplies"),
                      "messages": [ref("#/channels/codingReplies/messages/Reply")]},
        }},
        "components": {
            "schemas": comps,
            "messages": {
                "CodeRequest": _message("CodeRequest", "Coding request", "RequestProperties", comps["CodeRequest"],
                                        {"reply_to": "amq.gen-JzTY20BRgKO-HjmUJj0wLg", "correlation_id": "c-42"}),
                "Reply": _message("Reply", "Reply to a coding request", "ReplyProperties", comps["Reply"],
                                  {"correlation_id": "c-42"}),
            },
            "correlationIds": {"correlationId": {"location": "$message.header#/correlation_id",
                                                 "description": "Set on the request, echoed on its reply."}},
        },
    }


class _Dumper(yaml.SafeDumper):
    ignore_aliases = lambda self, data: True  # noqa: E731  (no &anchors: an example may appear twice)


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(  # multi-line text as a | block
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def render() -> dict[Path, str]:
    """The generated files: path relative to the repository -> text."""
    files = {Path("docs/asyncapi.yaml"): f"# {GENERATED}\n"
             + yaml.dump(document(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)}
    for name, schema in schemas().items():
        files[Path(f"docs/schemas/{name}.schema.json")] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return files


def main() -> None:
    for path, text in render().items():
        (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / path).write_text(text, encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
