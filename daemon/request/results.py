"""RecordResults and replies, built as plain dicts (their schema is in messages.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .messages import CodeRequest

# Strict JSON (no NaN or Infinity), compact: one encoder for every reply and output line.
encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False).encode


@dataclass(frozen=True)
class Refusal:
    """Why a request as a whole cannot be done: the failed reply's error code and message."""

    code: str
    message: str


@dataclass(frozen=True)
class HandBack:
    """The request goes back to its queue untouched, to be done later (quota, shutdown)."""

    reason: str


class JobFailed(Exception):
    """A request's work failed as a whole; it is answered with a failed reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def echo_input(raw: Any) -> dict:
    """The record's text as the producer sent it (not as cleaned)."""
    if isinstance(raw, dict):
        return {k: raw.get(k) if isinstance(raw.get(k), str) else "" for k in ("occp_text", "tasks_text")}
    return {"occp_text": "", "tasks_text": ""}


def record_id(raw: Any) -> str | None:
    """The producer's recordId, echoed when it is a string (the only kind a record may have)."""
    rid = raw.get("recordId") if isinstance(raw, dict) else None
    return rid if isinstance(rid, str) else None


def invalid_result(raw: Any, error: str) -> dict:
    return {"recordId": record_id(raw), "codeStatus": "invalid", "input": echo_input(raw),
            "result": [], "suggestions": [], "error": error}


def sync_result(raw: Any, item: dict) -> dict:
    """From one item of the real-time API's answer: its `result` list is the codes when
    successful and the suggestions when not."""
    codes = item.get("result") or []
    successful = item.get("codeStatus") == "successful"
    return {"recordId": record_id(raw), "codeStatus": "successful" if successful else "unsuccessful",
            "input": echo_input(raw), "result": codes if successful else [],
            "suggestions": [] if successful else codes, "error": None}


def completed_reply(request: CodeRequest, model: str | None, route: str, results: list[dict]) -> dict:
    reply = {"status": "completed", "topic": request.topic, "model": model, "route": route}
    if request.record is not None:
        reply["record"] = results[0]
    else:
        reply["records"] = results
    reply["error"] = None
    return reply


def failed_reply(topic: str | None, model: str | None, route: str | None, code: str, message: str,
                 details: list | None = None) -> dict:
    return {"status": "failed", "topic": topic, "model": model, "route": route,
            "error": {"code": code, "message": message, "details": details or []}}
