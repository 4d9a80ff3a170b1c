"""Records cleaned for the API: printable ASCII, collapsed whitespace, checked lengths.

Plain functions: the API rejects a whole call for one bad record, so every record is
made acceptable here, or set aside as `invalid`, before anything is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from anyascii import anyascii

from ..constants import BATCH_MAX_CHARS, BATCH_MIN_CHARS, SYNC_MAX_CHARS, SYNC_MIN_CHARS

_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]+")
_SPACES = re.compile(r"\s+")


def fold_text(text: str) -> str:
    """Transliterate to ASCII (accents, typographic punctuation), keep only printable
    characters, and collapse runs of whitespace to one space."""
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


NOT_A_RECORD = "a record must be an object with string occp_text and tasks_text"


def clean_records(raw_records: list, known_problems: dict[int, str] | None = None
                  ) -> tuple[list[CleanRecord | None], dict[int, str]]:
    """Cleaned records (None where a record is unusable) and why each unusable one is."""
    from .messages import Record  # the contract's record model

    cleaned: list[CleanRecord | None] = []
    problems = dict(known_problems or {})
    for index, raw in enumerate(raw_records):
        if index in problems:
            cleaned.append(None)
            continue
        try:
            record = Record.model_validate(raw)
        except ValueError:
            problems[index] = NOT_A_RECORD
            cleaned.append(None)
            continue
        cleaned.append(clean(record.occp_text, record.tasks_text))
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
