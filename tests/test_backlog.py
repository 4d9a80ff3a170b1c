"""Packing records from many requests into calls, and mapping answers back."""

import itertools

import pytest

from daemon.realtime.backlog import BULK, INTERACTIVE, Backlog, CallKey, PendingRecord
from daemon.realtime.calls import coding_body, distinct_texts, match_results, offending_indexes
from daemon.request.cleaning import clean

A = CallKey("anzsco", None, 3)
B = CallKey("osca", None, 3)


class Owner:
    def __init__(self):
        self.done = False


_texts = itertools.count()


def pending(owner, n, start=0, text=None, lane=BULK, producer=None):
    """n records of `owner`; each with a text of its own unless `text` is given."""
    return [PendingRecord(owner, start + i, clean(text or f"job {next(_texts)}", "tasks"), lane=lane,
                          producer=producer) for i in range(n)]


def test_take_packs_up_to_300_across_requests():
    backlog = Backlog()
    owners = [Owner() for _ in range(400)]
    for owner in owners:
        backlog.add(A, pending(owner, 1))
    key, batch = backlog.take()
    assert key == A and len(batch) == 300
    assert [p.owner for p in batch] == owners[:300]
    key, batch = backlog.take()
    assert len(batch) == 100 and len(backlog) == 0
    assert backlog.take() is None


def test_repeated_texts_ride_along_free_in_a_call():
    backlog = Backlog()
    owners = [Owner() for _ in range(600)]
    for i, owner in enumerate(owners):
        backlog.add(A, pending(owner, 1, text=f"text {i % 200}"))  # 200 distinct texts, each three times
    key, batch = backlog.take()
    assert len(batch) == 600 and len({p.record for p in batch}) == 200 and len(backlog) == 0


def test_a_full_key_is_found_and_taken_whatever_its_age():
    backlog = Backlog()
    backlog.add(B, pending(Owner(), 5))
    backlog.add(A, pending(Owner(), 300))
    assert backlog.full_key() == A and backlog.distinct(B) == 5
    key, batch = backlog.take(key=A)
    assert key == A and len(batch) == 300 and backlog.full_key() is None


def test_oldest_key_first_and_keys_never_mixed():
    backlog = Backlog()
    first, second = Owner(), Owner()
    backlog.add(B, pending(first, 2))
    backlog.add(A, pending(second, 5))
    backlog.add(B, pending(second, 1, start=5))
    key, batch = backlog.take()
    assert key == B and len(batch) == 3
    key, batch = backlog.take()
    assert key == A and len(batch) == 5


def test_put_back_goes_to_the_front_in_order():
    backlog = Backlog()
    owner = Owner()
    backlog.add(A, pending(owner, 5))
    _, batch = backlog.take(limit=3)
    backlog.put_back(A, batch)
    _, again = backlog.take()
    assert [p.index for p in again] == [0, 1, 2, 3, 4]


def test_interactive_records_go_first_and_bulk_fills_the_call():
    backlog = Backlog()
    backlog.add(A, pending(Owner(), 400))
    person = Owner()
    backlog.add(A, pending(person, 2, lane=INTERACTIVE))
    assert backlog.waiting(INTERACTIVE) == 2 and backlog.waiting(BULK) == 400
    _, batch = backlog.take()
    assert len(batch) == 300 and [p.owner for p in batch[:2]] == [person, person]
    assert backlog.oldest_interactive() is None


def test_a_small_request_behind_a_huge_one_shares_the_first_call():
    backlog = Backlog()
    huge, small = Owner(), Owner()
    backlog.add(A, pending(huge, 24_000))
    backlog.add(A, pending(small, 5))
    _, batch = backlog.take()
    assert sum(p.owner is small for p in batch) == 5 and sum(p.owner is huge for p in batch) == 295


def test_producers_share_calls_in_turn_and_their_requests_in_turn():
    backlog = Backlog()
    a1, a2, b = Owner(), Owner(), Owner()
    backlog.add(A, pending(a1, 500, producer="a"))
    backlog.add(A, pending(a2, 500, producer="a"))
    backlog.add(A, pending(b, 500, producer="b"))
    _, batch = backlog.take()
    counts = {o: sum(p.owner is o for p in batch) for o in (a1, a2, b)}
    assert counts == {a1: 75, a2: 75, b: 150}  # half to each producer, producer a's half to its two requests


