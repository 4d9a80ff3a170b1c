"""The batch journal: each job's progress in state_dir, written before every step the
API would see, so a restarted daemon resumes the same operation instead of starting over."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..durable import fsync_dir, write_atomically
from ..statedir import StateDir

# A job's phases, in order; after delivering it is removed.
PHASES = ("spooling", "creating", "uploading", "polling", "downloading", "delivering")

@dataclass
class Part:
    """One spool file and the API operation that codes it (the API takes 5 GB a file)."""

    spool: str
    records: int
    size: int
    operation_id: str | None = None
    kms_key: str | None = None
    upload_url: str | None = None  # presigned: kept only here (mode 0600), never logged
    uploaded: bool = False
    result: str | None = None  # downloaded output file, in the job directory
    operations: int = 0  # how many operations were created for this part


@dataclass
class Job:
    job_id: str
    correlation_id: str
    reply_to: str | None
    topic: str
    model: str | None  # as requested; None: the topic's latest
    kind: str  # "record", "records" or "file"
    suggestions: int = 3
    input_file: str | None = None
    output_file: str | None = None
    phase: str = "spooling"
    created_at: float = field(default_factory=time.time)
    resolved_model: str | None = None
    parts: list[Part] = field(default_factory=list)
    total: int = 0
    invalid: int = 0
    failure: dict | None = None  # {"code", "message"}: deliver a failed reply
    identity: str | None = None  # the request's identity (correlation_id and body digest)
    revision: int = 0  # journal writes so far: the later of two copies of a job has the higher one

    @property
    def owner(self) -> str:
        """Whose outputs this job writes (journals from before identities: the correlation_id)."""
        return self.identity or self.correlation_id

    @classmethod
    def new(cls, **fields) -> "Job":
        """A job named after its request's identity, so a redelivered request finds the
        job it already has instead of making a second one."""
        return cls(job_id=fields.get("identity") or uuid.uuid4().hex, **fields)


class Journal:
    def __init__(self, state_dir: Path, state: StateDir | None = None) -> None:
        self.root = Path(state_dir) / "jobs"
        self.state = state  # told when the journal cannot be written

    def directory(self, job: Job) -> Path:
        return self.directory_of(job.job_id)

    def directory_of(self, job_id: str) -> Path:
        return self.root / job_id

    def create(self, job: Job, inline_records: list | None = None, records_file: Path | None = None) -> bool:
        """Journal a new job durably, its inline records too (given as a list, or as a
        file of one record a line, moved in): after this the request message can be acked.
        False when the job is journaled already (its request was delivered again)."""
        directory = self.directory(job)
        if (directory / "job.json").exists():
            return False
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if inline_records is not None:
                write_atomically(directory / "request.jsonl", "".join(
                    json.dumps(record, separators=(",", ":")) + "\n" for record in inline_records), mode=0o600)
            elif records_file is not None:
                os.replace(records_file, directory / "request.jsonl")
            self.save(job)
            fsync_dir(directory)
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)  # never half a job: its request is handed back
            raise self._failed(exc) from None
        return True

    def save(self, job: Job, *, keep_revision: bool = False) -> None:
        """StateNotWritable when the journal cannot be written (the step it records must wait).
        Each save is a new revision, but for a copy taken over as it is (keep_revision)."""
        directory = self.directory(job)
        if not keep_revision:
            job.revision += 1
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_atomically(directory / "job.json", json.dumps(asdict(job)), mode=0o600)
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> Exception:
        return self.state.failed(exc, "the batch journal") if self.state is not None else exc

    def load(self, directory: Path) -> Job | None:
        try:
            data = json.loads((directory / "job.json").read_text())
            data["parts"] = [Part(**p) for p in data.get("parts", [])]
            return Job(**data)
        except (OSError, ValueError, TypeError):
            return None

    def jobs(self) -> list[Job]:
        """Every journaled job, oldest first. A directory without a readable job.json
        was never acknowledged to anyone: it is left for remove_orphans()."""
        if not self.root.is_dir():
            return []
        found = [job for d in self.root.iterdir() if d.is_dir() and (job := self.load(d)) is not None]
        return sorted(found, key=lambda j: j.created_at)

    def remove(self, job: Job) -> None:
        self.remove_id(job.job_id)

    def remove_id(self, job_id: str) -> None:
        shutil.rmtree(self.directory_of(job_id), ignore_errors=True)

    def remove_orphans(self) -> int:
        """Directories whose job.json never got written (a crash before the first save)."""
        removed = 0
        if self.root.is_dir():
            for directory in self.root.iterdir():
                if directory.is_dir() and not (directory / "job.json").exists():
                    shutil.rmtree(directory, ignore_errors=True)
                    removed += 1
        return removed
