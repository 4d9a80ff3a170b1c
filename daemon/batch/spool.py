"""Spooling a request's records for the batch service: cleaned JSONL parts to upload, and a
manifest that remembers every input position (for mapping the API's output back).

    job_dir/manifest.jsonl     one line per input position, in input order:
                               {"id": <producer recordId>, "in": {<text as sent>}}  (+ "err" if invalid)
    job_dir/spool-000.jsonl    the valid records, cleaned, {"recordId": "<position>", ...},
    job_dir/spool-001.jsonl    a new part before one would exceed max_part_bytes

The recordId sent to the API is the input position (as a string); the producer's own
recordId need not be unique and never leaves coderd. Streams: memory does not grow with
the number of records. Blocking IO, for `asyncio.to_thread`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _quote
from pathlib import Path
from typing import Any, Iterable

from ..constants import BATCH_MAX_CHARS, BATCH_MAX_FILE_BYTES, BATCH_MIN_CHARS
from ..durable import fsync_dir, sync_and_close
from ..request.cleaning import CleanRecord, batch_problem, fold_text, record_problem

MANIFEST_NAME = "manifest.jsonl"
_BUFFER = 1 << 20


@dataclass
class SpoolPart:
    path: Path
    records: int
    size: int  # bytes


@dataclass
class SpoolSummary:
    parts: list[SpoolPart] = field(default_factory=list)
    total: int = 0    # input positions (manifest lines)
    invalid: int = 0  # positions not spooled (manifest "err")
    manifest: Path | None = None


def part_path(job_dir: Path, number: int) -> Path:
    return job_dir / f"spool-{number:03d}.jsonl"


def _id_json(rid: Any) -> str:
    return _quote(rid) if isinstance(rid, str) else "null"


def _echo(value: Any) -> str:
    return _quote(value) if isinstance(value, str) else '""'


class _Parts:
    """The spool part being written, rotated before it would exceed max_bytes."""

    def __init__(self, job_dir: Path, max_bytes: int) -> None:
        self.job_dir, self.max_bytes = job_dir, max_bytes
        self.done: list[SpoolPart] = []
        self.file = None
        self.records = self.size = 0

    def write(self, line: str) -> None:
        size = len(line)  # ASCII: characters are bytes
        if self.file is not None and self.size + size > self.max_bytes:
            self.close()
        if self.file is None:
            path = part_path(self.job_dir, len(self.done))
            self.file = open(path, "w", encoding="ascii", newline="", buffering=_BUFFER)
            self.path, self.records, self.size = path, 0, 0
        self.file.write(line)
        self.records += 1
        self.size += size

    def close(self) -> None:
        if self.file is not None:
            sync_and_close(self.file)
            self.done.append(SpoolPart(self.path, self.records, self.size))
            self.file = None


def _remove_previous(job_dir: Path) -> None:
    """A re-run (after a crash) starts clean: no stale part may be uploaded."""
    for stale in job_dir.glob("spool-*.jsonl"):
        stale.unlink()
    (job_dir / MANIFEST_NAME).unlink(missing_ok=True)
    (job_dir / "cached.jsonl").unlink(missing_ok=True)  # cached.py: taken from an earlier spool


def spool(records: Iterable[tuple[Any, str | None]], job_dir: Path, *,
          max_part_bytes: int = BATCH_MAX_FILE_BYTES) -> SpoolSummary:
    """Write the manifest and the spool parts for `records` ((raw, None) or (raw_text,
    error) per input position, as claimcheck.read_records gives them), fsync'ed.

    A record is invalid (manifest line only, with "err") when it came with an error, is
    not a Record, or breaks the batch service's length rule after cleaning. On an
    exception (e.g. the input cannot be read) the files written so far are removed.
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous(job_dir)
    manifest_path = job_dir / MANIFEST_NAME
    parts = _Parts(job_dir, max_part_bytes)
    total = invalid = 0
    manifest = open(manifest_path, "w", encoding="ascii", newline="", buffering=_BUFFER)
    try:
        write_manifest, write_part, folded = manifest.write, parts.write, fold_text
        for position, (raw, error) in enumerate(records):
            total += 1
            if error is None:
                error = record_problem(raw)
            if error is not None:  # malformed (raw is its text) or not a Record (raw kept)
                invalid += 1
                write_manifest('{"id":%s,"in":{"occp_text":%s,"tasks_text":%s},"err":%s}\n' % (
                    _scalar_id(raw), *_echo_pair(raw), _quote(error)))
                continue
            occp, tasks, rid = raw.get("occp_text"), raw.get("tasks_text"), raw.get("recordId")
            occp = folded(occp) if occp else ""
            tasks = folded(tasks) if tasks else ""
            head = '{"id":%s,"in":{"occp_text":%s,"tasks_text":%s}' % (
                _id_json(rid), _echo(raw.get("occp_text")), _echo(raw.get("tasks_text")))
            if not BATCH_MIN_CHARS <= len(occp) + len(tasks) <= BATCH_MAX_CHARS:
                invalid += 1
                write_manifest('%s,"err":%s}\n' % (head, _quote(batch_problem(CleanRecord(occp, tasks)))))
                continue
            write_manifest(head + "}\n")
            write_part('{"recordId":"%d","occp_text":%s,"tasks_text":%s}\n' % (position, _quote(occp), _quote(tasks)))
        parts.close()
        sync_and_close(manifest)
    except BaseException:
        manifest.close()
        if parts.file is not None:
            parts.file.close()
        _remove_previous(job_dir)
        raise
    fsync_dir(job_dir)
    return SpoolSummary(parts=parts.done, total=total, invalid=invalid, manifest=manifest_path)


def _scalar_id(raw: Any) -> str:
    """The recordId of an invalid record, when it is one a RecordResult can carry."""
    return _id_json(raw.get("recordId") if isinstance(raw, dict) else None)


def _echo_pair(raw: Any) -> tuple[str, str]:
    if isinstance(raw, dict):
        return _echo(raw.get("occp_text")), _echo(raw.get("tasks_text"))
    return '""', '""'

