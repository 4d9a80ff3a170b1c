"""One real-time coding call: its records' distinct texts sent once, the answer mapped
back to every record, each answer remembered in the result cache; and what a failed call
leads to (a retry, a split, a refusal).

Whatever happens, every record of a call is answered or put back in the backlog.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from ..api.cache import CacheKey, ResultCache
from ..api.catalog import ModelCatalog, refusal_for, segment
from ..api.client import ApiCaller, ApiError
from ..backoff import Backoff
from ..logs import get_logger
from ..ops import metrics
from ..request.cleaning import CleanRecord
from ..request.results import Refusal
from ..statedir import StateNotWritable
from .backlog import Backlog, CallKey, PendingRecord

MAX_ATTEMPTS = 6  # per record; then its request fails with upstream_error
RETRY_BACKOFF = Backoff(base=1.0, cap=30.0)

log = get_logger("coderd.sync")


def distinct_texts(batch: list[PendingRecord]) -> dict[CleanRecord, list[PendingRecord]]:
    """The batch's texts, each once, in order, with the records that carry it."""
    texts: dict[CleanRecord, list[PendingRecord]] = {}
    for pending in batch:
        texts.setdefault(pending.record, []).append(pending)
    return texts


def coding_body(texts: list[CleanRecord], suggestions: int) -> dict:
    """The real-time API body; the API's recordId carries the text's position."""
    return {"records": [{"recordId": str(i), **text.as_api()} for i, text in enumerate(texts)],
            "numberOfSuggestions": suggestions}


def match_results(count: int, answer: Any) -> list[dict]:
    """The API's answer items in position order, checked against the call: ValueError when
    it does not fit, so a bad answer is retried rather than given to the wrong request."""
    if not isinstance(answer, list) or len(answer) != count:
        raise ValueError(f"expected {count} results, got {type(answer).__name__} "
                         f"of {len(answer) if isinstance(answer, list) else 'n/a'}")
    for position, item in enumerate(answer):
        if not isinstance(item, dict) or item.get("recordId", str(position)) != str(position):
            raise ValueError(f"result {position} does not belong to record {position}")
    return answer


_INDEX = re.compile(r"Record with index (\d+)")


def offending_indexes(message: str) -> list[int]:
    """Record indexes named in the API's 'outside the min or max char limit' message."""
    return sorted({int(i) for i in _INDEX.findall(message or "")})


