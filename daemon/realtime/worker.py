"""The throttled sync worker: one loop that turns limiter slots into packed coding calls.

Records wait in the backlog; each time a slot opens, the oldest key's records — up to
300, from however many requests — go out in one call, and the answers are split back
to their requests. When idle a slot is free at once, so a lone request waits for nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable
from urllib.parse import quote

from ..api.catalog import ModelCatalog, refusal_for
from ..api.client import ApiCaller, ApiError, QuotaExhausted
from ..api.token import TokenUnavailable
from ..backoff import Backoff
from ..logs import get_logger
from ..ops import metrics
from ..request.cleaning import CleanRecord, sync_problem
from ..request.results import JobFailed, Refusal, invalid_result, sync_result
from .backlog import Backlog, CallKey, PendingRecord, coding_body, match_results, offending_indexes

MAX_ATTEMPTS = 6  # per record; then its request fails with upstream_error
RETRY_BACKOFF = Backoff(base=1.0, cap=30.0)
LONG_WAIT = 60.0  # a token outage longer than this fails requests instead of holding them

log = get_logger("coderd.sync")


class HandedBack(Exception):
    """The request goes back to the queue untouched (quota used up, shutting down)."""


class SyncJob:
    """One request's records on their way through the sync worker."""

    def __init__(self, raw_records: list[Any], model: str | None) -> None:
        self.raw = raw_records
        self.model = model  # the requested model; set to the resolved latest when coded
        self.results: list[dict | None] = [None] * len(raw_records)
        self.missing = len(raw_records)
        self.future: asyncio.Future[list[dict]] = asyncio.get_running_loop().create_future()

    @property
    def done(self) -> bool:
        return self.future.done()

    def set_invalid(self, index: int, error: str) -> None:
        self._set(index, invalid_result(self.raw[index], error))

    def set_coded(self, index: int, item: dict) -> None:
        self._set(index, sync_result(self.raw[index], item))

    def _set(self, index: int, result: dict) -> None:
        if self.done or self.results[index] is not None:
            return
        self.results[index] = result
        self.missing -= 1
        if self.missing == 0:
            self.future.set_result(self.results)

    def fail(self, code: str, message: str) -> None:
        if not self.done:
            self.future.set_exception(JobFailed(code, message))

    def hand_back(self) -> None:
        if not self.done:
            self.future.set_exception(HandedBack())


def pending_records(job: SyncJob, cleaned: list[CleanRecord | None], problems: dict[int, str],
                    *, batch_available: bool) -> list[PendingRecord]:
    """The records of a request that can go to the API; the others are set invalid now."""
    pending = []
    for index, record in enumerate(cleaned):
        problem = problems.get(index) or sync_problem(record, batch_available=batch_available)
        if problem:
            job.set_invalid(index, problem)
        else:
            pending.append(PendingRecord(job, index, record))
    return pending


