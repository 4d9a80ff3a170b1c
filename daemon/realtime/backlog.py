"""Records waiting for a real-time coding call, and packing them into 300-record calls.

Plain data structures and functions, testable without a broker or an API.
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Protocol

from ..constants import MAX_RECORDS_PER_CALL
from ..request.cleaning import CleanRecord


class CallKey(NamedTuple):
    """What every record in one coding call must share."""

    topic: str
    model: str | None  # None: the topic's latest model
    suggestions: int


class Owner(Protocol):
    """The request a record belongs to (a SyncJob)."""

    @property
    def done(self) -> bool: ...


@dataclass(slots=True)
class PendingRecord:
    owner: Owner
    index: int  # position in its request
    record: CleanRecord
    attempts: int = 0
    max_call: int = MAX_RECORDS_PER_CALL  # fewer after the API refused a call with it (bisection)
    seq: int = field(default=-1, compare=False)  # arrival order, set when first added


def _arrival(pending: PendingRecord) -> int:
    return pending.seq


class Backlog:
    """Records waiting for a coding call, grouped by CallKey, each group in arrival order.

    Invariants (checked by `check()`, and by a state-machine test): the size is the sum of
    the groups' lengths; no group is empty; every group is in arrival order; a record is
    in the backlog at most once.
    """

    def __init__(self) -> None:
        self._groups: dict[CallKey, deque[PendingRecord]] = {}
        self._seq = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def keys(self) -> list[CallKey]:
        return list(self._groups)

    def add(self, key: CallKey, records: Iterable[PendingRecord]) -> None:
        """New records, at the end of their group."""
        for pending in records:
            pending.seq = next(self._seq)
            self._groups.setdefault(key, deque()).append(pending)
            self._size += 1

    def put_back(self, key: CallKey, records: list[PendingRecord]) -> None:
        """Records taken earlier (a failed call) go back where their arrival puts them."""
        if not records:
            return
        group = self._groups.get(key)
        merged = heapq.merge(sorted(records, key=_arrival), group or (), key=_arrival)
        self._groups[key] = deque(merged)
        self._size += len(records)

    def peek_key(self) -> CallKey | None:
        """The key take() would serve next: the one whose oldest record has waited longest."""
        if not self._groups:
            return None
        return min(self._groups, key=lambda k: self._groups[k][0].seq)

    def take_key(self, key: CallKey) -> list[PendingRecord]:
        """Remove and return every record waiting under `key`."""
        group = self._groups.pop(key, deque())
        self._size -= len(group)
        return list(group)

    def take(self, limit: int = MAX_RECORDS_PER_CALL) -> tuple[CallKey, list[PendingRecord]] | None:
        """Up to `limit` records of the key whose oldest record has waited longest (fewer
        if a record's `max_call` says so). Records of requests already finished (failed or
        handed back) are dropped here.
        """
        while self._groups:
            key = self.peek_key()
            group = self._groups[key]
            if group[0].owner.done:  # choose by the oldest record still wanted
                group.popleft()
                self._size -= 1
                if not group:
                    del self._groups[key]
                continue
            batch: list[PendingRecord] = []
            while group and len(batch) < limit:
                pending = group[0]
                if not pending.owner.done:
                    limit = min(limit, pending.max_call)
                    if len(batch) >= limit:
                        break
                    batch.append(pending)
                group.popleft()
                self._size -= 1
            if not group:
                del self._groups[key]
            if batch:
                return key, batch
        return None

    def clear(self) -> list[PendingRecord]:
        """Remove and return everything waiting."""
        everything = [p for group in self._groups.values() for p in group]
        self._groups.clear()
        self._size = 0
        return everything

    def check(self) -> None:
        """Raise AssertionError if an invariant is broken."""
        assert self._size == sum(len(g) for g in self._groups.values()), "size is not the sum of the groups"
        seen: set[int] = set()
        for key, group in self._groups.items():
            assert group, f"group {key} is empty"
            seqs = [p.seq for p in group]
            assert seqs == sorted(seqs), f"group {key} is out of arrival order"
            assert not seen.intersection(map(id, group)), "a record is in the backlog twice"
            seen.update(map(id, group))


def coding_body(batch: list[PendingRecord], suggestions: int) -> dict:
    """The real-time API body for a batch; the API's recordId carries our position."""
    return {
        "records": [{"recordId": str(i), **p.record.as_api()} for i, p in enumerate(batch)],
        "numberOfSuggestions": suggestions,
    }


def match_results(batch: list[PendingRecord], answer: Any) -> list[tuple[PendingRecord, dict]]:
    """Pair each pending record with its item of the API's answer (an array in order).

    Raises ValueError when the answer does not fit the batch, so a bad answer is retried
    rather than given to the wrong request.
    """
    if not isinstance(answer, list) or len(answer) != len(batch):
        raise ValueError(f"expected {len(batch)} results, got {type(answer).__name__} "
                         f"of {len(answer) if isinstance(answer, list) else 'n/a'}")
    pairs = []
    for position, (pending, item) in enumerate(zip(batch, answer)):
        if not isinstance(item, dict) or item.get("recordId", str(position)) != str(position):
            raise ValueError(f"result {position} does not belong to record {position}")
        pairs.append((pending, item))
    return pairs


_INDEX = re.compile(r"Record with index (\d+)")


def offending_indexes(message: str) -> list[int]:
    """Record indexes named in the API's 'outside the min or max char limit' message."""
    return sorted({int(i) for i in _INDEX.findall(message or "")})
