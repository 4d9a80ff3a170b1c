"""The real-time worker: one loop that turns limiter slots into packed coding calls.

Records wait in the backlog; each time a slot opens, a key's records — up to 300
distinct texts, from however many requests — go out in one call (calls.py), and the
answers are split back to their requests. A text the result cache knows is answered at
once, without a call. Quota pacing (api/pacer.py) holds partial calls when the day's
budget is ahead of the even pace, so the next call carries more; a full call is never
held. When idle a slot is free at once, so a lone request waits for nothing. The loop
runs under the supervisor: if it crashes, the records it held are put back (or failed
after too many tries) and the loop starts again.
"""

from __future__ import annotations

import asyncio
import time

from ..api.cache import ResultCache
from ..api.catalog import ModelCatalog, refusal_for
from ..api.client import ApiCaller, ApiError, QuotaExhausted
from ..api.pacer import QuotaPacer
from ..api.token import TokenUnavailable
from ..constants import MAX_RECORDS_PER_CALL
from ..lifecycle import Component
from ..logs import get_logger
from ..ops.supervisor import Supervised, Supervisor
from ..statedir import StateDir, StateNotWritable
from . import calls as calls_module
from .backlog import Backlog, CallKey, PendingRecord
from .calls import CodingCalls
from .schedule import plan_call

TOKEN_PATIENCE = 60.0  # a record waits this long for a token, from when it began to wait
TOKEN_RECHECK = 5.0  # during a token outage, hope is re-assessed this often
PACING_RECHECK = 60.0  # a pacing wait is re-assessed at least this often (more records may fill a call)
PACING_HOLD = 600.0  # during a longer pacing wait, requests that waited this long go back to the queue
DRAIN_TIMEOUT = 25.0  # at shutdown, calls in flight get this long to be answered
TASK = "sync-worker"

log = get_logger("coderd.sync")


