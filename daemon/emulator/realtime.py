"""Real-time (synchronous) coding: one record or up to 300, all-or-nothing validation."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from . import catalog
from .coder import coder_for
from .responses import api_error
from .state import EMULATOR

MAX_RECORDS = 300
MAX_SUGGESTIONS = 16
MIN_CHARS, MAX_CHARS = 3, 100
RECORD_FIELDS = {"occp_text", "tasks_text", "recordId"}
DEFAULT_SUGGESTIONS = 3

INVALID_BODY = "Invalid request body"


def is_printable_ascii(text: str) -> bool:
    return all(" " <= ch <= "~" for ch in text)


def parse_body(raw: bytes) -> tuple[list[dict], bool, int]:
    """Validate a coding request body the way the service does: any fault fails it whole.

    Returns (records, single, numberOfSuggestions) or raises a 400 with the guide's message.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise api_error(400, INVALID_BODY) from None
    if not isinstance(body, dict):
        raise api_error(400, INVALID_BODY)
    suggestions = body.get("numberOfSuggestions", DEFAULT_SUGGESTIONS)
    if isinstance(suggestions, bool) or not isinstance(suggestions, int) or not 0 <= suggestions <= MAX_SUGGESTIONS:
        raise api_error(400, INVALID_BODY)
    if ("record" in body) == ("records" in body):
        raise api_error(400, INVALID_BODY)
    single = "record" in body
    records = [body["record"]] if single else body["records"]
    if not isinstance(records, list):
        raise api_error(400, INVALID_BODY)
    if not records:
        raise api_error(400, "Batch input contained no records")
    if len(records) > MAX_RECORDS:
        raise api_error(400, f"Batch records exceeds length limit of {MAX_RECORDS}")
    for record in records:
        if (
            not isinstance(record, dict)
            or not record.keys() <= RECORD_FIELDS
            or not record.keys() & {"occp_text", "tasks_text"}
            or not all(isinstance(v, str) for v in record.values())
        ):
            raise api_error(400, "Malformed record found in request")
        if not all(is_printable_ascii(v) for v in record.values()):
            raise api_error(400, INVALID_BODY)
    problems = length_problems(records)
    if problems:
        raise api_error(400, "There are record(s) outside the min or max char limit: " + ", ".join(problems))
    return records, single, suggestions


def length_problems(records: list[dict]) -> list[str]:
    problems = []
    for index, record in enumerate(records):
        total = len(record.get("occp_text", "")) + len(record.get("tasks_text", ""))
        if total < MIN_CHARS:
            problems.append(f"Record with index {index} has a total text length under {MIN_CHARS} min")
        elif total > MAX_CHARS:
            problems.append(f"Record with index {index} has a total text length over {MAX_CHARS} max")
    return problems


def code_record(topic: str, record: dict, suggestions: int) -> dict:
    """A SynchronousCodeResponse: up to `suggestions` ranked codes (at least the top one when
    successful; none when unsuccessful and no suggestions were asked for)."""
    text = {k: record[k] for k in ("occp_text", "tasks_text") if k in record}
    successful, codes = coder_for(topic).code(
        text.get("occp_text", ""), text.get("tasks_text", ""), max(suggestions, 1)
    )
    if not successful and suggestions == 0:
        codes = []
    response = {"codeStatus": "successful" if successful else "unsuccessful", "input": text,
                "result": [c.as_api() for c in codes]}
    if "recordId" in record:
        response = {"recordId": record["recordId"], **response}
    return response


async def code(request: web.Request) -> web.Response:
    topic = request.match_info["topic"]
    catalog.resolve(topic, request.match_info.get("model"))
    records, single, suggestions = parse_body(await request.read())
    poison = request.app[EMULATOR].faults.reject_text
    if poison and any(poison in str(value) for record in records for value in record.values()):
        raise api_error(400, "Malformed record found in request")
    # In a thread, so the event loop keeps stamping other requests' arrival on time.
    results = await asyncio.to_thread(lambda: [code_record(topic, r, suggestions) for r in records])
    request.app[EMULATOR].stats.record_coding_call(len(records))
    return web.json_response(results[0] if single else results)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/topics/{topic}/code", code)
    app.router.add_post("/v1/topics/{topic}/models/{model}/code", code)
