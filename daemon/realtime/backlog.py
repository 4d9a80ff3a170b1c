"""Records waiting for a real-time coding call, packed into calls of 300 distinct texts.

Two lanes share every call. The interactive lane's records (a person is waiting) go first,
in arrival order; the bulk lane fills the rest of the call round-robin: one record from
each producer in turn (a producer is who published: `app_id` or `user_id`, else each
request is its own), and within a producer one from each of its requests in turn, so a
small request behind a huge one finishes within a few calls while the huge one loses
almost nothing. Plain data structures and functions, testable without a broker or an API.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..constants import BULK, INTERACTIVE, MAX_RECORDS_PER_CALL
from ..request.cleaning import CleanRecord

__all__ = ["BULK", "INTERACTIVE", "Backlog", "CallKey", "Owner", "PendingRecord"]


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
    since: float = field(default_factory=time.monotonic, compare=False)  # when it began to wait
    checked: bool = False  # looked up in the result cache already
    lane: str = BULK
    producer: str | None = None  # who published it, when the message says (app_id, user_id)


def _arrival(pending: PendingRecord) -> int:
    return pending.seq


def _merge(queue: deque[PendingRecord] | None, records: list[PendingRecord]) -> deque[PendingRecord]:
    return deque(heapq.merge(sorted(records, key=_arrival), queue or (), key=_arrival))


class _Group:
    """One CallKey's records: the interactive lane in arrival order; the bulk lane as
    shares, producer -> request -> records in arrival order, both levels in turn order."""

    __slots__ = ("interactive", "bulk", "size")

    def __init__(self) -> None:
        self.interactive: deque[PendingRecord] = deque()
        self.bulk: OrderedDict[str, OrderedDict[int, deque[PendingRecord]]] = OrderedDict()
        self.size = 0

    @staticmethod
    def share(pending: PendingRecord) -> tuple[str, int]:
        request = id(pending.owner)
        return (pending.producer if pending.producer is not None else f"request {request}"), request

    def queues(self) -> Iterator[deque[PendingRecord]]:
        if self.interactive:
            yield self.interactive
        for requests in self.bulk.values():
            yield from requests.values()

    def records(self) -> Iterator[PendingRecord]:
        for queue in self.queues():
            yield from queue

    def oldest(self) -> int:
        """The arrival of the record that has waited longest (interactive first)."""
        if self.interactive:
            return self.interactive[0].seq
        return min(queue[0].seq for queue in self.queues())

    def put(self, records: list[PendingRecord], merge: bool) -> None:
        by_queue: dict[tuple[str, int] | None, list[PendingRecord]] = {}
        for pending in records:
            by_queue.setdefault(None if pending.lane == INTERACTIVE else self.share(pending), []).append(pending)
        for where, batch in by_queue.items():
            if where is None:
                self.interactive = _merge(self.interactive, batch) if merge else self.interactive + deque(batch)
                continue
            producer, request = where
            requests = self.bulk.setdefault(producer, OrderedDict())
            queue = requests.get(request)
            requests[request] = _merge(queue, batch) if merge or queue is None else queue + deque(batch)
        self.size += len(records)

    def drop_finished(self) -> int:
        """Drop records of finished requests from the heads of the queues; how many."""
        dropped = 0
        for queue in list(self.queues()):
            while queue and queue[0].owner.done:
                queue.popleft()
                dropped += 1
        if dropped:
            self._tidy()
            self.size -= dropped
        return dropped

    def _tidy(self) -> None:
        for producer in list(self.bulk):
            requests = self.bulk[producer]
            for request in [r for r, queue in requests.items() if not queue]:
                del requests[request]
            if not requests:
                del self.bulk[producer]

    def take(self, limit: int) -> list[PendingRecord]:
        """Up to `limit` distinct texts: interactive first, then bulk round-robin. Records
        of finished requests are dropped on the way (they take no turn)."""
        batch: list[PendingRecord] = []
        texts: set[CleanRecord] = set()

        def admit(queue: deque[PendingRecord]) -> bool | None:  # True: took one; None: queue empty; False: full
            nonlocal limit
            while queue and queue[0].owner.done:
                queue.popleft()
                self.size -= 1
            if not queue:
                return None
            pending = queue[0]
            if pending.record not in texts and len(texts) >= min(limit, pending.max_call):
                return False
            limit = min(limit, pending.max_call)
            texts.add(pending.record)
            batch.append(queue.popleft())
            self.size -= 1
            return True

        while self.interactive:
            if admit(self.interactive) is False:
                return batch
        while self.bulk:
            for producer in list(self.bulk):  # one round: a record from each producer
                requests = self.bulk[producer]
                while requests:  # its next request in turn (one whose records are all finished takes no turn)
                    request, queue = next(iter(requests.items()))
                    took = admit(queue)
                    if took is False:
                        return batch
                    if queue:
                        requests.move_to_end(request)
                    else:
                        del requests[request]
                    if took:
                        break
                if requests:
                    self.bulk.move_to_end(producer)
                else:
                    del self.bulk[producer]
        return batch

    def remove_if(self, wanted: Callable[[PendingRecord], bool]) -> list[PendingRecord]:
        taken = [p for p in self.records() if wanted(p)]
        if taken:
            kept = [p for p in self.records() if not wanted(p)]
            self.interactive, self.bulk, self.size = deque(), OrderedDict(), 0
            self.put(kept, merge=True)
        return taken


class Backlog:
    """Records waiting for a coding call, grouped by CallKey, and in each group by lane and
    share (see the module's docstring).

    Invariants (checked by `check()`, and by a state-machine test): the size is the sum of
    the groups' sizes; no group, producer or request queue is empty; every queue is in
    arrival order; a record is in the backlog at most once, in its own lane and share.
    """

    def __init__(self) -> None:
        self._groups: dict[CallKey, _Group] = {}
        self._seq = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def keys(self) -> list[CallKey]:
        return list(self._groups)

    def waiting(self, lane: str) -> int:
        """Records waiting in `lane`."""
        return sum(len(g.interactive) if lane == INTERACTIVE else g.size - len(g.interactive)
                   for g in self._groups.values())

    def oldest_interactive(self) -> PendingRecord | None:
        """The interactive record that has waited longest, if any waits."""
        heads = [g.interactive[0] for g in self._groups.values() if g.interactive]
        return min(heads, key=_arrival, default=None)

    def add(self, key: CallKey, records: Iterable[PendingRecord]) -> None:
        """New records, at the end of their queues."""
        records = list(records)
        for pending in records:
            pending.seq = next(self._seq)
        if records:
            self._groups.setdefault(key, _Group()).put(records, merge=False)
            self._size += len(records)

    def put_back(self, key: CallKey, records: list[PendingRecord]) -> None:
        """Records taken earlier (a failed call) go back where their arrival puts them."""
        if records:
            self._groups.setdefault(key, _Group()).put(records, merge=True)
            self._size += len(records)

    def peek_key(self) -> CallKey | None:
        """The key take() would serve next: one with interactive records waiting, else the
        one whose oldest record has waited longest."""
        self._drop_finished()
        if not self._groups:
            return None
        return min(self._groups, key=lambda k: (not self._groups[k].interactive, self._groups[k].oldest()))

    def _drop_finished(self) -> None:
        """Records of finished requests at the heads of the queues go (they must not
        decide which key is served next)."""
        for key in list(self._groups):
            group = self._groups[key]
            self._size -= group.drop_finished()
            if not group.size:
                del self._groups[key]

    def distinct(self, key: CallKey, up_to: int = MAX_RECORDS_PER_CALL) -> int:
        """How many distinct texts of live records wait under `key` (counting stops at up_to)."""
        seen: set[CleanRecord] = set()
        group = self._groups.get(key)
        for pending in group.records() if group is not None else ():
            if not pending.owner.done:
                seen.add(pending.record)
                if len(seen) >= up_to:
                    break
        return len(seen)

    def full_key(self, limit: int = MAX_RECORDS_PER_CALL) -> CallKey | None:
        """A key with enough distinct texts waiting for a full call (the oldest such), or None."""
        for key in sorted(self._groups, key=lambda k: self._groups[k].oldest()):
            if self.distinct(key, limit) >= limit:
                return key
        return None

    def take_key(self, key: CallKey) -> list[PendingRecord]:
        """Remove and return every record waiting under `key`."""
        group = self._groups.pop(key, None)
        if group is None:
            return []
        self._size -= group.size
        return list(group.records())

    def take(self, limit: int = MAX_RECORDS_PER_CALL,
             key: CallKey | None = None) -> tuple[CallKey, list[PendingRecord]] | None:
        """Records with up to `limit` distinct texts (fewer if a record's `max_call` says so;
        repeats of a text ride along free: the API sees each text once), of `key`, or of the
        key peek_key() names: interactive records first, then bulk ones in turn. Records of
        requests already finished (failed or handed back) are dropped here."""
        self._drop_finished()
        while self._groups:
            if key is not None and key not in self._groups:
                return None
            chosen = key if key is not None else self.peek_key()
            group = self._groups[chosen]
            before = group.size
            batch = group.take(limit)
            self._size -= before - group.size
            if not group.size:
                del self._groups[chosen]
            if batch:
                return chosen, batch
        return None

    def take_if(self, wanted: Callable[[PendingRecord], bool]) -> list[PendingRecord]:
        """Remove and return every waiting record for which `wanted(record)` is true."""
        taken: list[PendingRecord] = []
        for key in list(self._groups):
            group = self._groups[key]
            removed = group.remove_if(wanted)
            self._size -= len(removed)
            taken.extend(removed)
            if not group.size:
                del self._groups[key]
        return taken

    def clear(self) -> list[PendingRecord]:
        """Remove and return everything waiting."""
        everything = [p for group in self._groups.values() for p in group.records()]
        self._groups.clear()
        self._size = 0
        return everything

    def check(self) -> None:
        """Raise AssertionError if an invariant is broken."""
        assert self._size == sum(g.size for g in self._groups.values()), "size is not the sum of the groups"
        seen: set[int] = set()
        for key, group in self._groups.items():
            assert group.size > 0, f"group {key} is empty"
            assert group.size == sum(len(q) for q in group.queues()), f"group {key} miscounts"
            assert all(p.lane == INTERACTIVE for p in group.interactive), "a bulk record in the interactive lane"
            for producer, requests in group.bulk.items():
                assert requests, f"producer {producer} has no requests"
                for request, queue in requests.items():
                    assert queue, f"request {request} of {producer} is empty"
                    assert all(p.lane != INTERACTIVE and group.share(p) == (producer, request) for p in queue), \
                        "a record is in another's share"
            for queue in group.queues():
                seqs = [p.seq for p in queue]
                assert seqs == sorted(seqs), f"a queue of {key} is out of arrival order"
                assert not seen.intersection(map(id, queue)), "a record is in the backlog twice"
                seen.update(map(id, queue))