def test_records_of_finished_requests_are_dropped():
    backlog = Backlog()
    gone, alive = Owner(), Owner()
    backlog.add(A, pending(gone, 3))
    backlog.add(A, pending(alive, 2))
    gone.done = True
    _, batch = backlog.take()
    assert {p.owner for p in batch} == {alive} and len(backlog) == 0


def test_body_and_matching_by_position():
    owner = Owner()
    batch = pending(owner, 3) + pending(owner, 2, start=3, text="teacher")
    texts = distinct_texts(batch)
    assert [len(group) for group in texts.values()] == [1, 1, 1, 2]  # the repeated text once, both records kept
    body = coding_body(list(texts), 5)
    assert body["numberOfSuggestions"] == 5
    assert [r["recordId"] for r in body["records"]] == ["0", "1", "2", "3"]
    answer = [{"recordId": str(i), "codeStatus": "successful", "result": []} for i in range(4)]
    assert match_results(4, answer) == answer
    with pytest.raises(ValueError):
        match_results(4, answer[:2])
    with pytest.raises(ValueError):
        match_results(4, list(reversed(answer)))
    with pytest.raises(ValueError):
        match_results(4, {"message": "oops"})


def test_offending_indexes_from_the_guides_message():
    message = ("There are record(s) outside the min or max char limit: Record with index 4 has a total "
               "text length under 3 min, Record with index 17 has a total text length over 100 max")
    assert offending_indexes(message) == [4, 17]
    assert offending_indexes("Invalid request body") == []


# --- the backlog's invariants, under any sequence of operations --------------------------

from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule  # noqa: E402

KEYS = [A, B, CallKey("anzsco", "m2", 0)]


