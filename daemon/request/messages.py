"""The message contract: requests producers publish, replies coderd sends back.

Requests are validated with these models. Replies and RecordResults are built as plain
dicts on the hot path (see `results.py`); the models here are their schema.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..constants import MAX_SUGGESTIONS

ErrorCode = Literal[
    "invalid_message", "unknown_topic", "unknown_model", "model_topic_mismatch", "input_not_found",
    "path_not_allowed", "output_exists", "output_not_writable", "batch_failed", "upstream_error", "not_supported",
]


class Record(BaseModel):
    """One record as a producer sends it; either text may be missing or empty. A record
    that is not like this is answered `invalid` on its own: the rest of the request is coded."""

    model_config = ConfigDict(extra="ignore")
    recordId: str | None = Field(
        None, description="Any string; need not be unique; echoed back untouched in its RecordResult. A record "
                          "whose recordId is not a string comes back `invalid` (with recordId null).")
    occp_text: str | None = Field(None, description="The occupation title as given, e.g. `software developer`.")
    tasks_text: str | None = Field(
        None, description="The main tasks as given. With occp_text, 3-100 characters after cleaning for "
                          "the real-time route (3-300 for batch); a record outside that comes back `invalid`.")


# The JSON Schema says what a producer should send; the model itself takes any value for a
# record, so that one malformed record comes back `invalid` instead of failing the request.
_RECORD_SCHEMA = Record.model_json_schema()
_PAYLOADS = ("record", "records", "inputFile")
_REQUEST_EXAMPLES = [
    {"topic": "osca", "model": "00000000-0000-0000-0000-000000000001", "numberOfSuggestions": 3, "mode": "auto",
     "record": {"recordId": "r1", "occp_text": "software developer", "tasks_text": "writing code and unit tests"}},
    {"topic": "anzsco", "records": [{"recordId": "r2", "occp_text": "paramedic", "tasks_text": "respond to emergencies"}]},
    {"topic": "osca", "mode": "batch", "inputFile": "census-sample.jsonl", "outputFile": "census-sample.coded.jsonl"},
]


class CodeRequest(BaseModel):
    """The body of a message on the request queue: what to code (exactly one of `record`,
    `records`, `inputFile`) and where and how to code it. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={
        # _exactly_one_payload below, for schema readers: one of them given and not null,
        "oneOf": [{"required": [k], "properties": {k: {"not": {"type": "null"}}}} for k in _PAYLOADS],
        # and outputFile only with inputFile.
        "if": {"required": ["outputFile"], "properties": {"outputFile": {"type": "string"}}},
        "then": {"required": ["inputFile"], "properties": {"inputFile": {"type": "string"}}},
        "examples": _REQUEST_EXAMPLES,
    })
    topic: str = Field(min_length=1, description="The coding API topic's `uriName`, e.g. `anzsco` or `osca`.")
    model: str | None = Field(None, description="A model GUID of the topic; default: the topic's latest model.")
    numberOfSuggestions: int | None = Field(
        default=None, ge=0, le=MAX_SUGGESTIONS, strict=True,
        description="How many codes (or suggestions, when unsuccessful) to ask for a record; default from "
                    "the daemon's configuration (3).")
    mode: Literal["auto", "sync", "batch"] = Field(
        "auto", description="`auto`: coderd chooses (batch for large requests, partner tier only); `sync`: "
                            "the real-time API; `batch`: the asynchronous batch API (partner tier only, "
                            "else `failed`/`not_supported`).")
    record: Any = Field(None, description="One record.",
                        json_schema_extra={"anyOf": [_RECORD_SCHEMA, {"type": "null"}]})
    records: list[Any] | None = Field(
        None, description="A list of records, any length but not empty; results come back in this order.",
        json_schema_extra={"anyOf": [{"type": "array", "items": _RECORD_SCHEMA, "minItems": 1}, {"type": "null"}]})
    inputFile: str | None = Field(
        None, description="Claim check: a JSONL file (one record a line) or a CSV file (header naming "
                          "`occp_text`, `tasks_text`, optionally `recordId`), relative to the daemon's "
                          "`inbox_dir`; a path leaving it is refused.")
    outputFile: str | None = Field(
        None, description="With `inputFile` only: where to write the results as JSONL RecordResults, relative "
                          "to `outbox_dir`; default `<input name>.coded.jsonl`.")

    @model_validator(mode="after")
    def _exactly_one_payload(self) -> "CodeRequest":
        given = [k for k in ("record", "records", "inputFile") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one of record, records, inputFile is required (got {len(given)})")
        if self.records is not None and not self.records:
            raise ValueError("records must not be empty")
        if self.outputFile is not None and self.inputFile is None:
            raise ValueError("outputFile goes with inputFile")
        return self

    @field_validator("inputFile", "outputFile")
    @classmethod
    def _names_a_file(cls, value: str | None) -> str | None:
        """A file name, relative to its directory: whether it stays inside is checked later
        (path_not_allowed); this is only its shape."""
        if value is None:
            return value
        if not value.strip():
            raise ValueError("must name a file")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ValueError("must not contain control characters")
        last = value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        if value.endswith("/") or last in ("", ".", ".."):
            raise ValueError("must name a file, not a directory")
        return value

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("model must not be blank")
        return value

    @property
    def raw_records(self) -> list[Any]:
        """The inline records, one-element list for `record`."""
        return [self.record] if self.record is not None else list(self.records or [])


class InvalidMessage(Exception):
    """A request body that is not a valid CodeRequest; the message says why, for the reply."""

    def __init__(self, message: str, details: list | None = None) -> None:
        super().__init__(message)
        self.details = details or []


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Strict JSON (RFC 8259): NaN and Infinity are refused, so no reply can ever carry one.
_decode = json.JSONDecoder(parse_constant=_not_json).decode


def parse_request(body: bytes) -> CodeRequest:
    try:
        data = _decode(body.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidMessage("body is not JSON that can be read: it is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidMessage(f"body must be a JSON object, not {type(data).__name__}")
    return validate_request(data)


def request_from_members(members: dict, records: int | None) -> CodeRequest:
    """The CodeRequest of a body parsed as a stream (body.py): its members, with `records`
    (when it was a list of `records` items, spooled to disk) standing in by its emptiness."""
    if records is not None:
        members = {**members, "records": [None] * min(records, 1)}
    return validate_request(members)


def validate_request(data: dict) -> CodeRequest:
    try:
        return CodeRequest.model_validate(data)
    except ValidationError as exc:
        details = [{"field": ".".join(map(str, e["loc"])) or None, "problem": e["msg"].removeprefix("Value error, ")}
                   for e in exc.errors()]
        summary = "; ".join(f"{d['field']}: {d['problem']}" if d["field"] else d["problem"] for d in details)
        raise InvalidMessage(f"invalid request: {summary}", details) from None


# --- the reply's schema -------------------------------------------------------------

class CodedCategory(BaseModel):
    """One code of the topic's classification."""

    codeCategory: str = Field(description="The code, e.g. `261313`.")
    codeLabel: str = Field(description="Its title, e.g. `Software Engineer`.")
    codeConfidence: float = Field(description="The coding service's confidence, 0 to 1.")


class RecordInput(BaseModel):
    """The record's text as the producer sent it (not as cleaned for the API); a missing text is `""`."""

    occp_text: str
    tasks_text: str


_RECORD_RESULT_EXAMPLE = {
    "recordId": "r1", "codeStatus": "successful",
    "input": {"occp_text": "software developer", "tasks_text": "writing code and unit tests"},
    "result": [{"codeCategory": "261313", "codeLabel": "Software Engineer", "codeConfidence": 0.61}],
    "suggestions": [], "error": None,
}


class RecordResult(BaseModel):
    """The outcome of one record, one shape whichever route coded it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_RECORD_RESULT_EXAMPLE]})
    recordId: str | None = Field(None, description="The record's `recordId`, echoed untouched; null when it had "
                                                   "none (or one that was not a string).")
    codeStatus: Literal["successful", "unsuccessful", "invalid"] = Field(
        description="`invalid`: the record was never sent to the API (`error` says why).")
    input: RecordInput
    result: list[CodedCategory] = Field([], description="The codes assigned, best first; empty unless successful.")
    suggestions: list[CodedCategory] = Field(
        [], description="Alternatives offered when not successful; empty when successful.")
    error: str | None = Field(None, description="Why an `invalid` record was not coded; otherwise null.")


class ErrorInfo(BaseModel):
    """Why a request failed as a whole."""

    code: ErrorCode = Field(description="What went wrong, for programs.")
    message: str = Field(description="What went wrong, as a sentence for people.")
    details: list[Any] = Field([], description="Specifics; for `invalid_message`, one `{field, problem}` a fault.")


class OutputSummary(BaseModel):
    """Where the results went, and how they came out: for an `inputFile` request, and for
    a reply too large to publish (over 16 MiB), whose RecordResults are delivered as a file
    in the outbox instead (`replies/<correlation_id>.coded.jsonl`)."""

    file: str = Field(description="The output file, relative to the daemon's `outbox_dir`.")
    records: int = Field(description="RecordResults written: one a line, in input order.")
    successful: int
    unsuccessful: int
    invalid: int
    cached: int = Field(0, description="Of the records, how many were answered from coderd's result cache "
                                       "(what the API said for the same text and model), without a call.")


class Reply(BaseModel):
    """The body of a reply, published to the request's `reply_to` (or `coding.replies`)
    with the request's `correlation_id`. A request may be answered more than once."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"status": "completed", "topic": "osca", "model": "00000000-0000-0000-0000-000000000001",
         "route": "sync", "record": _RECORD_RESULT_EXAMPLE, "error": None},
        {"status": "failed", "topic": None, "model": None, "route": None,
         "error": {"code": "invalid_message", "message": "invalid request: topic: Field required",
                   "details": [{"field": "topic", "problem": "Field required"}]}},
    ]})
    status: Literal["completed", "failed"] = Field(
        description="`completed`: every record has a RecordResult (each may still be unsuccessful or "
                    "invalid); `failed`: the request as a whole could not be done, `error` says why.")
    topic: str | None = Field(description="The request's topic; null when it could not be read.")
    model: str | None = Field(
        description="The GUID of the model that coded it: the requested one or the topic's latest; "
                    "null if unknown.")
    route: Literal["sync", "batch"] | None = Field(
        description="Which API path coded it: `sync` (real-time) or `batch`; null if none did.")
    record: RecordResult | None = Field(None, description="When the request had `record`.")
    records: list[RecordResult] | None = Field(
        None, description="When the request had `records`: one RecordResult each, in request order.")
    output: OutputSummary | None = Field(
        None, description="When the request had `inputFile`, or when its reply would have been larger than "
                          "16 MiB: the RecordResults are in the output file, in request order.")
    error: ErrorInfo | None = Field(None, description="Set when `failed`, else null.")
