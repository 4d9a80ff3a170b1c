"""Packing records from many requests into calls, and mapping answers back."""

import pytest

from daemon.realtime.backlog import Backlog, CallKey, PendingRecord, coding_body, match_results, offending_indexes
from daemon.request.cleaning import clean

A = CallKey("anzsco", None, 3)
B = CallKey("osca", None, 3)


class Owner:
    def __init__(self):
        self.done = False


def pending(owner, n, start=0):
    return [PendingRecord(owner, start + i, clean(f"job {start + i}", "tasks")) for i in range(n)]


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
    batch = pending(owner, 3)
    body = coding_body(batch, 5)
    assert body["numberOfSuggestions"] == 5
    assert [r["recordId"] for r in body["records"]] == ["0", "1", "2"]
    answer = [{"recordId": str(i), "codeStatus": "successful", "result": []} for i in range(3)]
    assert [p.index for p, _ in match_results(batch, answer)] == [0, 1, 2]
    with pytest.raises(ValueError):
        match_results(batch, answer[:2])
    with pytest.raises(ValueError):
        match_results(batch, list(reversed(answer)))
    with pytest.raises(ValueError):
        match_results(batch, {"message": "oops"})


def test_offending_indexes_from_the_guides_message():
    message = ("There are record(s) outside the min or max char limit: Record with index 4 has a total "
               "text length under 3 min, Record with index 17 has a total text length over 100 max")
    assert offending_indexes(message) == [4, 17]
    assert offending_indexes("Invalid request body") == []
