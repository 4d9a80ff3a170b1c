"""One request, from its body to its outcome: validated, cleaned, routed, coded (or
journaled for the batch service), answered, and the ack policy for its message."""

from __future__ import annotations

import asyncio

from ..api.catalog import ModelCatalog
from ..batch.journal import Job
from ..batch.manager import BatchManager
from ..config import Settings
from ..logs import get_logger
from ..realtime.backlog import CallKey
from ..realtime.files import code_file_via_sync
from ..realtime.job import SyncJob, pending_records
from ..realtime.worker import SyncWorker
from .claimcheck import ClaimCheckError, default_output_name, resolve_inside
from .cleaning import CleanRecord, clean_records
from .finish import Finisher
from .incoming import AckPolicy, Incoming
from .messages import CodeRequest, InvalidMessage, parse_request
from .results import HandBack, Refusal, completed_reply, failed_reply
from .routing import choose_route

log = get_logger("coderd.requests")

# What a request comes to: a reply to publish now, a journaled batch job (its reply comes
# when the job is done), or a hand-back to the queue.
Outcome = dict | Job | HandBack


class Dispatcher:
    def __init__(self, settings: Settings, catalog: ModelCatalog, worker: SyncWorker, batch: BatchManager,
                 finisher: Finisher) -> None:
        self.settings, self.catalog, self.worker, self.batch = settings, catalog, worker, batch
        self.finisher = finisher

    async def handle(self, incoming: Incoming) -> AckPolicy:
        """Never raises (but for cancellation): whatever happens, the message is settled."""
        address = incoming.address
        try:
            outcome = await self.outcome(incoming)
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
            await self.finisher.finish(address, outcome, elapsed=incoming.elapsed(), lane=incoming.lane)
        except Exception as exc:  # noqa: BLE001 - the reply is not confirmed: the request stays queued
            log.warning("reply_not_confirmed", correlation_id=address.correlation_id,
                        error=f"{type(exc).__name__}: {exc}")
            return AckPolicy.NACK
        return AckPolicy.ACK

    async def outcome(self, incoming: Incoming) -> Outcome:
        try:
            request = parse_request(incoming.body)
        except InvalidMessage as exc:
            return failed_reply(None, None, None, "invalid_message", str(exc), exc.details)
        suggestions = request.numberOfSuggestions
        if suggestions is None:
            suggestions = self.settings.number_of_suggestions
        refusal = await self.catalog.check(request.topic, request.model)
        if refusal is not None:  # known without a coding call (at most one topic-list call an hour)
            return failed_reply(request.topic, request.model, None, refusal.code, refusal.message)
        if request.inputFile is not None:
            return await self._file(request, incoming, suggestions)
        raw = request.raw_records
        cleaned, problems = clean_records(raw)
        route = choose_route(request.mode, self.settings.tier, self.settings.batch_threshold, cleaned)
        if isinstance(route, Refusal):
            return failed_reply(request.topic, request.model, None, route.code, route.message)
        if route == "batch":
            job = Job.new(correlation_id=incoming.address.correlation_id, reply_to=incoming.address.reply_to,
                          topic=request.topic, model=request.model, suggestions=suggestions,
                          kind="record" if request.record is not None else "records")
            await asyncio.to_thread(self.batch.journal.create, job, raw)
            return job
        return await self._sync(request, raw, cleaned, problems, suggestions)

    async def _file(self, request: CodeRequest, incoming: Incoming, suggestions: int) -> Outcome:
        """An inputFile: a batch job on the partner tier, else coded through the sync worker."""
        try:
            source = resolve_inside(self.settings.inbox_dir, request.inputFile, must_exist=True)
            output_name = request.outputFile or default_output_name(request.inputFile)
            target = resolve_inside(self.settings.outbox_dir, output_name, must_exist=False)
        except ClaimCheckError as exc:
            return failed_reply(request.topic, request.model, None, exc.code, str(exc))
        route = choose_route(request.mode, self.settings.tier, self.settings.batch_threshold, [])
        if isinstance(route, Refusal):
            return failed_reply(request.topic, request.model, None, route.code, route.message)
        if self.settings.tier == "partner" and request.mode != "sync":
            job = Job.new(correlation_id=incoming.address.correlation_id, reply_to=incoming.address.reply_to,
                          topic=request.topic, model=request.model, kind="file", suggestions=suggestions,
                          input_file=request.inputFile, output_file=output_name)
            await asyncio.to_thread(self.batch.journal.create, job, None)
            return job
        try:
            return await code_file_via_sync(self.worker, request, source, target, output_name, suggestions,
                                            batch_available=self.settings.tier == "partner")
        except ClaimCheckError as exc:
            return failed_reply(request.topic, request.model, "sync", exc.code, str(exc))

    async def _sync(self, request: CodeRequest, raw: list, cleaned: list[CleanRecord | None],
                    problems: dict[int, str], suggestions: int) -> Outcome:
        job = SyncJob(raw, request.model)
        pending = pending_records(job, cleaned, problems, batch_available=self.settings.tier == "partner")
        if pending:
            self.worker.submit(CallKey(request.topic, request.model, suggestions), pending)
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