class BacklogMachine(RuleBasedStateMachine):
    """add / take / put_back / take_key / clear / a request finishing / bisection, in any
    order: the size is the sum of the groups, no group is empty, each group stays in
    arrival order, and no record is lost or duplicated."""

    @initialize()
    def start(self):
        self.backlog = Backlog()
        self.waiting: dict[int, tuple[CallKey, PendingRecord]] = {}  # records of live requests in the backlog
        self.out: list[tuple[CallKey, list[PendingRecord]]] = []  # taken, in a call
        self.owners: list[Owner] = []
        self.added = self.finished = 0

    @rule(key=st.sampled_from(KEYS), n=st.integers(0, 6), text=st.sampled_from([None, "teacher", "nurse"]),
          lane=st.sampled_from([BULK, BULK, INTERACTIVE]), producer=st.sampled_from([None, "p", "q"]))
    def add(self, key, n, text, lane, producer):
        owner = Owner()
        self.owners.append(owner)
        records = pending(owner, n, text=text, lane=lane, producer=producer)  # texts of their own, or repeats
        self.backlog.add(key, records)
        self.waiting.update((id(p), (key, p)) for p in records)
        self.added += n

    @rule(limit=st.integers(1, 8))
    def take(self, limit):
        live_before = self._live_by_key()
        taken = self.backlog.take(limit)
        if taken is None:
            assert not self.waiting, "take() gave nothing while live records wait"
            return
        key, batch = taken
        assert 0 < len({p.record for p in batch}) <= min([limit] + [p.max_call for p in batch])
        urgent = {k: recs for k, recs in live_before.items() if any(p.lane == INTERACTIVE for p in recs)}
        candidates = urgent or live_before
        oldest = min((min(p.seq for p in recs if p.lane == INTERACTIVE or not urgent), k)
                     for k, recs in candidates.items())[1]
        assert key == oldest, "not the key with interactive records waiting, or whose oldest waited longest"
        live = live_before[key]
        firsts = [p for p in live if p.lane == INTERACTIVE]
        took_first = [p for p in batch if p.lane == INTERACTIVE]
        assert batch[:len(took_first)] == took_first == firsts[:len(took_first)], "interactive records not first"
        bulk_taken = batch[len(took_first):]
        assert not bulk_taken or took_first == firsts, "a bulk record went before an interactive one"
        shares = lambda recs: {(p.producer or id(p.owner), id(p.owner)): [q for q in recs if q.owner is p.owner]  # noqa: E731
                               for p in recs if p.lane != INTERACTIVE}
        before, got = shares(live), shares(bulk_taken)
        for share, recs in got.items():
            assert recs == before[share][:len(recs)], "a share's records not taken oldest first"
        producers = {share[0] for share in before}
        taken_by = {pr: sum(len(r) for s, r in got.items() if s[0] == pr) for pr in producers}
        left = {pr for pr in producers if sum(len(r) for s, r in before.items() if s[0] == pr) > taken_by[pr]}
        if left and bulk_taken:
            assert max(taken_by.values()) - min(taken_by[pr] for pr in left) <= 1, "producers not served in turn"
        for p in batch:
            assert not p.owner.done
            del self.waiting[id(p)]
        self.out.append((key, batch))

    @precondition(lambda self: self.out)
    @rule(data=st.data())
    def put_back(self, data):
        key, batch = self.out.pop(data.draw(st.integers(0, len(self.out) - 1)))
        coded = data.draw(st.sets(st.integers(0, len(batch) - 1))) if batch else set()
        back = [p for i, p in enumerate(batch) if i not in coded]  # some were answered, the rest retried
        self.finished += len(batch) - len(back)
        if data.draw(st.booleans()) and len(back) > 1:  # bisection
            half = len(back) // 2
            for i, p in enumerate(back):
                p.max_call = half if i < half else len(back) - half
        self.backlog.put_back(key, back)
        self.waiting.update((id(p), (key, p)) for p in back if not p.owner.done)

    @precondition(lambda self: self.out)
    @rule()
    def call_answered(self):
        key, batch = self.out.pop(0)
        self.finished += len(batch)

    @rule(key=st.sampled_from(KEYS))
    def take_key(self, key):
        removed = self.backlog.take_key(key)
        assert all(k == key for k, _ in (self.waiting[id(p)] for p in removed if id(p) in self.waiting))
        live = {id(p) for p in removed if not p.owner.done}
        assert live == {i for i, (k, _) in self.waiting.items() if k == key}
        for i in live:
            del self.waiting[i]
        self.finished += len(removed)

    @rule(index=st.integers(0, 5))
    def take_if(self, index):
        wanted = lambda p: p.index == index or p.owner.done  # noqa: E731
        removed = self.backlog.take_if(wanted)
        assert all(wanted(p) for p in removed)
        gone = {id(p) for p in removed if not p.owner.done}
        assert gone == {i for i, (_, p) in self.waiting.items() if p.index == index}
        for i in gone:
            del self.waiting[i]
        self.finished += len(removed)

    @rule()
    def clear(self):
        removed = self.backlog.clear()
        assert {id(p) for p in removed if not p.owner.done} == set(self.waiting)
        self.waiting.clear()
        self.finished += len(removed)

    @precondition(lambda self: self.owners)
    @rule(data=st.data())
    def a_request_finishes(self, data):
        owner = data.draw(st.sampled_from(self.owners))
        owner.done = True  # failed or handed back: its waiting records may be dropped
        for i in [i for i, (_, p) in self.waiting.items() if p.owner is owner]:
            del self.waiting[i]

    def _live_by_key(self) -> dict[CallKey, list[PendingRecord]]:
        by_key: dict[CallKey, list[PendingRecord]] = {}
        for key, p in sorted(self.waiting.values(), key=lambda kp: kp[1].seq):
            by_key.setdefault(key, []).append(p)
        return by_key

    @invariant()
    def invariants_hold(self):
        self.backlog.check()  # size == sum of groups, no empty group, arrival order, no duplicates
        inside = {id(p): p for key in self.backlog.keys() for p in self.backlog._groups[key].records()}
        live_inside = {i for i, p in inside.items() if not p.owner.done}
        assert live_inside == set(self.waiting), "a live record was lost from, or appeared in, the backlog"
        assert not set(inside) & {id(p) for _, batch in self.out for p in batch}, "a record is both taken and waiting"


TestBacklogMachine = BacklogMachine.TestCase
TestBacklogMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
