"""Spooling records for the batch service and mapping its output back, without an API."""

import json
import random

import pytest

from daemon.batch.mapping import NO_RESULT, MappingCounts, batch_result, map_results
from daemon.batch.spool import spool
from daemon.request.inbox import read_local_records
from daemon.request.results import echo_input

CODE = {"codeCategory": "261313", "codeLabel": "Software Engineer", "codeConfidence": 0.9}
SUGGESTIONS = [{"codeCategory": str(n), "codeLabel": f"Label {n}", "codeConfidence": 0.1} for n in range(3)]


def fake_api_line(spooled: dict) -> dict:
    """The batch service's answer to one spooled line: unsuccessful when the text says so."""
    head = {"recordId": spooled["recordId"], "codeStatus": "unsuccessful",
            "input": {"occp_text": spooled["occp_text"], "tasks_text": spooled["tasks_text"]}}
    if "gibberish" in spooled["occp_text"]:
        return {**head, "suggestions": SUGGESTIONS}
    if "broken" in spooled["occp_text"]:
        return {**head, "error": "Record contains characters that are not printable ASCII."}
    return {**head, "codeStatus": "successful", "result": {**CODE, "codeLabel": spooled["occp_text"]}}


def fake_api(summary, job_dir, transform=None) -> list:
    """One output file per spool part; `transform` may reorder/drop the lines of all parts
    (then they are dealt back into files of the same sizes)."""
    per_part = [[json.dumps(fake_api_line(json.loads(line))) for line in part.path.read_text().splitlines()]
                for part in summary.parts]
    if transform is not None:
        lines = transform([line for part in per_part for line in part])
        sizes, per_part = [len(p) for p in per_part], []
        for size in sizes:
            per_part.append(lines[:size])
            lines = lines[size:]
        per_part[-1].extend(lines)
    outputs = []
    for number, lines in enumerate(per_part):
        path = job_dir / f"output-{number:03d}.jsonl"
        path.write_text("".join(line + "\n" for line in lines))
        outputs.append(path)
    return outputs


def collect(manifest, outputs):
    results = []
    counts = map_results(manifest, outputs, results.append)
    return results, counts


INPUT = [
    b'{"recordId": "a", "occp_text": "software developer", "tasks_text": "writing code"}',
    b'{"recordId": "a", "occp_text": "caf\xc3\xa9 owner \xe2\x80\x93 \xe2\x80\x9chead\xe2\x80\x9d", "tasks_text": null}',
    b'{"occp_text": "gibberish xyzzy"}',
    b"",
    b'{"recordId": "42", "occp_text": "' + b"x" * 301 + b'"}',
    b'{"recordId": "empty", "occp_text": "  ", "tasks_text": ""}',
    b'{"recordId": "bad" "occp_text": "chef"}',
    b'["not", "an", "object"]',
    b'{"recordId": "typed", "occp_text": 7}',
    b'{"recordId": "b", "occp_text": "broken thing", "tasks_text": "x"}',
    b'{"recordId": "3.5", "occp_text": "nurse", "tasks_text": "caring for patients"}',
]


@pytest.fixture
def input_file(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(INPUT) + b"\n")
    return path


def check_results(results, counts):
    assert [r["recordId"] for r in results] == ["a", "a", None, "42", "empty", None, None, "typed", "b", "3.5"]
    assert [r["codeStatus"] for r in results] == [
        "successful", "successful", "unsuccessful", "invalid", "invalid", "invalid", "invalid", "invalid",
        "unsuccessful", "successful"]
    # the input as the producer sent it; the API saw the cleaned text
    assert results[1]["input"] == {"occp_text": "caf\u00e9 owner \u2013 \u201chead\u201d", "tasks_text": ""}
    assert results[1]["result"] == [{**CODE, "codeLabel": 'cafe owner - "head"'}]
    assert results[0] == {"recordId": "a", "codeStatus": "successful",
                          "input": {"occp_text": "software developer", "tasks_text": "writing code"},
                          "result": [{**CODE, "codeLabel": "software developer"}], "suggestions": [], "error": None}
    assert results[2]["suggestions"] == SUGGESTIONS and results[2]["result"] == [] and results[2]["error"] is None
    assert results[8]["error"].startswith("Record contains") and results[8]["suggestions"] == []
    assert "301 characters" in results[3]["error"] and results[3]["input"]["occp_text"] == "x" * 301
    assert "0 characters" in results[4]["error"]
    assert results[5]["error"].startswith("line 7 is not valid JSON")
    assert results[5]["input"] == {"occp_text": "", "tasks_text": ""}
    assert results[6]["error"] == "line 8 is not a JSON object: it is array"
    assert results[7]["error"] == "line 9: occp_text must be a string or null, not number"
    assert results[7]["input"] == {"occp_text": "", "tasks_text": ""}
    for r in results:
        assert list(r) == ["recordId", "codeStatus", "input", "result", "suggestions", "error"]
        assert (r["error"] is None) == (r["codeStatus"] == "successful" or bool(r["suggestions"]))
    assert counts == MappingCounts(records=10, successful=3, unsuccessful=2, invalid=5)


