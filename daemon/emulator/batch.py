"""Asynchronous batch coding: operations, their life cycle, and the status endpoints."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from . import catalog
from .coder import coder_for
from .realtime import is_printable_ascii
from .responses import api_error, denied
from .state import CLIENT_ID, EMULATOR, Emulator

BATCH_MIN_CHARS, BATCH_MAX_CHARS = 3, 300
BATCH_SUGGESTIONS = 3


@dataclass
class Operation:
    operation_id: str
    client_id: str
    topic: str
    model_id: str
    kms_key: str
    created_at: float
    directory: Path
    status: str = "awaiting_input"
    uploaded_at: float | None = None
    processed: bool = False
    failure: str | None = None
    completed_at: float | None = None

    @property
    def input_path(self) -> Path:
        return self.directory / "input.jsonl"

    @property
    def output_path(self) -> Path:
        return self.directory / "output.jsonl"

    @property
    def metadata_path(self) -> Path:
        return self.directory / "metadata.json"


def refresh(op: Operation, emulator: Emulator) -> None:
    """Move an operation along its state machine as time passes."""
    now, config = emulator.clock.now(), emulator.config
    if op.status == "awaiting_input" and now > op.created_at + config.upload_timeout:
        op.status = "timed_out"
    elif op.status == "in_progress" and op.processed and now >= op.uploaded_at + config.processing_seconds:
        op.status = "failed" if op.failure else "complete"
        op.completed_at = now
    if op.status == "complete" and now > op.completed_at + config.output_retention:
        shutil.rmtree(op.directory, ignore_errors=True)


def code_line(topic: str, line: str) -> dict:
    """One AsynchronousCodeResponse line for one input line; never raises."""
    try:
        record = json.loads(line)
    except ValueError:
        return {"recordId": "unknown", "codeStatus": "unsuccessful", "input": line,
                "error": "Invalid JSON data format."}
    if not isinstance(record, dict) or not all(isinstance(record.get(k, ""), str) for k in ("occp_text", "tasks_text")):
        return {"recordId": "unknown", "codeStatus": "unsuccessful", "input": line,
                "error": "Record does not match the model's input format."}
    record_id = record.get("recordId")
    text = {"occp_text": record.get("occp_text", ""), "tasks_text": record.get("tasks_text", "")}
    head = {"recordId": record_id, "codeStatus": "unsuccessful", "input": text}
    total = len(text["occp_text"]) + len(text["tasks_text"])
    if not (is_printable_ascii(text["occp_text"]) and is_printable_ascii(text["tasks_text"])):
        return {**head, "error": "Record contains characters that are not printable ASCII."}
    if not BATCH_MIN_CHARS <= total <= BATCH_MAX_CHARS:
        return {**head, "error": f"Record total text length {total} is outside {BATCH_MIN_CHARS}-{BATCH_MAX_CHARS}."}
    successful, codes = coder_for(topic).code(text["occp_text"], text["tasks_text"], BATCH_SUGGESTIONS)
    if successful:
        return {**head, "codeStatus": "successful", "result": codes[0].as_api()}
    return {**head, "suggestions": [c.as_api() for c in codes]}


def process_file(op: Operation, closing: threading.Event) -> None:
    """Code an uploaded file line by line, streaming from disk to disk (run in a thread)."""
    with open(op.input_path, encoding="utf-8", errors="replace") as source, \
            open(op.output_path, "w", encoding="utf-8") as sink:
        for number, line in enumerate(source):
            if number % 1000 == 0 and closing.is_set():
                raise RuntimeError("emulator shutting down")
            line = line.rstrip("\r\n")
            if line.strip():
                sink.write(json.dumps(code_line(op.topic, line)) + "\n")
    model = catalog.resolve(op.topic, op.model_id)
    op.metadata_path.write_text(json.dumps({"operationId": op.operation_id, "topic": op.topic, **model.as_api()}))


async def start_processing(op: Operation, emulator: Emulator) -> None:
    try:
        if emulator.faults.batch_fail:
            op.failure, emulator.faults.batch_fail = emulator.faults.batch_fail, None
        else:
            await asyncio.to_thread(process_file, op, emulator.closing)
    except Exception as exc:  # an emulator fault must surface as the API's `failed`
        op.failure = f"Error performing inference: {exc}"
    finally:
        op.processed = True


def operation_for(request: web.Request) -> Operation:
    emulator = request.app[EMULATOR]
    catalog.resolve(request.match_info["topic"], request.match_info.get("model"))
    op_id = request.match_info["operation_id"]
    op = request.app[OPERATIONS].get(op_id)
    if op is None:
        raise api_error(404, "Unable to retrieve operation for given id")
    if op.client_id != request[CLIENT_ID]:
        raise api_error(401, f"User is not authorised to retrieve operation {op_id}")
    refresh(op, emulator)
    return op


async def create(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    if emulator.accounts.tier(request[CLIENT_ID]) != "partner":
        raise denied()
    topic = request.match_info["topic"]
    model = catalog.resolve(topic, request.match_info.get("model"))
    op_id = str(uuid.uuid4())
    op = Operation(op_id, request[CLIENT_ID], topic, model.model_id,
                   f"arn:aws:kms:ap-southeast-2:000000000000:key/{uuid.uuid4()}",
                   emulator.clock.now(), emulator.storage / op_id)
    op.directory.mkdir(parents=True)
    request.app[OPERATIONS][op_id] = op
    emulator.stats.operations_created += 1
    upload_url = request.app[SIGNER].sign(
        request.url, "PUT", f"/_s3/{op_id}/input.jsonl", op.created_at, emulator.config.upload_timeout
    )
    return web.json_response({"requestUploadUrl": upload_url, "operationId": op_id, "bucketKmsKeyArn": op.kms_key})


async def status(request: web.Request) -> web.Response:
    op = operation_for(request)
    body: dict = {"operationStatus": op.status}
    if op.status == "complete":
        emulator, signer = request.app[EMULATOR], request.app[SIGNER]
        now, ttl = emulator.clock.now(), emulator.config.url_ttl
        if emulator.faults.expired_urls > 0:
            emulator.faults.expired_urls -= 1
            now -= ttl + 1  # issued already past its expiry
        body["responseDownloadUrl"] = signer.sign(request.url, "GET", f"/_s3/{op.operation_id}/output.jsonl", now, ttl)
        body["metadataDownloadUrl"] = signer.sign(request.url, "GET", f"/_s3/{op.operation_id}/metadata.json", now, ttl)
    elif op.status == "failed":
        body["error"] = op.failure
    return web.json_response(body)


OPERATIONS = web.AppKey("operations", dict)
SIGNER = web.AppKey("signer", object)


def add_routes(app: web.Application) -> None:
    for prefix in ("/v1/topics/{topic}", "/v1/topics/{topic}/models/{model}"):
        app.router.add_post(prefix + "/batch-code", create)
        app.router.add_get(prefix + "/batch-code/operations/{operation_id}", status)
