"""Records from a file coded through the real-time worker: an `inputFile` (public tier, or
`mode: sync`), or a large inline request spooled to disk.

The records are read and coded a chunk at a time and the results written in input order,
so memory stays flat however many there are. Files are opened, checked and read in
worker threads only (a slow or hostile file never stalls the event loop). The request
stays unacked while it is coded: a crash means it is coded again from the start.
"""

from __future__ import annotations

import asyncio
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Iterator

from ..durable import AtomicFile
from ..request.cleaning import clean_records
from ..request.finish import ResultsFile
from ..request.inbox import open_input, read_records
from ..request.messages import CodeRequest
from ..request.results import HandBack, Refusal, encode, failed_reply
from .backlog import CallKey
from .job import Origin, SyncJob, pending_records
from .worker import SyncWorker

CHUNK = 3000  # records a chunk: ten full calls
CHUNKS_AHEAD = 2  # chunks in memory at a time: the one being answered, and the next

Records = Iterator[tuple[object, "str | None"]]


class _Unfinished(Exception):
    """The records cannot all be coded: no output is written, and this is the outcome."""

    def __init__(self, outcome: dict | HandBack) -> None:
        self.outcome = outcome


async def code_input_file(worker: SyncWorker, request: CodeRequest, inbox_dir: Path, target: Path,
                          suggestions: int, *, batch_available: bool,
                          origin: Origin = Origin()) -> tuple[ResultsFile | dict | HandBack, str]:
    """Code `request.inputFile` from `inbox_dir` into `target`: (the results, or a failed
    reply or a hand-back; the model). ClaimCheckError when the input cannot be opened
    (path_not_allowed, input_not_found) or its CSV header is refused."""
    with await asyncio.to_thread(open_input, inbox_dir, request.inputFile) as opened:
        records = await asyncio.to_thread(read_records, opened)  # a CSV's header is read here
        return await code_records(worker, request, records, target, suggestions, batch_available=batch_available,
                                  origin=origin)


async def code_records(worker: SyncWorker, request: CodeRequest, records: Records, target: Path,
                       suggestions: int, *, batch_available: bool,
                       origin: Origin = Origin()) -> tuple[ResultsFile | dict | HandBack, str]:
    """Code `records` ((raw, error) pairs) into `target`, one RecordResult a line, written
    whole or not at all: (the ResultsFile, or a failed reply or a hand-back; the model)."""
    try:
        return await _code(worker, request, records, target, suggestions, batch_available=batch_available,
                           origin=origin)
    except _Unfinished as unfinished:  # raised inside the output's `with`: nothing was written
        return unfinished.outcome, request.model


async def _code(worker: SyncWorker, request: CodeRequest, records: Records, target: Path,
                suggestions: int, *, batch_available: bool, origin: Origin) -> tuple[ResultsFile, str]:
    results, model = ResultsFile(target), request.model
    key = CallKey(request.topic, request.model, suggestions)
    ahead: deque[SyncJob] = deque()  # submitted, answered in order
    try:
        with AtomicFile(target) as output:
            while True:
                # The next chunk waits in the backlog while this one is coded, so the calls
                # between two chunks are full too; CHUNKS_AHEAD bounds the memory.
                while len(ahead) < CHUNKS_AHEAD and (chunk := await asyncio.to_thread(
                        lambda: list(islice(records, CHUNK)))):
                    ahead.append(_submit(worker, key, request, chunk, origin, batch_available))
                if not ahead:
                    return results, model
                job = ahead[0]
                outcome = await job.outcome
                ahead.popleft()
                if isinstance(outcome, Refusal):
                    raise _Unfinished(failed_reply(request.topic, job.model, "sync", outcome.code, outcome.message))
                if isinstance(outcome, HandBack):
                    raise _Unfinished(outcome)
                model = job.model or model
                results.cached += job.cached
                lines = await asyncio.to_thread(lambda: [encode(result) for result in outcome])
                for result, line in zip(outcome, lines):
                    results.records += 1
                    results.counts[result["codeStatus"]] += 1
                    output.write_line(line)
    finally:
        for job in ahead:  # unfinished or cancelled: what is still waiting needs no call
            job.abandon()


def _submit(worker: SyncWorker, key: CallKey, request: CodeRequest, chunk: list, origin: Origin,
            batch_available: bool) -> SyncJob:
    raw = [record for record, _ in chunk]
    errors = {index: error for index, (_, error) in enumerate(chunk) if error}
    job = SyncJob(raw, request.model, origin)
    cleaned, problems = clean_records(raw, errors)
    pending = pending_records(job, cleaned, problems, batch_available=batch_available)
    if pending:
        worker.submit(key, pending)
    return job