def test_round_trip(tmp_path, input_file):
    job = tmp_path / "job"
    summary = spool(read_local_records(input_file), job)
    assert (summary.total, summary.invalid, len(summary.parts)) == (10, 5, 1)
    spooled = [json.loads(line) for line in summary.parts[0].path.read_text().splitlines()]
    assert [s["recordId"] for s in spooled] == ["0", "1", "2", "8", "9"]  # positions; producer ids stay home
    assert spooled[1] == {"recordId": "1", "occp_text": 'cafe owner - "head"', "tasks_text": ""}
    assert summary.parts[0].path.read_bytes().isascii()
    assert summary.parts[0].records == 5 and summary.parts[0].size == summary.parts[0].path.stat().st_size
    manifest = [json.loads(line) for line in summary.manifest.read_text().splitlines()]
    assert len(manifest) == 10 and sum("err" in m for m in manifest) == 5
    results, counts = collect(summary.manifest, fake_api(summary, tmp_path))
    check_results(results, counts)


def test_parts_split_by_size_and_map_back_across_outputs(tmp_path, input_file):
    summary = spool(read_local_records(input_file), tmp_path / "job", max_part_bytes=150)
    assert len(summary.parts) >= 3
    assert all(p.size <= 150 and p.records >= 1 for p in summary.parts)
    assert sum(p.records for p in summary.parts) == 5
    results, counts = collect(summary.manifest, fake_api(summary, tmp_path))
    check_results(results, counts)


def many_records(n):
    return [({"recordId": f"id{i % 7}", "occp_text": "gibberish" if i % 5 == 0 else f"job {i}",
              "tasks_text": "t" * (i % 40)}, None) if i % 11 else ({"occp_text": ""}, None) for i in range(n)]


def expected_for(n):
    statuses = []
    for i in range(n):
        statuses.append("invalid" if i % 11 == 0 else "unsuccessful" if i % 5 == 0 else "successful")
    return statuses


def test_many_parts_line_up(tmp_path):
    summary = spool(many_records(200), tmp_path / "job", max_part_bytes=300)
    assert len(summary.parts) > 10 and all(p.size <= 300 for p in summary.parts)
    results, counts = collect(summary.manifest, fake_api(summary, tmp_path))
    assert [r["codeStatus"] for r in results] == expected_for(200)
    assert [r["recordId"] for r in results] == [f"id{i % 7}" if i % 11 else None for i in range(200)]
    ok = [r for r in results if r["codeStatus"] == "successful"]
    assert all(r["result"][0]["codeLabel"] == r["input"]["occp_text"] for r in ok)
    assert counts.records == 200 and counts.invalid == 19


@pytest.mark.parametrize("transform", [
    lambda lines: lines[::-1],
    lambda lines: random.Random(7).sample(lines, len(lines)),
    lambda lines: lines[:5] + [lines[6], lines[5]] + lines[7:],
])
def test_reordered_output_still_maps(tmp_path, transform):
    summary = spool(many_records(200), tmp_path / "job", max_part_bytes=1000)
    results, counts = collect(summary.manifest, fake_api(summary, tmp_path, transform))
    assert [r["codeStatus"] for r in results] == expected_for(200)
    ok = [r for r in results if r["codeStatus"] == "successful"]
    assert all(r["result"][0]["codeLabel"] == r["input"]["occp_text"] for r in ok)
    assert counts.invalid == 19


