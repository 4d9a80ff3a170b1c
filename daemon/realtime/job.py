"""One request's records on their way through the real-time worker, and how it ends."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

from ..request.cleaning import CleanRecord, sync_problem
from ..request.results import HandBack, Refusal, invalid_result, sync_result
from .backlog import BULK, PendingRecord

# What a SyncJob comes to: every record's RecordResult, a refusal of the whole request,
# or the request handed back to its queue untouched.
Outcome = list[dict] | Refusal | HandBack


class Origin(NamedTuple):
    """Where a request came from: its lane, and its producer when the message names one."""

    lane: str = BULK
    producer: str | None = None


class SyncJob:
    def __init__(self, raw_records: list[Any], model: str | None, origin: Origin = Origin()) -> None:
        self.raw, self.origin = raw_records, origin
        self.model = model  # the requested model; set to the resolved latest when coded
        self.results: list[dict | None] = [None] * len(raw_records)
        self.missing = len(raw_records)
        self.cached = 0  # records answered from the result cache
        self.outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    @property
    def done(self) -> bool:
        return self.outcome.done()

    def set_invalid(self, index: int, error: str) -> None:
        self._set(index, invalid_result(self.raw[index], error))

    def set_coded(self, index: int, item: dict, *, cached: bool = False) -> None:
        if self._set(index, sync_result(self.raw[index], item)) and cached:
            self.cached += 1

    def _set(self, index: int, result: dict) -> bool:
        if self.done or self.results[index] is not None:
            return False
        self.results[index] = result
        self.missing -= 1
        if self.missing == 0:
            self.outcome.set_result(self.results)
        return True

    def fail(self, code: str, message: str) -> None:
        if not self.done:
            self.outcome.set_result(Refusal(code, message))

    def hand_back(self, reason: str) -> None:
        if not self.done:
            self.outcome.set_result(HandBack(reason))

    def abandon(self) -> None:
        """Its message is gone (handed back at shutdown): its waiting records are dropped."""
        if not self.done:
            self.outcome.cancel()


def pending_records(job: SyncJob, cleaned: list[CleanRecord | None], problems: dict[int, str],
                    *, batch_available: bool) -> list[PendingRecord]:
    """The records of a request that can go to the API; the others are set invalid now."""
    pending = []
    for index, record in enumerate(cleaned):
        problem = problems.get(index) or sync_problem(record, batch_available=batch_available)
        if problem:
            job.set_invalid(index, problem)
        else:
            pending.append(PendingRecord(job, index, record, lane=job.origin.lane, producer=job.origin.producer))
    return pending