class SyncWorker:
    def __init__(self, caller: ApiCaller, catalog: ModelCatalog,
                 on_quota_exhausted: Callable[[], None]) -> None:
        self.caller, self.catalog = caller, catalog
        self.on_quota_exhausted = on_quota_exhausted
        self.backlog = Backlog()
        self._wake = asyncio.Event()
        self._calls: set[asyncio.Task] = set()

    def submit(self, key: CallKey, records: list[PendingRecord]) -> None:
        self.backlog.add(key, records)
        self._wake.set()

    def hand_back_all(self) -> None:
        """Give every waiting request back (to be requeued by its message handler)."""
        for pending in self.backlog.clear():
            pending.owner.hand_back()

    async def run(self) -> None:
        while True:
            if not self.backlog:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._step()
            except QuotaExhausted:
                self.hand_back_all()
                self.on_quota_exhausted()
            except TokenUnavailable as exc:
                await self._token_outage(exc)

    async def drain(self) -> None:
        """Wait for the calls in flight to finish and their results to be delivered."""
        while self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)

    async def _step(self) -> None:
        head = self.backlog.peek_key()
        if head is not None and head.model is None and self.catalog.latest(head.topic) is None:
            await self._resolve_latest(head)
            return
        token = await self.caller.reserve()
        taken = self.backlog.take()
        if taken is None:
            return
        key, batch = taken
        model = key.model or self.catalog.latest(key.topic)
        if model is None:  # a new topic arrived between peek and take
            self.backlog.put_back(key, batch)
            return
        refusal = self.catalog.refusal(key.topic, key.model)
        if refusal is not None:
            self._refuse(batch, refusal)
            return
        for pending in batch:
            pending.owner.model = model
        task = asyncio.get_running_loop().create_task(self._code(token, key, model, batch))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _resolve_latest(self, key: CallKey) -> None:
        refusal = self.catalog.refusal(key.topic, None)
        if refusal is None:
            try:
                await self.catalog.resolve(key.topic)
                return
            except ApiError as error:
                refusal = refusal_for(error)
                if refusal is None:
                    self.caller.limiter.penalize(RETRY_BACKOFF.delay(1))
                    taken = self.backlog.take_key(key)
                    self._retry(key, taken, error)
                    return
        self._refuse(self.backlog.take_key(key), refusal)

    async def _code(self, token: str, key: CallKey, model: str, batch: list[PendingRecord]) -> None:
        path = f"/topics/{quote(key.topic, safe='')}/models/{quote(model, safe='')}/code"
        try:
            answer = await self.caller.send(token, "POST", path, coding_body(batch, key.suggestions))
            pairs = match_results(batch, answer)
        except ApiError as error:
            self._handle_error(key, batch, error)
            return
        except ValueError as exc:
            self._retry(key, batch, ApiError(200, f"unexpected answer: {exc}"))
            return
        metrics.observe_call(len(batch))
        for pending, item in pairs:
            pending.owner.set_coded(pending.index, item)
        log.debug("coding_call", topic=key.topic, records=len(batch))

    def _handle_error(self, key: CallKey, batch: list[PendingRecord], error: ApiError) -> None:
        metrics.api_errors.labels(str(error.status or "none")).inc()
        log.warning("coding_call_failed", topic=key.topic, records=len(batch), status=error.status,
                    message=error.message)
        if error.quota_exhausted:
            self.caller.ledger.mark_exhausted()
            self.backlog.put_back(key, batch)
            self.hand_back_all()
            self.on_quota_exhausted()
        elif error.status == 400:
            self._bad_request(key, batch, error)
        elif (refusal := refusal_for(error)) is not None:
            self.catalog.remember(key.topic, key.model, refusal)
            self._refuse(batch, refusal)
        elif error.transient:
            if error.status != 403:  # a refused token is re-fetched; no need to slow down
                self.caller.limiter.penalize(RETRY_BACKOFF.delay(max(p.attempts for p in batch) + 1))
            self._retry(key, batch, error)
        else:
            self._refuse(batch, Refusal("upstream_error", f"coding API answered {error}"))
        self._wake.set()

    def _bad_request(self, key: CallKey, batch: list[PendingRecord], error: ApiError) -> None:
        """The API refused the whole call: set aside what it names, or split to find it.

        Cleaning should make this impossible; if the API is stricter than we know, one
        bad record still costs only a few calls, never the others' results.
        """
        named = [i for i in offending_indexes(error.message) if i < len(batch)]
        if named:
            for i in named:
                batch[i].owner.set_invalid(batch[i].index, f"refused by the coding API: {error.message}")
            self.backlog.put_back(key, [p for i, p in enumerate(batch) if i not in set(named)])
        elif len(batch) == 1:
            batch[0].owner.set_invalid(batch[0].index, f"refused by the coding API: {error.message}")
        else:
            half = len(batch) // 2
            self.backlog.put_back(key, batch[half:])
            self.backlog.put_back(key, batch[:half])

    def _retry(self, key: CallKey, batch: list[PendingRecord], error: ApiError) -> None:
        again = []
        for pending in batch:
            pending.attempts += 1
            if pending.attempts >= MAX_ATTEMPTS:
                pending.owner.fail("upstream_error", f"coding API failed {MAX_ATTEMPTS} times; last: {error}")
            else:
                again.append(pending)
        self.backlog.put_back(key, again)

    def _refuse(self, batch: list[PendingRecord], refusal: Refusal) -> None:
        for pending in batch:
            pending.owner.fail(refusal.code, refusal.message)

    async def _token_outage(self, exc: TokenUnavailable) -> None:
        log.error("token_unavailable", reason=str(exc), retry_after=round(exc.retry_after, 1))
        if exc.retry_after > LONG_WAIT:
            for pending in self.backlog.clear():
                pending.owner.fail("upstream_error", f"no token for the coding API: {exc}")
        await asyncio.sleep(min(exc.retry_after, LONG_WAIT))
