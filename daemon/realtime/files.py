"""An inputFile coded through the real-time worker (public tier, or `mode: sync`).

The file is read and coded a chunk at a time and the results written in input order,
so memory stays flat however long the file is. The request stays unacked while it is
coded: a crash means it is coded again from the start (at-least-once).
"""

from __future__ import annotations

import asyncio
from itertools import islice
from pathlib import Path

from ..batch.reply import encode_line
from ..durable import AtomicFile
from ..request.claimcheck import read_records
from ..request.cleaning import clean_records
from ..request.messages import CodeRequest
from ..request.results import HandBack, Refusal, failed_reply
from .backlog import CallKey
from .job import SyncJob, pending_records
from .worker import SyncWorker

CHUNK = 3000  # records held in memory at a time: ten full calls


class _Unfinished(Exception):
    """The file cannot be finished: no output is written, and this is the outcome."""

    def __init__(self, outcome: dict | HandBack) -> None:
        self.outcome = outcome


async def code_file_via_sync(worker: SyncWorker, request: CodeRequest, source: Path, target: Path,
                             output_name: str, suggestions: int, *, batch_available: bool) -> dict | HandBack:
    try:
        return await _code_file(worker, request, source, target, output_name, suggestions,
                                batch_available=batch_available)
    except _Unfinished as unfinished:  # raised inside the output's `with`: nothing was written
        return unfinished.outcome


async def _code_file(worker: SyncWorker, request: CodeRequest, source: Path, target: Path,
                     output_name: str, suggestions: int, *, batch_available: bool) -> dict:
    records = read_records(source)
    counts = {"records": 0, "successful": 0, "unsuccessful": 0, "invalid": 0}
    model = request.model
    with AtomicFile(target) as output:
        while chunk := await asyncio.to_thread(lambda: list(islice(records, CHUNK))):
            raw = [record for record, _ in chunk]
            errors = {index: error for index, (_, error) in enumerate(chunk) if error}
            job = SyncJob(raw, request.model)
            cleaned, problems = clean_records(raw, errors)
            pending = pending_records(job, cleaned, problems, batch_available=batch_available)
            if pending:
                worker.submit(CallKey(request.topic, request.model, suggestions), pending)
            try:
                outcome = await job.outcome
            except asyncio.CancelledError:
                job.abandon()
                raise
            if isinstance(outcome, Refusal):
                raise _Unfinished(failed_reply(request.topic, job.model, "sync", outcome.code, outcome.message))
            if isinstance(outcome, HandBack):
                raise _Unfinished(outcome)
            model = job.model or model
            for result in outcome:
                counts["records"] += 1
                counts[result["codeStatus"]] += 1
                output.write_line(encode_line(result))
    return {"status": "completed", "topic": request.topic, "model": model, "route": "sync",
            "output": {"file": output_name, **counts}, "error": None}