class SyncWorker(Component):
    def __init__(self, caller: ApiCaller, catalog: ModelCatalog, supervisor: Supervisor, state: StateDir,
                 pacer: QuotaPacer | None = None, cache: ResultCache | None = None, *,
                 interactive_max_wait: float = 2.0) -> None:
        self.caller, self.catalog, self.supervisor, self.state = caller, catalog, supervisor, state
        self.pacer, self.cache = pacer, cache
        self.backlog = Backlog()
        self.calls = CodingCalls(caller, catalog, self.backlog, cache, on_done=self._wake_up)
        self.pacing_wait = 0.0  # seconds the next partial call waits for the budget (0: none)
        self.interactive_max_wait = interactive_max_wait  # an interactive record's bound on pacing waits
        self._wake = asyncio.Event()
        self._calls: dict[asyncio.Task, list[PendingRecord]] = {}  # calls in flight (strong references)
        self._lookups: set[asyncio.Task] = set()
        self._holding: tuple[CallKey, list[PendingRecord]] | None = None  # taken, not yet in a call
        self._task: Supervised | None = None
        self._outage_since: float | None = None  # monotonic time a token outage began
        self._shutting_down = False

    async def start(self) -> None:
        self._task = self.supervisor.start_task(TASK, self.run, on_crash=self._recover,
                                                busy=lambda: len(self.backlog) > 0 and not self.pacing_wait)

    async def stop(self) -> None:
        """Stop taking records; calls in flight that someone still waits for get
        DRAIN_TIMEOUT to be answered, the others are cancelled; the rest goes back."""
        await self.supervisor.stop_task(TASK)
        awaited = [t for t, batch in self._calls.items() if any(not p.owner.done for p in batch)]
        if awaited:
            await asyncio.wait(awaited, timeout=DRAIN_TIMEOUT)
        for task in [*self._calls, *self._lookups]:
            task.cancel()
        await asyncio.gather(*self._calls, *self._lookups, return_exceptions=True)
        self.hand_back_all("shutdown")

    def begin_shutdown(self) -> None:
        """SIGTERM: requests in flight get the grace period, but none of it is spent waiting
        for the day's budget: what waits for it now (or later) goes back to the queue."""
        self._shutting_down = True
        if self.pacing_wait:
            self.hand_back_all("shutdown")
        self._wake.set()

    def _wake_up(self) -> None:
        self._wake.set()

    def submit(self, key: CallKey, records: list[PendingRecord]) -> None:
        """New records: answered from the cache when the model is known and the cache has
        them, otherwise (and meanwhile) waiting in the backlog."""
        model = key.model or self.catalog.latest(key.topic)
        if self.cache is None or model is None:
            self._add(key, records)
            return
        task = asyncio.get_running_loop().create_task(self._from_cache(key, model, records))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _from_cache(self, key: CallKey, model: str, records: list[PendingRecord]) -> None:
        try:
            missing = await self.calls.answer_from_cache(key, model, records)
        except Exception:  # noqa: BLE001 - the cache is an optimisation: code them instead
            log.exception("cache_lookup_failed")
            missing = records
        self._add(key, missing)

    def _add(self, key: CallKey, records: list[PendingRecord]) -> None:
        if records:
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
                self.pacing_wait = 0.0
                await self._wake.wait()
                continue
            try:
                await self._step()
            except QuotaExhausted:
                self.hand_back_all("quota")  # the intake stops consuming until 00:00 UTC
            except TokenUnavailable as exc:
                await self._token_outage(exc)

    def _recover(self, error: BaseException) -> None:
        """After a crash: what the loop held is tried again, or failed if tried too often."""
        if self._holding is not None:
            key, batch = self._holding
            self._holding = None
            self.calls.retry(key, batch, ApiError(None, f"the worker failed: {type(error).__name__}"))
        self._wake.set()

    async def _step(self) -> None:
        if not self.state.writable:  # no call can be counted: what waits goes back to the queue
            self.hand_back_all("state_dir not writable")
            await self.state.wait_writable()
            return
        if self.caller.ledger.exhausted:  # whatever pacing would say: nothing goes until 00:00 UTC
            raise QuotaExhausted("the day's calls are used up")
        plan = plan_call(self.backlog, self.pacer, interactive_max_wait=self.interactive_max_wait)
        if plan is None:  # what waited belonged to requests already finished (dropped just now)
            return
        key = plan.key
        if key.model is None and self.catalog.latest(key.topic) is None:
            await self._resolve_latest(key)
            return
        if plan.wait > 0:
            await self._paced(plan.wait)
            return
        self.pacing_wait = 0.0
        token = await self.caller.reserve()
        if self._outage_since is not None:
            log.info("token_available_again", outage_seconds=round(time.monotonic() - self._outage_since, 1))
            self._outage_since = None
        taken = self.backlog.take(MAX_RECORDS_PER_CALL, key)
        if taken is None:
            return
        key, batch = self._holding = taken
        model = key.model or self.catalog.latest(key.topic)
        refusal = self.catalog.refusal(key.topic, key.model)
        if model is not None and refusal is None and not all(p.checked for p in batch):
            # Records that came before the model was known: the cache may know them now.
            unchecked = [p for p in batch if not p.checked]
            missing = await self.calls.answer_from_cache(key, model, unchecked)
            answered = {id(p) for p in unchecked} - {id(p) for p in missing}
            batch = [p for p in batch if id(p) not in answered]
        self._holding = None
        if model is None:  # a new topic arrived between peek and take
            self.backlog.put_back(key, batch)
        elif refusal is not None:
            self.calls.refuse(batch, refusal)
        elif batch:
            for pending in batch:
                pending.owner.model = model
            task = asyncio.get_running_loop().create_task(self.calls.run(token, key, model, batch))
            self._calls[task] = batch
            task.add_done_callback(lambda t: self._calls.pop(t, None))

    async def _paced(self, delay: float) -> None:
        """The next (partial) call must wait `delay` for the day's budget: wait until more
        records come (they may fill a call) or a while, then the loop looks again."""
        if self._shutting_down:
            self.hand_back_all("shutdown")
            return
        if not self.pacing_wait:  # a wait begins (not logged again while it lasts)
            log.info("pacing_wait", seconds=round(min(delay, 86400), 1), records=len(self.backlog))
        self.pacing_wait = delay
        if delay > PACING_HOLD:
            # A delivery may not stay unacked for ever (the broker's consumer timeout): what
            # waited PACING_HOLD goes back to the queue's tail; newer deliveries take its place
            # (the prefetch bounds them), and any 300 of them make a full call, never held.
            now = time.monotonic()
            stale = self.backlog.take_if(lambda p: now - p.since >= PACING_HOLD)
            for pending in stale:
                pending.owner.hand_back("pacing")
            if stale:
                log.info("pacing_hand_back", records=len(stale), wait_seconds=round(min(delay, 86400)))
        self._wake.clear()
        try:  # new records may make a full call: look again when they come
            await asyncio.wait_for(self._wake.wait(), min(delay, PACING_RECHECK))
        except asyncio.TimeoutError:
            pass

    async def _resolve_latest(self, key: CallKey) -> None:
        refusal = self.catalog.refusal(key.topic, None)
        if refusal is None:
            try:
                await self.catalog.resolve(key.topic)
                return
            except StateNotWritable:
                return  # the look-up was not made; the next step hands back what waits
            except ApiError as error:
                if error.quota_exhausted:
                    self.hand_back_all("quota")
                    return
                refusal = refusal_for(error)
                if refusal is None:  # as a failed coding call: retried with growing back-off
                    waiting = self.backlog.take_key(key)
                    attempts = max((p.attempts for p in waiting), default=0) + 1
                    log.warning("model_lookup_failed", topic=key.topic, status=error.status, message=error.message,
                                attempt=attempts)
                    self.caller.limiter.penalize(calls_module.RETRY_BACKOFF.delay(attempts))
                    self.calls.retry(key, waiting, error)
                    return
        self.calls.refuse(self.backlog.take_key(key), refusal)

    async def _token_outage(self, exc: TokenUnavailable) -> None:
        """No token now. One policy for every record: it is held while a token may still
        come within TOKEN_PATIENCE of when it began to wait, then its request fails
        (upstream_error); a token endpoint that says "not before" later than that fails it
        at once."""
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            log.error("token_unavailable", reason=str(exc), retry_after=round(exc.retry_after, 1))
        hopeless = self.backlog.take_if(lambda p: now + exc.retry_after - p.since > TOKEN_PATIENCE)
        for pending in hopeless:
            pending.owner.fail("upstream_error", f"no token for the coding API within {TOKEN_PATIENCE:.0f} s: {exc}")
        await asyncio.sleep(min(exc.retry_after, TOKEN_RECHECK))
