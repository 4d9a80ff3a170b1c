"""One request, from its body to its outcome: validated, cleaned, routed, coded (or
journaled for the batch service), answered, and the ack policy for its message.

Three shapes of request take three paths: inline records in a small body (parsed at
once, held in memory), inline records in a large or compressed body (parsed as a stream
and spooled to disk, coded like a file), and an `inputFile` (a claim check).
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from pathlib import Path

from ..api.catalog import ModelCatalog
from ..batch.journal import Job
from ..batch.manager import BatchManager
from ..config import Settings
from ..logs import get_logger
from ..ops import metrics
from ..realtime.backlog import CallKey
from ..realtime.files import code_input_file, code_records
from ..realtime.backlog import BULK
from ..realtime.job import Origin, SyncJob, pending_records
from ..realtime.worker import SyncWorker
from ..replica.sharing import SharingFailed
from ..statedir import StateDir, StateNotWritable
from .body import LARGE_BODY, SpoolArea, SpooledBody, is_large, spool_body
from .claimcheck import ClaimCheckError, default_output_name
from .cleaning import clean, clean_records, record_problem
from .finish import Finisher, ReplyNotConfirmed, ResultsFile
from .inbox import check_input, read_local_records
from .incoming import AckPolicy, Incoming
from .messages import CodeRequest, InvalidMessage, parse_request, request_from_members
from .outbox import MAX_REPLY_BYTES
from .results import HandBack, Refusal, completed_reply, failed_reply
from .routing import choose_route, longest

log = get_logger("coderd.requests")

# What a request comes to: a reply to publish now, a journaled batch job (its reply comes
# when the job is done), or a hand-back to the queue.
Outcome = dict | Job | HandBack
MIN_RESULT_BYTES = 150  # no RecordResult is shorter: how large a reply will be, at least
OUTBOX_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def new_job(incoming: Incoming, request: CodeRequest, suggestions: int, **fields) -> Job:
    """A batch job for the request (journaled by the caller before its message is acked)."""
    return Job.new(correlation_id=incoming.address.correlation_id, reply_to=incoming.address.reply_to,
                   identity=incoming.identity, topic=request.topic, model=request.model, suggestions=suggestions,
                   **fields)


class Dispatcher:
    def __init__(self, settings: Settings, catalog: ModelCatalog, worker: SyncWorker, batch: BatchManager,
                 finisher: Finisher, state: StateDir) -> None:
        self.settings, self.catalog, self.worker, self.batch = settings, catalog, worker, batch
        self.finisher, self.state = finisher, state
        self.spool = SpoolArea(settings.state_dir)

    @property
    def batch_available(self) -> bool:
        return self.settings.tier == "partner"

    async def handle(self, incoming: Incoming) -> AckPolicy:
        """Never raises (but for cancellation): whatever happens, the message is settled."""
        address = incoming.address
        if len(incoming.body) > LARGE_BODY:
            await asyncio.to_thread(lambda: incoming.identity)  # hashing a large body: not on the loop
        if await self.finisher.answered.answered(incoming.identity):
            log.info("request_already_answered", correlation_id=address.correlation_id)
            metrics.duplicate_requests.inc()
            return AckPolicy.ACK
        try:
            outcome = await self.outcome(incoming)
        except (StateNotWritable, SharingFailed) as exc:  # it could not be journaled, spooled or shared: later
            outcome = HandBack(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug: the broker counts the delivery, then dead-letters
            log.exception("request_error", correlation_id=address.correlation_id)
            return AckPolicy.NACK
        if isinstance(outcome, HandBack):
            log.info("request_handed_back", correlation_id=address.correlation_id, reason=outcome.reason)
            return AckPolicy.HAND_BACK
        if isinstance(outcome, Job):
            self.batch.submit(outcome)
            log.info("request_journaled", correlation_id=address.correlation_id, job_id=outcome.job_id,
                     kind=outcome.kind)
            return AckPolicy.ACK
        try:
            await self.finisher.finish(address, outcome, elapsed=incoming.elapsed(), lane=incoming.lane,
                                       owner=incoming.identity)
        except ReplyNotConfirmed as exc:  # the request stays with the broker, which delivers it again
            (log.debug if exc.connection_lost else log.warning)(
                "reply_not_confirmed", correlation_id=address.correlation_id, error=str(exc))
            return AckPolicy.NACK
        except Exception as exc:  # noqa: BLE001 - the reply is not confirmed: the request stays queued
            log.warning("reply_not_confirmed", correlation_id=address.correlation_id,
                        error=f"{type(exc).__name__}: {exc}")
            return AckPolicy.NACK
        finally:
            if isinstance(outcome.get("records"), ResultsFile):
                shutil.rmtree(outcome["records"].path.parent, ignore_errors=True)
        return AckPolicy.ACK

    async def outcome(self, incoming: Incoming) -> Outcome:
        if is_large(incoming.body, incoming.content_encoding):
            return await self._spooled(incoming)
        try:
            request = parse_request(incoming.body)
        except InvalidMessage as exc:
            return failed_reply(None, None, None, "invalid_message", str(exc), exc.details)
        return await self._serve(request, incoming)

    async def _serve(self, request: CodeRequest, incoming: Incoming, spooled: SpooledBody | None = None,
                     longest_record: int = 0) -> Outcome:
        """A parsed request, from a small body or a spooled one: refused, or coded from its
        inputFile, its spooled `records`, or inline (a small body, or a spooled single `record`)."""
        if (refusal := await self._refusal(request)) is not None:
            return refusal
        if request.inputFile is not None:
            return await self._file(request, incoming)
        if spooled is not None and spooled.records is not None:
            return await self._spooled_records(request, incoming, spooled.records, spooled.count, longest_record)
        return await self._inline(request, incoming)

    async def _refusal(self, request: CodeRequest) -> dict | None:
        """A failed reply for what is known to fail without a coding call (at most one
        topic-list call an hour)."""
        refusal = await self.catalog.check(request.topic, request.model)
        if refusal is not None:
            return failed_reply(request.topic, request.model, None, refusal.code, refusal.message)
        return None

    def _suggestions(self, request: CodeRequest) -> int:
        given = request.numberOfSuggestions
        return self.settings.number_of_suggestions if given is None else given

    async def _inline(self, request: CodeRequest, incoming: Incoming) -> Outcome:
        raw = request.raw_records
        cleaned, problems = clean_records(raw)
        route = choose_route(request.mode, self.settings.tier, self.settings.batch_threshold, len(raw),
                             longest(cleaned))
        if isinstance(route, Refusal):
            return failed_reply(request.topic, request.model, None, route.code, route.message)
        if route == "batch":
            job = new_job(incoming, request, self._suggestions(request),
                          kind="record" if request.record is not None else "records")
            await self.batch.create(job, raw)
            return job
        job = SyncJob(raw, request.model, Origin(incoming.lane, incoming.producer))
        pending = pending_records(job, cleaned, problems, batch_available=self.batch_available)
        if pending:
            self.worker.submit(CallKey(request.topic, request.model, self._suggestions(request)), pending)
        try:
            outcome = await job.outcome
        except asyncio.CancelledError:
            job.abandon()  # its message is handed back: its records need no call
            raise
        if isinstance(outcome, Refusal):
            return failed_reply(request.topic, job.model, "sync", outcome.code, outcome.message)
        if isinstance(outcome, HandBack):
            return outcome
        return completed_reply(request, job.model, "sync", outcome)

    async def _spooled(self, incoming: Incoming) -> Outcome:
        """A large or compressed body: parsed as a stream in a thread, its records written to
        a spool file and coded from there, like a file."""
        try:
            directory, longest_seen = self.spool.new(), [0]
        except OSError as exc:
            raise self.state.failed(exc, "a large request's spool") from None

        def measure(item) -> None:  # the longest record decides the route, as for a small body
            if record_problem(item) is None:
                longest_seen[0] = max(longest_seen[0], clean(item.get("occp_text"), item.get("tasks_text")).length)

        keep = False
        try:
            try:
                spooled = await asyncio.to_thread(spool_body, incoming.body, incoming.content_encoding,
                                                  directory, measure)
                request = request_from_members(spooled.fields, spooled.count if spooled.records else None)
            except InvalidMessage as exc:
                return failed_reply(None, None, None, "invalid_message", str(exc), exc.details)
            except OSError as exc:  # from writing the spool (validating the members touches no file)
                raise self.state.failed(exc, "a large request's spool") from None
            outcome = await self._serve(request, incoming, spooled, longest_seen[0])
            # Only coding the spooled records yields a ResultsFile (in this directory):
            # handle() removes it once its reply is sent.
            keep = isinstance(outcome, dict) and isinstance(outcome.get("records"), ResultsFile)
            return outcome
        finally:
            if not keep:
                await asyncio.to_thread(shutil.rmtree, directory, True)

    async def _spooled_records(self, request: CodeRequest, incoming: Incoming, records: Path, count: int,
                               longest_record: int) -> Outcome:
        route = choose_route(request.mode, self.settings.tier, self.settings.batch_threshold, count, longest_record)
        if isinstance(route, Refusal):
            return failed_reply(request.topic, request.model, None, route.code, route.message)
        if route == "batch":
            job = new_job(incoming, request, self._suggestions(request), kind="records")
            await self.batch.create(job, None, records)
            return job
        if count * MIN_RESULT_BYTES > MAX_REPLY_BYTES:  # the reply will be a claim check: the outbox must take it
            try:
                await asyncio.to_thread(self.finisher.outbox.check_writable)
            except ClaimCheckError as exc:
                return failed_reply(request.topic, request.model, None, exc.code, str(exc))
        outcome, model = await code_records(  # large: the bulk lane, whichever queue it came from
            self.worker, request, read_local_records(records), records.with_name("results.jsonl"),
            self._suggestions(request), batch_available=self.batch_available, origin=Origin(BULK, incoming.producer))
        if not isinstance(outcome, ResultsFile):
            return outcome
        return {"status": "completed", "topic": request.topic, "model": model, "route": "sync",
                "records": outcome, "error": None}

    async def _file(self, request: CodeRequest, incoming: Incoming) -> Outcome:
        """An inputFile: a batch job on the partner tier, else coded through the sync worker.
        Its output is claimed in the outbox before any coding call is spent."""
        outbox, owner = self.finisher.outbox, incoming.identity
        try:
            await asyncio.to_thread(check_input, self.settings.inbox_dir, request.inputFile)  # opened again to read
            output_name = request.outputFile or default_output_name(request.inputFile)
            target = await asyncio.to_thread(outbox.claim, output_name, owner)
        except ClaimCheckError as exc:
            return failed_reply(request.topic, request.model, None, exc.code, str(exc))
        try:
            route = choose_route(request.mode, self.settings.tier, self.settings.batch_threshold, 0, 0)
            if isinstance(route, Refusal):
                return failed_reply(request.topic, request.model, None, route.code, route.message)
            if self.batch_available and request.mode != "sync":
                job = new_job(incoming, request, self._suggestions(request), kind="file",
                              input_file=request.inputFile, output_file=output_name)
                await self.batch.create(job)
                return job
            try:
                outcome, model = await code_input_file(  # a file: the bulk lane, whichever queue it came from
                    self.worker, request, self.settings.inbox_dir, target, self._suggestions(request),
                    batch_available=self.batch_available, origin=Origin(BULK, incoming.producer))
            except ClaimCheckError as exc:
                return failed_reply(request.topic, request.model, "sync", exc.code, str(exc))
            except OSError as exc:  # the outbox filled up (or turned read-only) while the output was written
                if exc.errno not in OUTBOX_FULL:
                    raise
                return failed_reply(request.topic, request.model, "sync", "output_not_writable",
                                    f"the output {output_name!r} could not be written: {os.strerror(exc.errno)}")
            if not isinstance(outcome, ResultsFile):
                return outcome
            await asyncio.to_thread(outbox.written, target, owner)
            return {"status": "completed", "topic": request.topic, "model": model, "route": "sync",
                    "output": {"file": output_name, "records": outcome.records, **outcome.counts,
                               "cached": outcome.cached}, "error": None}
        finally:
            outbox.release(target)
