"""One batch job, phase by phase: spooled, each part's operation created, uploaded,
polled and downloaded, then delivered.

Each step the API would see is journaled first (journal.py) and shared with the other
replicas (replica/sharing.py), so after a crash at any phase the restarted daemon, or the
replica that takes over on another host, carries on with the same operation. While
state_dir cannot be written, a job waits (nothing it does may go unrecorded) and then
carries on.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import aiohttp

from ..api.cache import ResultCache
from ..api.catalog import ModelCatalog, refusal_for, segment
from ..api.client import ApiCaller, ApiError, QuotaExhausted
from ..api.token import TokenUnavailable
from ..backoff import Backoff
from ..config import Settings
from ..logs import get_logger
from ..ops import metrics
from ..replica.sharing import NoSharing, SharingFailed
from ..request.claimcheck import ClaimCheckError
from ..request.finish import Finisher
from ..request.inbox import open_input, read_local_records, read_records
from ..request.incoming import ReplyAddress
from ..request.results import JobFailed
from ..statedir import StateDir, StateNotWritable
from . import presigned
from .cached import rebuild_parts, take_cached
from .journal import Job, Journal, Part
from .reply import batch_reply
from .spool import spool

MAX_OPERATIONS = 3  # per part: a timed-out or lost operation is replaced this many times
MAX_URL_REFRESHES = 3
OUTPUT_PATIENCE = 3600.0  # an outbox that cannot be written is retried this long, then the job fails
OUTPUT_BACKOFF = Backoff(base=5.0, cap=300.0)

log = get_logger("coderd.batch")


class JobRunner:
    def __init__(self, settings: Settings, caller: ApiCaller, catalog: ModelCatalog, session: aiohttp.ClientSession,
                 finisher: Finisher, journal: Journal, state: StateDir, cache: ResultCache | None = None,
                 sharing: NoSharing | None = None) -> None:
        self.settings, self.caller, self.catalog = settings, caller, catalog
        self.session, self.finisher, self.journal, self.state = session, finisher, journal, state
        self.cache, self.sharing = cache, sharing or NoSharing()

    async def run(self, job: Job) -> None:
        """Run `job` to its reply. Never raises (but for cancellation): a failure is logged
        and the job stays journaled, to be retried on the next scan."""
        while True:
            try:
                await self._run(job)
                return
            except asyncio.CancelledError:
                raise
            except StateNotWritable:
                await self.state.wait_writable()  # then carry on from the journaled phase
            except SharingFailed as exc:  # the broker is out of reach: so is the lease, soon
                log.info("batch_job_waiting", job_id=job.job_id, reason=str(exc))
                return  # journaled here: the next scan, here or in the next active replica, resumes it
            except Exception:  # noqa: BLE001 - left journaled: retried on the next scan
                log.exception("batch_job_error", job_id=job.job_id)
                metrics.task_crashes.labels("batch-job").inc()
                return

    async def _save(self, job: Job) -> None:
        self.journal.save(job)
        await self.sharing.job(job)

    async def _phase(self, job: Job, phase: str, **fields) -> None:
        job.phase = phase
        await self._save(job)
        log.info("batch_phase", job_id=job.job_id, phase=phase, correlation_id=job.correlation_id,
                 records=job.total, **fields)

    async def _recover_files(self, job: Job) -> None:
        """Never leave the journal pointing at missing files: what is gone is redone. The
        spool of a job whose operations exist (a job taken over from another host) is
        rebuilt as it was, so those operations carry on."""
        directory = self.journal.directory(job)
        if job.phase == "spooling" or job.failure is not None:
            return
        manifest_lost = not (directory / "manifest.jsonl").exists()
        spool_lost = any(not p.uploaded and not (directory / p.spool).exists() for p in job.parts)
        if manifest_lost or spool_lost:
            if any(p.operation_id for p in job.parts) and await self._rebuild(job):
                log.info("batch_spool_rebuilt", job_id=job.job_id, phase=job.phase, parts=len(job.parts))
            else:
                log.warning("batch_files_missing", job_id=job.job_id, phase=job.phase, action="spooling again")
                job.parts, job.phase = [], "spooling"
                await self._save(job)
                return
        for part in job.parts:
            if part.result is not None and not (directory / part.result).exists():
                part.result = None  # downloaded again from a fresh URL
        await self._save(job)

    async def _rebuild(self, job: Job) -> bool:
        """Spool the job's input again and take out the records its cached.jsonl answers:
        True when that gives the journaled parts exactly (the same records in each)."""
        directory = self.journal.directory(job)
        try:
            parts = await asyncio.to_thread(rebuild_parts, self._spooler(job, directory), directory)
        except (ClaimCheckError, OSError, ValueError) as exc:
            log.warning("batch_spool_not_rebuilt", job_id=job.job_id, error=str(exc))
            return False
        return [(p.spool, p.records, p.size) for p in parts] == [(p.spool, p.records, p.size) for p in job.parts]

    async def _run(self, job: Job) -> None:
        await self._recover_files(job)
        if job.failure is None:
            try:
                if job.phase == "spooling":
                    await self._spool(job)
                for index, part in enumerate(job.parts):
                    await self._code_part(job, index, part)
            except JobFailed as failure:
                job.failure = {"code": failure.code, "message": failure.message}
            if job.phase != "delivering":
                await self._phase(job, "delivering")
        await self._deliver(job)

    def _spooler(self, job: Job, directory: Path):
        """A blocking function that spools the job's input (for asyncio.to_thread)."""
        if job.kind == "file":
            inbox, name = self.settings.inbox_dir, job.input_file

            def write_spool():  # opened, checked and read in the worker thread, through one descriptor
                with open_input(inbox, name) as opened:
                    return spool(read_records(opened), directory)
            return write_spool
        if (directory / "request.jsonl").exists():  # inline records, one a line
            return lambda: spool(read_local_records(directory / "request.jsonl"), directory)
        # journaled by an earlier version, as one JSON list
        return lambda: spool(((r, None) for r in json.loads((directory / "request.json").read_text())), directory)

    async def _spool(self, job: Job) -> None:
        directory = self.journal.directory(job)
        try:
            summary = await asyncio.to_thread(self._spooler(job, directory))
        except ClaimCheckError as exc:
            raise JobFailed(exc.code, str(exc)) from None
        except OSError as exc:  # the spool is in state_dir
            raise self.state.failed(exc, "a batch job's spool") from None
        job.total, job.invalid = summary.total, summary.invalid
        job.parts = [Part(p.path.name, p.records, p.size) for p in summary.parts]
        cached = 0
        if self.cache is not None and job.parts:  # what the cache knows is not uploaded
            job.resolved_model = job.resolved_model or job.model or self.catalog.latest(job.topic) \
                or await self._resolve(job)
            try:
                cached = await take_cached(job, directory, self.cache, job.resolved_model)
            except OSError as exc:  # the spool is in state_dir
                raise self.state.failed(exc, "a batch job's spool") from None
            await self.sharing.job_cached(job, directory)  # before the entry that says what was uploaded
        await self._phase(job, "creating" if job.parts else "delivering", parts=len(job.parts), invalid=job.invalid,
                          cached=cached)

    async def _api(self, method: str, path: str):
        """A /v1 call for a job: waits out the quota, tokens and transient errors."""
        attempt = 0
        while True:
            try:
                return await self.caller.call(method, path)
            except QuotaExhausted:
                await self.caller.ledger.wait_for_reset()
            except TokenUnavailable as exc:
                await asyncio.sleep(exc.retry_after)
            except ApiError as error:
                metrics.api_errors.labels(str(error.status or "none")).inc()
                if error.quota_exhausted:
                    continue  # the ledger knows: the next call waits for 00:00 UTC
                refusal = refusal_for(error)
                if refusal is not None:
                    raise JobFailed(refusal.code, refusal.message) from None
                if not error.transient and error.status not in (401, 404):
                    raise JobFailed("upstream_error", f"coding API answered {error}") from None
                if error.status in (401, 404):
                    raise
                attempt += 1
                await asyncio.sleep(Backoff(base=2.0, cap=min(self.settings.batch_poll_seconds, 256.0)).delay(attempt))

    def _topic_path(self, job: Job) -> str:
        return f"/topics/{segment(job.topic)}"

    async def _create(self, job: Job, part: Part) -> None:
        if part.operations >= MAX_OPERATIONS:
            raise JobFailed("batch_failed", f"the batch service lost or timed out {MAX_OPERATIONS} operations")
        if job.resolved_model is None:
            job.resolved_model = job.model or self.catalog.latest(job.topic) or await self._resolve(job)
        part.operations += 1
        await self._save(job)  # the attempt counts even if we crash right after the call
        created = await self._api("POST", f"{self._topic_path(job)}/models/{segment(job.resolved_model)}/batch-code")
        part.operation_id, part.kms_key, part.upload_url = (
            created["operationId"], created["bucketKmsKeyArn"], created["requestUploadUrl"])
        part.uploaded, part.result = False, None
        await self._phase(job, "uploading", operation_id=part.operation_id)

    async def _resolve(self, job: Job) -> str:
        try:
            return await self.catalog.resolve(job.topic)
        except ApiError as error:
            refusal = refusal_for(error)
            if refusal is not None:
                raise JobFailed(refusal.code, refusal.message) from None
            raise

    async def _status(self, job: Job, part: Part) -> dict:
        return await self._api("GET", f"{self._topic_path(job)}/batch-code/operations/{part.operation_id}")

    async def _code_part(self, job: Job, index: int, part: Part) -> None:
        directory = self.journal.directory(job)
        while part.result is None:
            if part.operation_id is None:
                await self._create(job, part)
            try:
                status = await self._status(job, part)
            except ApiError:  # 401/404: the operation is gone
                part.operation_id = None
                continue
            state = status.get("operationStatus")
            if state == "awaiting_input" and not part.uploaded:
                await self._upload(job, part, directory)
            elif state == "timed_out" or (state == "awaiting_input" and part.uploaded):
                log.warning("batch_operation_replaced", job_id=job.job_id, operation_id=part.operation_id, status=state)
                part.operation_id = None
            elif state == "failed":
                raise JobFailed("batch_failed", status.get("error") or "the batch operation failed")
            elif state == "complete":
                await self._download(job, index, part, status, directory)
            else:  # in_progress
                if not part.uploaded:
                    part.uploaded = True
                    await self._phase(job, "polling", operation_id=part.operation_id)
                await asyncio.sleep(self.settings.batch_poll_seconds * random.uniform(0.9, 1.1))

    async def _upload(self, job: Job, part: Part, directory: Path) -> None:
        try:
            await presigned.upload(self.session, part.upload_url, part.kms_key, directory / part.spool)
        except presigned.TransferError as exc:
            log.warning("batch_upload_failed", job_id=job.job_id, operation_id=part.operation_id, error=str(exc))
            await asyncio.sleep(min(self.settings.batch_poll_seconds, 30))
            return  # the status decides: upload again, or a new operation
        part.uploaded = True
        await self._phase(job, "polling", operation_id=part.operation_id, bytes=part.size)

    async def _download(self, job: Job, index: int, part: Part, status: dict, directory: Path) -> None:
        if job.phase != "downloading":
            await self._phase(job, "downloading", operation_id=part.operation_id)
        name = f"result-{index:03d}.jsonl"
        for _ in range(MAX_URL_REFRESHES):
            try:
                await presigned.download(self.session, status["responseDownloadUrl"], directory / name)
                part.result = name
                await self._save(job)
                return
            except presigned.TransferError as exc:
                log.warning("batch_download_failed", job_id=job.job_id, operation_id=part.operation_id, error=str(exc))
                if not exc.expired:
                    await asyncio.sleep(min(self.settings.batch_poll_seconds, 30))
                status = await self._status(job, part)  # a fresh URL
                if status.get("operationStatus") != "complete":
                    return
        raise JobFailed("batch_failed", "the batch output could not be downloaded")

    async def _deliver(self, job: Job) -> None:
        directory, outbox = self.journal.directory(job), self.finisher.outbox
        started, attempt = time.monotonic(), 0
        while True:
            try:
                reply = await asyncio.to_thread(batch_reply, job, directory, outbox)
                break
            except ClaimCheckError as exc:  # the output file cannot be written
                waited = time.monotonic() - started
                if exc.code != "output_not_writable" or waited > OUTPUT_PATIENCE:
                    job.failure = {"code": exc.code, "message": str(exc)}
                    await self._save(job)  # the results stay with the API until its output expires
                    continue
                log.warning("batch_output_not_writable", job_id=job.job_id, error=str(exc),
                            retrying_for_seconds=round(OUTPUT_PATIENCE - waited))
                attempt += 1
                await asyncio.sleep(OUTPUT_BACKOFF.delay(attempt))
        await self.finisher.finish(ReplyAddress(job.correlation_id, job.reply_to), reply,
                                   elapsed=time.time() - job.created_at, owner=job.owner, job_id=job.job_id)
        self.journal.remove(job)
        try:
            await self.sharing.job_done(job)
        except SharingFailed as exc:  # replied: at worst the next active replica replies once more
            log.warning("batch_done_not_shared", job_id=job.job_id, error=str(exc))