@pytest.mark.parametrize("drop", [0, 37, -1])
def test_a_missing_api_line_is_invalid_at_its_position_only(tmp_path, drop):
    summary = spool(many_records(100), tmp_path / "job", max_part_bytes=500)
    lost = {}

    def without_one(lines):
        lost["line"] = json.loads(lines[drop])
        return lines[:drop] + lines[drop + 1:] if drop != -1 else lines[:-1]

    results, counts = collect(summary.manifest, fake_api(summary, tmp_path, without_one))
    position = int(lost["line"]["recordId"])
    expected = expected_for(100)
    expected[position] = "invalid"
    assert [r["codeStatus"] for r in results] == expected
    assert results[position]["error"] == NO_RESULT and results[position]["recordId"] == f"id{position % 7}"
    ok = [r for r in results if r["codeStatus"] == "successful"]
    assert all(r["result"][0]["codeLabel"] == r["input"]["occp_text"] for r in ok)
    assert counts.invalid == 10 + 1 and counts.records == 100


def test_garbage_and_duplicates_in_the_output(tmp_path):
    summary = spool(many_records(30), tmp_path / "job")
    outputs = fake_api(summary, tmp_path, lambda lines: ["not json", lines[3]] + lines + ["", lines[0]])
    results, _ = collect(summary.manifest, outputs)
    assert [r["codeStatus"] for r in results] == expected_for(30)


def test_all_invalid_gives_no_parts(tmp_path):
    summary = spool([({"occp_text": ""}, None), ("junk", "line 2 is not valid JSON: x")], tmp_path / "job")
    assert summary.parts == [] and summary.total == 2 and summary.invalid == 2
    assert not list((tmp_path / "job").glob("spool-*"))
    results, counts = collect(summary.manifest, [])
    assert [r["codeStatus"] for r in results] == ["invalid", "invalid"] and counts.invalid == 2


def test_respooling_removes_stale_parts(tmp_path):
    job = tmp_path / "job"
    assert len(spool(many_records(100), job, max_part_bytes=300).parts) > 3
    summary = spool(many_records(5), job, max_part_bytes=300)
    assert sorted(job.glob("spool-*")) == [p.path for p in summary.parts]


def test_a_failing_input_leaves_no_spool(tmp_path):
    def records():
        yield {"occp_text": "chef"}, None
        raise OSError("disk gone")

    with pytest.raises(OSError):
        spool(records(), tmp_path / "job", max_part_bytes=10)
    assert list((tmp_path / "job").iterdir()) == []


@pytest.mark.parametrize("raw", [
    {"occp_text": "caf\u00e9", "tasks_text": None}, {"occp_text": 5, "tasks_text": "cooking"},
    {"tasks_text": "only tasks"}, "a string", None, [1], {"recordId": [1], "occp_text": "chef"},
    {"occp_text": "\ud800 lone", "tasks_text": "x\u2028y"},
])
def test_manifest_echo_is_echo_input(tmp_path, raw):
    summary = spool([(raw, None)], tmp_path / "job")
    entry = json.loads(summary.manifest.read_text())
    assert entry["in"] == echo_input(raw)


def test_batch_result_shapes():
    entry = {"id": "r1", "in": {"occp_text": "chef", "tasks_text": ""}}
    ok = batch_result(entry, {"recordId": "0", "codeStatus": "successful", "result": CODE})
    assert ok == {"recordId": "r1", "codeStatus": "successful", "input": entry["in"], "result": [CODE],
                  "suggestions": [], "error": None}
    no = batch_result(entry, {"recordId": "0", "codeStatus": "unsuccessful", "suggestions": SUGGESTIONS})
    assert (no["codeStatus"], no["result"], no["suggestions"], no["error"]) == ("unsuccessful", [], SUGGESTIONS, None)
    err = batch_result(entry, {"recordId": "0", "error": "Invalid JSON data format."})
    assert (err["codeStatus"], err["suggestions"], err["error"]) == ("unsuccessful", [], "Invalid JSON data format.")
    odd = batch_result(entry, {"recordId": "0", "codeStatus": "successful"})
    assert odd["codeStatus"] == "unsuccessful" and odd["error"]
    bad = batch_result({**entry, "err": "too long"}, {"codeStatus": "successful", "result": CODE})
    assert (bad["codeStatus"], bad["result"], bad["error"]) == ("invalid", [], "too long")
    assert batch_result(entry, None)["error"] == NO_RESULT
