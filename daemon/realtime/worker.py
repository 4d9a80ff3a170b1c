"""The real-time worker: one loop that turns limiter slots into packed coding calls.

Records wait in the backlog; each time a slot opens, the oldest key's records — up to
300, from however many requests — go out in one call, and the answers are split back
to their requests. When idle a slot is free at once, so a lone request waits for nothing.
The loop runs under the supervisor: if it crashes, the records it held are put back (or
failed after too many tries) and the loop starts again.
"""

from __future__ import annotations

import asyncio

from ..api.catalog import ModelCatalog, refusal_for, segment
from ..api.client import ApiCaller, ApiError, QuotaExhausted
from ..api.token import TokenUnavailable
from ..backoff import Backoff
from ..lifecycle import Component
from ..logs import get_logger
from ..ops import metrics
from ..ops.supervisor import Supervised, Supervisor
from ..request.results import Refusal
from .backlog import Backlog, CallKey, PendingRecord, coding_body, match_results, offending_indexes

MAX_ATTEMPTS = 6  # per record; then its request fails with upstream_error
RETRY_BACKOFF = Backoff(base=1.0, cap=30.0)
LONG_WAIT = 60.0  # a token outage longer than this fails requests instead of holding them
DRAIN_TIMEOUT = 25.0  # at shutdown, calls in flight get this long to be answered
TASK = "sync-worker"

log = get_logger("coderd.sync")


class SyncWorker(Component):
    def __init__(self, caller: ApiCaller, catalog: ModelCatalog, supervisor: Supervisor) -> None:
        self.caller, self.catalog, self.supervisor = caller, catalog, supervisor
        self.backlog = Backlog()
        self._wake = asyncio.Event()
        self._calls: dict[asyncio.Task, list[PendingRecord]] = {}  # calls in flight (strong references)
        self._holding: tuple[CallKey, list[PendingRecord]] | None = None  # taken, not yet in a call
        self._task: Supervised | None = None

    async def start(self) -> None:
        self._task = self.supervisor.start_task(TASK, self.run, on_crash=self._recover,
                                                busy=lambda: len(self.backlog) > 0)

    async def stop(self) -> None:
        """Stop taking records; calls in flight that someone still waits for get
        DRAIN_TIMEOUT to be answered, the others are cancelled; the rest goes back."""
        await self.supervisor.stop_task(TASK)
        awaited = [t for t, batch in self._calls.items() if any(not p.owner.done for p in batch)]
        if awaited:
            await asyncio.wait(awaited, timeout=DRAIN_TIMEOUT)
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
        self.hand_back_all("shutdown")

    def submit(self, key: CallKey, records: list[PendingRecord]) -> None:
        self.backlog.add(key, records)
        self._wake.set()

    def hand_back_all(self, reason: str) -> None:
        """Give every waiting request back (its message handler requeues it)."""
        for pending in self.backlog.clear():
            pending.owner.hand_back(reason)

    async def run(self) -> None:
        while True:
            self._task.beat()
            if not self.backlog:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._step()
            except QuotaExhausted:
                self._quota_exhausted()
            except TokenUnavailable as exc:
                await self._token_outage(exc)

    def _recover(self, error: BaseException) -> None:
        """After a crash: what the loop held is tried again, or failed if tried too often."""
        if self._holding is not None:
            key, batch = self._holding
            self._holding = None
            self._retry(key, batch, ApiError(None, f"the worker failed: {type(error).__name__}"))
        self._wake.set()

    async def _step(self) -> None:
        head = self.backlog.peek_key()
        if head.model is None and self.catalog.latest(head.topic) is None:
            await self._resolve_latest(head)
            return
        token = await self.caller.reserve()
        taken = self.backlog.take()
        if taken is None:
            return
        key, batch = self._holding = taken
        model = key.model or self.catalog.latest(key.topic)
        refusal = self.catalog.refusal(key.topic, key.model)
        self._holding = None
        if model is None:  # a new topic arrived between peek and take
            self.backlog.put_back(key, batch)
        elif refusal is not None:
            self._refuse(batch, refusal)
        else:
            for pending in batch:
                pending.owner.model = model
            task = asyncio.get_running_loop().create_task(self._call(token, key, model, batch))
            self._calls[task] = batch
            task.add_done_callback(lambda t: self._calls.pop(t, None))

    async def _resolve_latest(self, key: CallKey) -> None:
        refusal = self.catalog.refusal(key.topic, None)
        if refusal is None:
            try:
                await self.catalog.resolve(key.topic)
                return
            except ApiError as error:
                if error.quota_exhausted:
                    self._quota_exhausted()
                    return
                refusal = refusal_for(error)
                if refusal is None:
                    self.caller.limiter.penalize(RETRY_BACKOFF.delay(1))
                    self._retry(key, self.backlog.take_key(key), error)
                    return
        self._refuse(self.backlog.take_key(key), refusal)

    async def _call(self, token: str, key: CallKey, model: str, batch: list[PendingRecord]) -> None:
        """One coding call; whatever happens, every record in it is answered or put back."""
        try:
            await self._code(token, key, model, batch)
        except Exception as exc:  # noqa: BLE001 - a bug here must not lose the records
            log.exception("coding_call_crashed", topic=key.topic, records=len(batch))
            metrics.task_crashes.labels("coding-call").inc()
            self._retry(key, batch, ApiError(None, f"the call failed inside coderd: {type(exc).__name__}"))
        self._wake.set()

    async def _code(self, token: str, key: CallKey, model: str, batch: list[PendingRecord]) -> None:
        path = f"/topics/{segment(key.topic)}/models/{segment(model)}/code"
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
            self.backlog.put_back(key, batch)
            self._quota_exhausted()
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

    def _bad_request(self, key: CallKey, batch: list[PendingRecord], error: ApiError) -> None:
        """The API refused the whole call: set aside what it names, or split to find it.

        Cleaning should make this impossible; if the API is stricter than we know, one
        bad record still costs only a few calls, never the others' results.
        """
        named = {i for i in offending_indexes(error.message) if i < len(batch)}
        if named:
            for i in named:
                batch[i].owner.set_invalid(batch[i].index, f"refused by the coding API: {error.message}")
            self.backlog.put_back(key, [p for i, p in enumerate(batch) if i not in named])
        elif len(batch) == 1:
            batch[0].owner.set_invalid(batch[0].index, f"refused by the coding API: {error.message}")
        else:  # bisect: each half goes out on its own, and splits again if refused again
            half = len(batch) // 2
            for position, pending in enumerate(batch):
                pending.max_call = half if position < half else len(batch) - half
            self.backlog.put_back(key, batch)

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

    def _quota_exhausted(self) -> None:
        """Today's calls are used up: every waiting request goes back to the queue (the
        quota pause stops consuming until 00:00 UTC)."""
        self.hand_back_all("quota")

    async def _token_outage(self, exc: TokenUnavailable) -> None:
        log.error("token_unavailable", reason=str(exc), retry_after=round(exc.retry_after, 1))
        if exc.retry_after > LONG_WAIT:
            for pending in self.backlog.clear():
                pending.owner.fail("upstream_error", f"no token for the coding API: {exc}")
        await asyncio.sleep(min(exc.retry_after, LONG_WAIT))