class CodingCalls:
    def __init__(self, caller: ApiCaller, catalog: ModelCatalog, backlog: Backlog, cache: ResultCache | None,
                 on_done: Callable[[], None]) -> None:
        self.caller, self.catalog, self.backlog, self.cache = caller, catalog, backlog, cache
        self.on_done = on_done  # the worker's wake-up: put-back records may be taken at once

    async def run(self, token: str, key: CallKey, model: str, batch: list[PendingRecord]) -> None:
        try:
            await self._code(token, key, model, batch)
        except StateNotWritable:  # the call was not made (it could not be counted)
            self.backlog.put_back(key, batch)
        except Exception as exc:  # noqa: BLE001 - a bug here must not lose the records
            log.exception("coding_call_crashed", topic=key.topic, records=len(batch))
            metrics.task_crashes.labels("coding-call").inc()
            self.retry(key, batch, ApiError(None, f"the call failed inside coderd: {type(exc).__name__}"))
        self.on_done()

    async def _code(self, token: str, key: CallKey, model: str, batch: list[PendingRecord]) -> None:
        texts = distinct_texts(batch)
        ordered = list(texts)
        path = f"/topics/{segment(key.topic)}/models/{segment(model)}/code"
        try:
            answer = await self.caller.send(token, "POST", path, coding_body(ordered, key.suggestions))
            items = match_results(len(ordered), answer)
        except ApiError as error:
            self._failed(key, texts, error)
            return
        except ValueError as exc:
            self.retry(key, batch, ApiError(200, f"unexpected answer: {exc}"))
            return
        metrics.observe_call(len(ordered), len(batch))
        for text, item in zip(ordered, items):
            for pending in texts[text]:
                pending.owner.set_coded(pending.index, item)
            if self.cache is not None:
                self.cache.store(CacheKey(key.topic, model, text.occp_text, text.tasks_text, key.suggestions), item)
        log.debug("coding_call", topic=key.topic, texts=len(ordered), records=len(batch))

    def _failed(self, key: CallKey, texts: dict[CleanRecord, list[PendingRecord]], error: ApiError) -> None:
        batch = [p for group in texts.values() for p in group]
        metrics.api_errors.labels(str(error.status or "none")).inc()
        log.warning("coding_call_failed", topic=key.topic, records=len(batch), status=error.status,
                    message=error.message)
        if error.quota_exhausted:  # the ledger knows: the worker hands everything back
            self.backlog.put_back(key, batch)
        elif error.status == 400:
            self._bad_request(key, texts, error)
        elif (refusal := refusal_for(error)) is not None:
            self.catalog.remember(key.topic, key.model, refusal)
            self.refuse(batch, refusal)
        elif error.transient:
            if error.status != 403:  # a refused token is re-fetched; no need to slow down
                self.caller.limiter.penalize(RETRY_BACKOFF.delay(max(p.attempts for p in batch) + 1))
            self.retry(key, batch, error)
        else:
            self.refuse(batch, Refusal("upstream_error", f"coding API answered {error}"))

    def _bad_request(self, key: CallKey, texts: dict[CleanRecord, list[PendingRecord]], error: ApiError) -> None:
        """The API refused the whole call: set aside what it names, or split to find it.

        Cleaning should make this impossible; if the API is stricter than we know, one
        bad text still costs only a few calls, never the others' results.
        """
        ordered = list(texts)
        named = {i for i in offending_indexes(error.message) if i < len(ordered)}
        if not named and len(ordered) == 1:
            named = {0}  # alone: it is the one refused
        if named:
            for i in named:
                for pending in texts[ordered[i]]:
                    pending.owner.set_invalid(pending.index, f"refused by the coding API: {error.message}")
            self.backlog.put_back(key, [p for i, text in enumerate(ordered) if i not in named for p in texts[text]])
            return
        half = len(ordered) // 2  # bisect: each half goes out on its own, and splits again if refused again
        for position, text in enumerate(ordered):
            for pending in texts[text]:
                pending.max_call = half if position < half else len(ordered) - half
        self.backlog.put_back(key, [p for group in texts.values() for p in group])

    def retry(self, key: CallKey, batch: list[PendingRecord], error: ApiError) -> None:
        again = []
        for pending in batch:
            pending.attempts += 1
            if pending.attempts >= MAX_ATTEMPTS:
                pending.owner.fail("upstream_error", f"coding API failed {MAX_ATTEMPTS} times; last: {error}")
            else:
                again.append(pending)
        self.backlog.put_back(key, again)

    @staticmethod
    def refuse(batch: list[PendingRecord], refusal: Refusal) -> None:
        for pending in batch:
            pending.owner.fail(refusal.code, refusal.message)

    async def answer_from_cache(self, key: CallKey, model: str, records: list[PendingRecord]) -> list[PendingRecord]:
        """Answer the records the cache knows (at once, no call); the others are returned."""
        for pending in records:
            pending.checked = True
        if self.cache is None or not records:
            return records
        keys = {p.record: CacheKey(key.topic, model, p.record.occp_text, p.record.tasks_text, key.suggestions)
                for p in records}
        found = await self.cache.lookup(list(set(keys.values())))
        missing = []
        for pending in records:
            item = found.get(keys[pending.record])
            if item is None:
                missing.append(pending)
            else:
                pending.owner.model = model
                pending.owner.set_coded(pending.index, item, cached=True)
        return missing
