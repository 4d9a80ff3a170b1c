"""Taking over: what the state stream says, brought into this replica's own state_dir
before it acts — the day's call count, and every unfinished batch job at the phase it
reached (its journal entry, its inline records, its cached answers). The batch runner
rebuilds the spool from these exactly as it was (runner.py), so the job's operations
carry on and no new one is created.

The stream is the authority for any job it knows: a local journal entry is kept only
when it is newer (its last step was journaled here but never reached the stream); a job
the stream says was delivered is removed here. A job only this state_dir knows (journaled
before it shared anything) is shared now, unless it is older than the stream keeps entries.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from ..api.quota import QuotaLedger
from ..batch.cached import CACHED_NAME
from ..batch.journal import Job, Journal, Part
from ..broker.statestream import StateStream
from ..logs import get_logger
from .entries import CACHED, INPUT, SharedView, fold, text
from .sharing import NoSharing

LOCAL_ONLY_MAX_AGE = 7 * 86400.0  # as long as the stream keeps entries (statestream.MAX_AGE)
SHARED_SUFFIX = ".shared"  # chunks land here, renamed into place once the read is complete

log = get_logger("coderd.replica")


def job_from_record(record: dict) -> Job:
    data = dict(record)
    data["parts"] = [Part(**p) for p in data.get("parts", [])]
    return Job(**data)


async def read_view(stream: StateStream) -> SharedView:
    """The stream folded into a view. An entry that cannot be read (damaged, or written by
    hand) is logged and passed over: it must not keep every replica from taking over."""
    view = SharedView()

    def take(kind: str, headers: dict, body: bytes, offset: int) -> None:
        try:
            fold(view, kind, headers, body, offset)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("state_entry_unreadable", kind=kind, offset=offset, error=f"{type(exc).__name__}: {exc}"[:200])

    await stream.read(take)
    return view


async def adopt(view: SharedView, stream: StateStream, journal: Journal, ledger: QuotaLedger,
                sharing: NoSharing) -> int:
    """Bring `view` into the local journal and ledger; returns how many jobs were taken over."""
    for day, used in view.quota.items():
        ledger.adopt(day, used)
    for job_id in view.finished:
        if journal.directory_of(job_id).exists():
            log.info("batch_job_finished_elsewhere", job_id=job_id)
            await asyncio.to_thread(journal.remove_id, job_id)
    taken, needs_chunks = 0, []
    for job_id, shared in view.jobs.items():
        if shared.record is None:
            continue  # its records were being shared when the writer went: its request is still queued
        local = journal.load(journal.directory_of(job_id))
        if local is not None and local.revision >= shared.revision:
            continue
        job = job_from_record(shared.record)
        journal.save(job, keep_revision=True)
        taken += 1
        log.info("batch_job_taken_over", job_id=job_id, phase=job.phase,
                 operations=[p.operation_id for p in job.parts if p.operation_id])
        directory = journal.directory(job)
        if (shared.input_from is not None and not (directory / "request.jsonl").exists()) or \
                (shared.cached_from is not None and not (directory / CACHED_NAME).exists()):
            needs_chunks.append(job_id)
    if needs_chunks:
        await _fetch_chunks(view, stream, journal, set(needs_chunks))
    for job in journal.jobs():  # only here: journaled before its entry could be shared
        if (shared := view.jobs.get(job.job_id)) is not None and shared.record is not None:
            continue
        if time.time() - job.created_at > LOCAL_ONLY_MAX_AGE:
            log.warning("batch_job_dropped", job_id=job.job_id, reason="older than the state stream keeps entries")
            journal.remove(job)
            continue
        directory = journal.directory(job)
        await sharing.job_created(job, directory)
        await sharing.job_cached(job, directory)
    return taken


async def _fetch_chunks(view: SharedView, stream: StateStream, journal: Journal, job_ids: set[str]) -> None:
    """Read the stream again from the first chunk these jobs need, writing their files."""
    names = {INPUT: "request.jsonl", CACHED: CACHED_NAME}
    written: set[Path] = set()

    def write(kind: str, headers: dict, body: bytes, _offset: int) -> None:
        if kind not in names or (job_id := text(headers.get("job_id", ""))) not in job_ids:
            return
        target = journal.directory_of(job_id) / (names[kind] + SHARED_SUFFIX)
        with open(target, "wb" if int(headers.get("seq", 0)) == 0 else "ab") as handle:
            handle.write(body)
        written.add(target)

    await stream.read(write, offset=view.read_from(job_ids))
    for target in written:
        target.replace(target.with_name(target.name.removesuffix(SHARED_SUFFIX)))


def describe(view: SharedView) -> dict:
    """For the log line at takeover."""
    return {"jobs": len(view.jobs), "finished": len(view.finished),
            "quota": json.dumps(dict(sorted(view.quota.items())[-2:]))}
