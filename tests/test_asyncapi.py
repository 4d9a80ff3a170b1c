"""The AsyncAPI document and JSON Schemas in docs/: generated from the pydantic models, committed
as generated, and true to CONTRACT.md and to what coderd accepts."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from daemon.request.messages import CodeRequest, InvalidMessage, Reply, parse_request
from daemon.tools import asyncapi

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ("record", "records", "inputFile")

# CONTRACT.md §1, the request example, as written there: it shows all three payloads at once.
CONTRACT_REQUEST = {
    "topic": "osca",
    "model": "00000000-0000-0000-0000-000000000001",
    "numberOfSuggestions": 3,
    "mode": "auto",
    "record": {"recordId": "r1", "occp_text": "software developer", "tasks_text": "writing code and unit tests"},
    "records": [{"recordId": "r2", "occp_text": "paramedic", "tasks_text": "respond to emergencies"}],
    "inputFile": "census-sample.jsonl",
    "outputFile": "census-sample.coded.jsonl",
}
# CONTRACT.md §2, the reply example, as written there (record and records are placeholders) ...
CONTRACT_REPLY = {
    "status": "completed",
    "topic": "osca",
    "model": "00000000-0000-0000-0000-000000000001",
    "route": "sync",
    "record": {"...": "a RecordResult, when the request had record"},
    "records": ["... RecordResults, in request order, when the request had records"],
    "output": {"file": "census-sample.coded.jsonl", "records": 120000, "successful": 101234, "unsuccessful": 18700,
               "invalid": 66},
    "error": None,
}
# ... and its RecordResult example.
CONTRACT_RECORD_RESULT = {
    "recordId": "r1",
    "codeStatus": "successful",
    "input": {"occp_text": "software developer", "tasks_text": "writing code and unit tests"},
    "result": [{"codeCategory": "261313", "codeLabel": "Software Engineer", "codeConfidence": 0.61}],
    "suggestions": [],
    "error": None,
}


def load(name: str) -> dict:
    return json.loads((ROOT / "docs" / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8"))


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = load(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def coderd_accepts(body: dict) -> bool:
    try:
        parse_request(json.dumps(body).encode())
        return True
    except InvalidMessage:
        return False


def test_the_committed_files_are_what_the_models_generate():
    rendered = asyncapi.render()
    assert rendered == asyncapi.render(), "generation is not stable"
    for path, text in rendered.items():
        assert (ROOT / path).exists(), f"{path} is missing: run python -m daemon.tools.asyncapi"
        assert (ROOT / path).read_bytes() == text.encode("utf-8"), f"{path} is stale: run python -m daemon.tools.asyncapi"
    committed = {p.relative_to(ROOT) for p in (ROOT / "docs" / "schemas").glob("*.json")}
    assert committed == {p for p in rendered if p.suffix == ".json"}, "a schema file that is no longer generated"


def test_the_asyncapi_document():
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8"))
    assert doc["asyncapi"] == "3.0.0"
    requests, replies = doc["channels"]["codingRequests"], doc["channels"]["codingReplies"]
    assert requests["address"] == "coding.requests" and replies["address"] is None
    binding = requests["bindings"]["amqp"]
    assert binding["is"] == "queue" and binding["queue"]["durable"] is True
    assert requests["x-amqp-queue-arguments"]["x-queue-type"] == "quorum"
    operation = doc["operations"]["sendCodingRequest"]
    assert operation["action"] == "send" and operation["channel"] == {"$ref": "#/channels/codingRequests"}
    assert operation["reply"]["channel"] == {"$ref": "#/channels/codingReplies"}
    assert operation["reply"]["address"]["location"] == "$message.header#/reply_to"

    def resolve(ref: str):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def refs(node):
        if isinstance(node, dict):
            yield from ([node["$ref"]] if "$ref" in node else [])
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in set(refs(doc)):  # every $ref points into the document
        assert ref.startswith("#/") and resolve(ref) is not None, ref
    for name in ("CodeRequest", "Reply"):
        message = resolve(f"#/components/messages/{name}")
        assert resolve(message["correlationId"]["$ref"])["location"] == "$message.header#/correlation_id"
        assert resolve(message["payload"]["$ref"])["title"] == name
        assert message["examples"]
    assert doc["components"]["schemas"]["CodeRequest"]["properties"]["records"]["anyOf"][0]["items"] == {
        "$ref": "#/components/schemas/Record"}


def test_the_contracts_request_example_validates_alternative_by_alternative():
    request = validator("request")
    # The contract's example shows record, records and inputFile together; a request carries exactly
    # one of them (a message with more is answered invalid_message), so each alternative is checked.
    for keep in PAYLOADS:
        body = {k: v for k, v in CONTRACT_REQUEST.items() if k not in PAYLOADS or k == keep}
        if keep != "inputFile":
            del body["outputFile"]
        request.validate(body)
        assert coderd_accepts(body)
    assert not request.is_valid(CONTRACT_REQUEST) and not coderd_accepts(CONTRACT_REQUEST)


def test_the_contracts_reply_and_record_result_examples_validate():
    validator("record-result").validate(CONTRACT_RECORD_RESULT)
    reply = validator("reply")
    # The contract's reply example has placeholders where RecordResults go: filled with its RecordResult.
    assert not reply.is_valid(CONTRACT_REPLY)
    reply.validate({**CONTRACT_REPLY, "record": CONTRACT_RECORD_RESULT, "records": [CONTRACT_RECORD_RESULT]})
    reply.validate({"status": "failed", "topic": "anzsco", "model": None, "route": None,
                    "error": {"code": "unknown_topic", "message": "no such topic", "details": []}})
    assert not reply.is_valid({"status": "failed", "topic": None, "model": None, "route": None,
                               "error": {"code": "oops", "message": "not a contract error code"}})


@pytest.mark.parametrize("body", [
    {"record": {"occp_text": "chef"}},  # no topic
    {"topic": "", "record": {"occp_text": "chef"}},
    {"topic": "osca"},
    {"topic": "osca", "record": {"occp_text": "chef"}, "records": [{"occp_text": "chef"}]},
    {"topic": "osca", "records": []},
    {"topic": "osca", "record": {"occp_text": "chef"}, "numberOfSuggestions": 17},
    {"topic": "osca", "record": {"occp_text": "chef"}, "numberOfSuggestions": -1},
    {"topic": "osca", "record": {"occp_text": "chef"}, "numberOfSuggestions": "3"},
    {"topic": "osca", "record": {"occp_text": "chef"}, "mode": "fast"},
    {"topic": "osca", "record": {"occp_text": "chef"}, "outputFile": "out.jsonl"},
])
def test_what_coderd_answers_invalid_message_the_schema_rejects(body):
    assert not validator("request").is_valid(body)
    assert not coderd_accepts(body)


def test_what_the_schema_accepts_coderd_accepts():
    request = validator("request")
    bodies = [
        *load("request")["examples"],
        {"topic": "anzsco", "numberOfSuggestions": 0, "mode": "sync", "records": [{"occp_text": "nurse"}, {}]},
        {"topic": "osca", "record": {"recordId": "7", "occp_text": None}, "records": None},
        {"topic": "osca", "inputFile": "in.csv", "outputFile": None, "unknown": "ignored"},
    ]
    for body in bodies:
        request.validate(body)
        assert coderd_accepts(body), body


def test_every_field_is_in_the_schemas_with_a_description():
    request = load("request")
    for name, field in CodeRequest.model_fields.items():
        assert name in request["properties"], f"{name} is not in request.schema.json"
        assert request["properties"][name].get("description"), f"CodeRequest.{name} needs Field(description=...)"
    assert set(Reply.model_fields) == set(load("reply")["properties"])
    for example in load("reply")["examples"]:
        validator("reply").validate(example)
        Reply.model_validate(example)
