"""One request message, from intake to its confirmed reply and ack."""

from __future__ import annotations

import asyncio
import uuid

from aio_pika.abc import AbstractIncomingMessage

from ..batch.journal import Job
from ..batch.manager import BatchManager
from ..broker.replies import ReplyPublisher
from ..config import Settings
from ..logs import get_logger
from ..ops import metrics
from ..realtime.backlog import CallKey
from ..realtime.files import code_file_via_sync
from ..realtime.worker import HandedBack, SyncJob, SyncWorker, pending_records
from .claimcheck import ClaimCheckError, default_output_name, resolve_inside
from .cleaning import CleanRecord, clean_records
from .messages import CodeRequest, InvalidMessage, parse_request
from .results import JobFailed, Refusal, completed_reply, failed_reply
from .routing import choose_route

log = get_logger("coderd.requests")


def correlation_id_of(message: AbstractIncomingMessage) -> str:
    return message.correlation_id or message.message_id or uuid.uuid4().hex


class Dispatcher:
    def __init__(self, settings: Settings, worker: SyncWorker, batch: BatchManager, publisher: ReplyPublisher) -> None:
        self.settings, self.worker, self.batch, self.publisher = settings, worker, batch, publisher

    async def handle(self, message: AbstractIncomingMessage) -> None:
        started = asyncio.get_running_loop().time()
        correlation_id = correlation_id_of(message)
        try:
            reply, records, job = await self.reply_for(message.body, correlation_id, message.reply_to)
            if reply is not None:
                await self.publisher.publish(reply, message.reply_to, correlation_id)
            await message.ack()  # a batch job is journaled by now: its reply comes later
            if job is not None:
                self.batch.submit(job)
                log.info("request_journaled", correlation_id=correlation_id, job_id=job.job_id, kind=job.kind)
                return
        except HandedBack:
            await self._hand_back(message, correlation_id, "quota")
            return
        except asyncio.CancelledError:
            await asyncio.shield(self._hand_back(message, correlation_id, "shutdown"))
            raise
        except Exception:
            # Unexpected: nack so the broker counts it; a message that keeps failing
            # is dead-lettered at the delivery limit instead of looping forever.
            log.exception("request_error", correlation_id=correlation_id)
            await self._nack(message, correlation_id)
            return
        elapsed = asyncio.get_running_loop().time() - started
        metrics.observe_reply(reply, elapsed)
        elapsed_ms = round(elapsed * 1000, 1)
        log.info("request_done", correlation_id=correlation_id, status=reply["status"], route=reply["route"],
                 records=records, latency_ms=elapsed_ms,
                 error=reply["error"]["code"] if reply.get("error") else None)

    async def _hand_back(self, message: AbstractIncomingMessage, correlation_id: str, why: str) -> None:
        """Return an untouched request to the queue for later (quota used up, shutdown)."""
        try:
            await self.publisher.return_to_queue(message, self.settings.request_queue)
            await message.ack()
            log.info("request_handed_back", correlation_id=correlation_id, reason=why)
        except Exception as exc:  # no channel: the broker requeues the unacked message itself
            log.warning("hand_back_failed", correlation_id=correlation_id, error=str(exc))

    async def _nack(self, message: AbstractIncomingMessage, correlation_id: str) -> None:
        try:
            await message.nack(requeue=True)
        except Exception as exc:
            log.warning("nack_failed", correlation_id=correlation_id, error=str(exc))

    async def reply_for(self, body: bytes, correlation_id: str,
                        reply_to: str | None) -> tuple[dict | None, int, Job | None]:
        """The reply for a request body (None when it became a batch job), how many
        records it had, and the job."""
        try:
            request = parse_request(body)
        except InvalidMessage as exc:
            return failed_reply(None, None, None, "invalid_message", str(exc), exc.details), 0, None
        suggestions = request.numberOfSuggestions
        if suggestions is None:
            suggestions = self.settings.number_of_suggestions
        if request.inputFile is not None:
            return await self.code_file(request, correlation_id, reply_to, suggestions)
        raw = request.raw_records
        cleaned, problems = clean_records(raw)
        route = choose_route(request.mode, self.settings.tier, self.settings.batch_threshold, cleaned)
        if isinstance(route, Refusal):
            return failed_reply(request.topic, request.model, None, route.code, route.message), len(raw), None
        if route == "batch":
            job = Job.new(correlation_id=correlation_id, reply_to=reply_to, topic=request.topic, model=request.model,
                          kind="record" if request.record is not None else "records", suggestions=suggestions)
            await asyncio.to_thread(self.batch.journal.create, job, raw)
            return None, len(raw), job
        return await self.code_sync(request, raw, cleaned, problems, suggestions), len(raw), None

    async def code_file(self, request: CodeRequest, correlation_id: str, reply_to: str | None,
                        suggestions: int) -> tuple[dict | None, int, Job | None]:
        """An inputFile: a batch job on the partner tier, else coded through the sync worker."""
        output_name = request.outputFile or default_output_name(request.inputFile)
        try:
            source = resolve_inside(self.settings.inbox_dir, request.inputFile, must_exist=True)
            target = resolve_inside(self.settings.outbox_dir, output_name, must_exist=False)
        except ClaimCheckError as exc:
            return failed_reply(request.topic, request.model, None, exc.code, str(exc)), 0, None
        route = choose_route(request.mode, self.settings.tier, self.settings.batch_threshold, [])
        if isinstance(route, Refusal):
            return failed_reply(request.topic, request.model, None, route.code, route.message), 0, None
        if self.settings.tier == "partner" and request.mode != "sync":
            job = Job.new(correlation_id=correlation_id, reply_to=reply_to, topic=request.topic, model=request.model,
                          kind="file", suggestions=suggestions, input_file=request.inputFile, output_file=output_name)
            await asyncio.to_thread(self.batch.journal.create, job, None)
            return None, 0, job
        try:
            reply = await code_file_via_sync(self.worker, request, source, target, output_name, suggestions,
                                             batch_available=self.settings.tier == "partner")
        except ClaimCheckError as exc:
            return failed_reply(request.topic, request.model, "sync", exc.code, str(exc)), 0, None
        return reply, reply.get("output", {}).get("records", 0), None

    async def code_sync(self, request: CodeRequest, raw: list, cleaned: list[CleanRecord | None],
                        problems: dict[int, str], suggestions: int) -> dict:
        job = SyncJob(raw, request.model)
        pending = pending_records(job, cleaned, problems, batch_available=self.settings.tier == "partner")
        if pending:
            self.worker.submit(CallKey(request.topic, request.model, suggestions), pending)
        try:
            results = await job.future
        except JobFailed as exc:
            return failed_reply(request.topic, job.model, "sync", exc.code, exc.message)
        return completed_reply(request, job.model, "sync", results)
