"""Records cleaned for the API: printable ASCII, collapsed whitespace, checked lengths.

Plain functions: the API rejects a whole call for one bad record, so every record is
made acceptable here, or set aside as `invalid`, before anything is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from anyascii import anyascii

from ..constants import BATCH_MAX_CHARS, BATCH_MIN_CHARS, SYNC_MAX_CHARS, SYNC_MIN_CHARS

_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]+")
_SPACES = re.compile(r"\s+")


def fold_text(text: str) -> str:
    """Transliterate to ASCII (accents, typographic punctuation), keep only printable
    characters, and collapse runs of whitespace to one space."""
    if text.isascii() and text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text  # already clean, as most text is: skip the regexes
    ascii_text = text if text.isascii() else anyascii(text)
    ascii_text = _SPACES.sub(" ", ascii_text)
    return _NOT_PRINTABLE.sub("", ascii_text).strip()


@dataclass(frozen=True, slots=True)
class CleanRecord:
    occp_text: str
    tasks_text: str

    @property
    def length(self) -> int:
        return len(self.occp_text) + len(self.tasks_text)

    def as_api(self) -> dict:
        return {"occp_text": self.occp_text, "tasks_text": self.tasks_text}


def clean(occp_text: str | None, tasks_text: str | None) -> CleanRecord:
    return CleanRecord(fold_text(occp_text or ""), fold_text(tasks_text or ""))


_JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string",
               list: "array", dict: "object"}
_TEXT_FIELDS = ("occp_text", "tasks_text")


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def record_problem(raw: Any) -> str | None:
    """Why a parsed JSON value is not a record, or None: the one rule for every route and
    every source (inline, JSONL, CSV). `messages.Record` is its schema, for producers."""
    if not isinstance(raw, dict):
        return f"a record must be a JSON object, not {json_type(raw)}"
    for key in _TEXT_FIELDS:
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            return f"{key} must be a string or null, not {json_type(value)}"
    rid = raw.get("recordId")
    if rid is not None and not isinstance(rid, str):
        return f"recordId must be a string or null, not {json_type(rid)}"
    return None


def clean_records(raw_records: list, known_problems: dict[int, str] | None = None
                  ) -> tuple[list[CleanRecord | None], dict[int, str]]:
    """Cleaned records (None where a record is unusable) and why each unusable one is."""
    cleaned: list[CleanRecord | None] = []
    problems = dict(known_problems or {})
    for index, raw in enumerate(raw_records):
        if index not in problems and (problem := record_problem(raw)) is not None:
            problems[index] = problem
        cleaned.append(None if index in problems else clean(raw.get("occp_text"), raw.get("tasks_text")))
    return cleaned, problems


def sync_problem(record: CleanRecord, *, batch_available: bool = False) -> str | None:
    """Why the real-time endpoint would refuse this record, or None."""
    if record.length < SYNC_MIN_CHARS:
        return (f"occp_text and tasks_text together are {record.length} characters after cleaning; "
                f"the coding API needs at least {SYNC_MIN_CHARS}")
    if record.length > SYNC_MAX_CHARS:
        hint = ("" if batch_available or record.length > BATCH_MAX_CHARS else
                f"; the partner tier's batch service accepts up to {BATCH_MAX_CHARS}")
        return (f"occp_text and tasks_text together are {record.length} characters after cleaning; "
                f"the real-time coding API accepts at most {SYNC_MAX_CHARS}{hint}")
    return None


def batch_problem(record: CleanRecord) -> str | None:
    """Why the batch service would refuse this record, or None."""
    if not BATCH_MIN_CHARS <= record.length <= BATCH_MAX_CHARS:
        return (f"occp_text and tasks_text together are {record.length} characters after cleaning; "
                f"the batch coding service accepts {BATCH_MIN_CHARS}-{BATCH_MAX_CHARS}")
    return None
