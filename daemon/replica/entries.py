"""What the active replica writes to the state stream, and what reading it back gives.

    job     {asdict(Job)}            a batch job's journal entry, after each step (the latest wins)
    input   bytes of request.jsonl   an inline job's records, in chunks (seq 0, 1, ...), before its first job entry
    cached  bytes of cached.jsonl    the answers the result cache gave, in chunks, before the job entry that says "creating"
    done    -                        the job was delivered: forget it
    quota   {"day", "used"}          the API calls counted today

`fold` turns the entries, in stream order, into a `SharedView`: a plain function, so the
rules are tested without a broker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..broker.statestream import text

JOB, INPUT, CACHED, DONE, QUOTA = "job", "input", "cached", "done", "quota"
CHUNK_BYTES = 1 << 20  # input and cached files go to the stream in pieces this large


@dataclass
class SharedJob:
    record: dict | None = None  # the latest job entry (asdict(Job))
    input_from: int | None = None  # stream offset of its records' first chunk
    cached_from: int | None = None  # stream offset of its cached answers' first chunk

    @property
    def revision(self) -> int:
        return int((self.record or {}).get("revision") or 0)


@dataclass
class SharedView:
    jobs: dict[str, SharedJob] = field(default_factory=dict)  # unfinished jobs, by job_id
    finished: set[str] = field(default_factory=set)
    quota: dict[str, int] = field(default_factory=dict)  # UTC day -> calls counted

    def read_from(self, job_ids) -> int | None:
        """The first offset holding chunks of these jobs (None: nothing to read)."""
        offsets = [o for j in job_ids if (s := self.jobs.get(j)) for o in (s.input_from, s.cached_from)
                   if o is not None]
        return min(offsets) if offsets else None


def fold(view: SharedView, kind: str, headers: dict, body: bytes, offset: int) -> None:
    """Apply one entry to `view`."""
    if kind == QUOTA:
        entry = json.loads(body)
        day, used = str(entry["day"]), int(entry["used"])
        view.quota[day] = max(view.quota.get(day, 0), used)
        return
    if kind not in (JOB, INPUT, CACHED, DONE):
        return  # written by a newer version: not ours to interpret
    job_id = text(headers["job_id"])
    if kind == DONE:
        view.jobs.pop(job_id, None)
        view.finished.add(job_id)
        return
    record = json.loads(body) if kind == JOB else None  # read before anything changes
    if kind == JOB and not isinstance(record, dict):
        raise TypeError("a job entry is not a JSON object")
    view.finished.discard(job_id)  # the same request journaled again after it finished
    shared = view.jobs.setdefault(job_id, SharedJob())
    if record is not None:
        if shared.record is None or int(record.get("revision") or 0) >= shared.revision:
            shared.record = record
    elif int(headers.get("seq", 0)) == 0:  # the first chunk of a (re)written file
        if kind == INPUT:
            shared.input_from = offset
        else:
            shared.cached_from = offset


def chunks(data_file, size: int = CHUNK_BYTES):
    """(seq, bytes) pieces of an open binary file, at least one (an empty file is one empty piece)."""
    seq = 0
    while True:
        piece = data_file.read(size)
        if piece or seq == 0:
            yield seq, piece
        if len(piece) < size:
            return
        seq += 1
