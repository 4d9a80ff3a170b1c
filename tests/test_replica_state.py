"""The replicated state's rules without a broker: folding the stream's entries, cutting
files into chunks, and rebuilding a job's spool on another host exactly as it was."""

import io
import json

from hypothesis import given
from hypothesis import strategies as st

from daemon.batch.cached import CACHED_NAME, rebuild_parts, take_cached
from daemon.batch.journal import Job, Part
from daemon.batch.spool import spool
from daemon.replica.adopt import read_view
from daemon.replica.entries import CACHED, DONE, INPUT, JOB, QUOTA, SharedView, chunks, fold

JOB_IDS = st.sampled_from(["a", "b", "c"])
ENTRY = st.one_of(
    st.tuples(st.just(JOB), JOB_IDS, st.integers(0, 20)),
    st.tuples(st.just(INPUT), JOB_IDS, st.integers(0, 3)),
    st.tuples(st.just(CACHED), JOB_IDS, st.integers(0, 3)),
    st.tuples(st.just(DONE), JOB_IDS, st.just(0)),
    st.tuples(st.just(QUOTA), st.sampled_from(["2026-11-28", "2026-11-29"]), st.integers(0, 10_000)),
)


def replay(entries) -> SharedView:
    view = SharedView()
    for offset, (kind, key, number) in enumerate(entries):
        if kind == QUOTA:
            fold(view, kind, {}, json.dumps({"day": key, "used": number}).encode(), offset)
        elif kind == JOB:
            fold(view, kind, {"job_id": key.encode()}, json.dumps({"job_id": key, "revision": number}).encode(), offset)
        else:
            fold(view, kind, {"job_id": key, "seq": number}, b"", offset)
    return view


@given(st.lists(ENTRY, max_size=60))
def test_the_view_is_what_the_entries_say(entries):
    view = replay(entries)
    for job_id in "abc":
        mine = [(offset, kind, n) for offset, (kind, key, n) in enumerate(entries) if key == job_id and kind != QUOTA]
        last_done = max((offset for offset, kind, _ in mine if kind == DONE), default=-1)
        after = [(offset, kind, n) for offset, kind, n in mine if offset > last_done]
        # Finished, unless journaled again after its last "done"; unknown if never seen.
        assert (job_id in view.finished) == (last_done >= 0 and not after)
        assert (job_id in view.jobs) == bool(after)
        if after:
            shared = view.jobs[job_id]
            revisions = [n for _, kind, n in after if kind == JOB]
            # the highest revision wins, whatever order the entries came in
            assert shared.revision == (max(revisions) if revisions else 0)
            assert (shared.record is None) == (not revisions)
            for kind, start in ((INPUT, shared.input_from), (CACHED, shared.cached_from)):
                firsts = [offset for offset, k, n in after if k == kind and n == 0]
                assert start == (firsts[-1] if firsts else None)  # the latest rewrite of the file
    for day in ("2026-11-28", "2026-11-29"):
        counts = [n for kind, key, n in entries if kind == QUOTA and key == day]
        assert view.quota.get(day) == (max(counts) if counts else None)  # a count never goes back


def test_entries_from_a_newer_version_are_left_alone():
    view = SharedView()
    fold(view, "something-new", {"job_id": "a"}, b"?", 0)
    assert view == SharedView()


class StreamOf:
    """A state stream's read-back, without a broker: these entries, in this order."""

    def __init__(self, entries) -> None:
        self.entries = entries

    async def read(self, handler, offset="first") -> None:
        for position, (kind, headers, body) in enumerate(self.entries):
            handler(kind, headers, body, position)


async def test_an_unreadable_entry_is_passed_over_and_the_rest_taken(quiet_logs):
    view = await read_view(StreamOf([
        (QUOTA, {}, b"not json"),
        (JOB, {}, json.dumps({"job_id": "a"}).encode()),  # no job_id header
        (QUOTA, {}, json.dumps({"day": "2026-11-29"}).encode()),  # no count
        (JOB, {"job_id": "b"}, b"\xff"),
        (JOB, {"job_id": "d"}, b"[1, 2]"),  # JSON, but not an object
        (JOB, {"job_id": "c"}, json.dumps({"job_id": "c", "revision": 2}).encode()),
        (QUOTA, {}, json.dumps({"day": "2026-11-29", "used": 7}).encode()),
    ]))
    assert list(view.jobs) == ["c"] and view.jobs["c"].revision == 2
    assert view.quota == {"2026-11-29": 7}
    assert quiet_logs.getvalue().count("state_entry_unreadable") == 5


@given(st.binary(max_size=5000), st.integers(1, 700))
def test_chunks_put_together_give_the_file_back(data, size):
    pieces = list(chunks(io.BytesIO(data), size))
    assert b"".join(piece for _, piece in pieces) == data
    assert [seq for seq, _ in pieces] == list(range(len(pieces)))
    assert all(len(piece) == size for _, piece in pieces[:-1]) and len(pieces[-1][1]) <= size
    assert pieces and (len(pieces) == 1 or pieces[-1][1])  # never an empty tail piece, one piece at least


class FakeCache:
    def __init__(self, known: set[str]) -> None:
        self.known = known

    async def lookup(self, keys):
        return {key: {"cached": key.occp_text} for key in keys if key.occp_text in self.known}


def records(n):
    return [({"recordId": f"r{i}", "occp_text": f"text {i % 50}", "tasks_text": "tasks"}, None) for i in range(n)]


async def test_a_spool_rebuilt_on_another_host_is_the_one_uploaded(tmp_path):
    first, second = tmp_path / "host-a", tmp_path / "host-b"
    summary = spool(records(400), first, max_part_bytes=6000)
    job = Job.new(correlation_id="c", reply_to=None, topic="anzsco", model="m", kind="records")
    job.parts = [Part(p.path.name, p.records, p.size) for p in summary.parts]
    taken = await take_cached(job, first, FakeCache({"text 3", "text 7"} | {f"text {i}" for i in range(20, 50)}),
                              "m")
    assert taken and len(job.parts) < len(summary.parts)  # some parts were answered whole

    second.mkdir()  # what the state stream gives the other host: the records and cached.jsonl
    (second / CACHED_NAME).write_bytes((first / CACHED_NAME).read_bytes())
    rebuilt = rebuild_parts(lambda: spool(records(400), second, max_part_bytes=6000), second)

    assert [(p.spool, p.records, p.size) for p in rebuilt] == [(p.spool, p.records, p.size) for p in job.parts]
    for part in job.parts:
        assert (second / part.spool).read_bytes() == (first / part.spool).read_bytes()
    assert (second / CACHED_NAME).read_bytes() == (first / CACHED_NAME).read_bytes()
    assert (second / "manifest.jsonl").read_bytes() == (first / "manifest.jsonl").read_bytes()


def test_a_changed_input_does_not_rebuild_the_same_parts(tmp_path):
    original = spool(records(100), tmp_path / "a")
    rebuilt = rebuild_parts(lambda: spool(records(99), tmp_path / "b"), tmp_path / "b")
    assert [(p.records, p.size) for p in rebuilt] != [(p.records, p.size) for p in original.parts]
