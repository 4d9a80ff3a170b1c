"""`coderd convert`: the guide's section-6 CSV from coding-API batch output and coderd RecordResults."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from daemon.tools import convert
from daemon.tools.convert import CSV_COLUMNS, convert_file, flatten

ROOT = Path(__file__).resolve().parents[1]

# The guide's bash+jq script echoes this header (integration examples, section 6).
JQ_HEADER = ("recordId,codeStatus,error,input.occp_text,input.tasks_text,result.codeCategory,result.codeLabel,"
             "result.codeConfidence,suggestions_1.codeCategory,suggestions_1.codeLabel,suggestions_1.codeConfidence,"
             "suggestions_2.codeCategory,suggestions_2.codeLabel,suggestions_2.codeConfidence,"
             "suggestions_3.codeCategory,suggestions_3.codeLabel,suggestions_3.codeConfidence")

# Integration examples, section 6, "Example output from coding service (JSONL)", verbatim.
GUIDE_EXAMPLE = (
    '{ "recordId": "1", "codeStatus": "successful", "input": { "occp_text": "software developer", "tasks_text": '
    '"writing code and unit tests" }, "result": { "codeCategory": "261313", "codeLabel": "Software Engineer", '
    '"codeConfidence": 0.98 } }\n'
    '{ "recordId": "2", "codeStatus": "unsuccessful", "input": { "occp_text": "Paramedic", "tasks_text": '
    '"responding to medical emergencies" }, "suggestions": [ { "codeCategory": "411111", "codeLabel": '
    '"Ambulance Officer", "codeConfidence": 0.26 }, { "codeCategory": "411112", "codeLabel": '
    '"Intensive Care Ambulance Paramedic", "codeConfidence": 0.24 } ] }\n'
    '{ "recordId": "unknown", "codeStatus": "unsuccessful", "input": "this is not json", "error": "invalid JSON" }\n'
)

# User guide, "Downloading processed data…", the response to input with no record identifier, verbatim
# (trailing spaces included).
GUIDE_NO_RECORD_ID = (
    '{ "recordId": null, "codeStatus" : "successful" , "input" : { "occp_text" : "software developer" , '
    '"tasks_text" : "writing code and unit tests" } , "result": { "codeCategory": "261313", "codeLabel": '
    '"Software Engineer", "codeConfidence": 0.98 } }  \n'
    '{ "id": null, "codeStatus" : "unsuccessful" , "input" : { "occp_text" : "Paramedic" , "tasks_text" : '
    '"responding to medical emergencies" } , "suggestions": [ { "codeCategory": "411111", "codeLabel": '
    '"Ambulance Officer", "codeConfidence": 0.26 } , { "codeCategory": "411112", "codeLabel": '
    '"Intensive Care Ambulance Paramedic", "codeConfidence": 0.24 } ] }  \n'
    '{ "recordId": "unknown", "codeStatus": "unsuccessful", "input": "this is not a json string", '
    '"error": "Invalid JSON data format." }\n'
)

# "Converted CSV as shown in a spreadsheet", first block of columns, as the guide prints it.
GUIDE_TABLE = """\
recordId\tcodeStatus\terror\tinput.occp_text\tinput.tasks_text\tresult.codeCategory\tresult.codeLabel
1\tsuccessful\t\tsoftware developer\twriting code and unit tests\t261313\tSoftware Engineer
2\tunsuccessful\t\tParamedic\tresponding to medical emergencies\t\t
unknown\tunsuccessful\tinvalid JSON\t\t\t\t"""

# The remaining ten columns. The guide's printed continuation blocks are garbled by its word
# processor (row 1 shows "Software Engineer" under suggestions_2.codeCategory; row 2's second
# suggestion is missing and its first is repeated under suggestions_2/3); these are the values
# all four of its scripts compute (PowerShell, JavaScript, jq: checked by hand; pandas drops the
# missing columns), which agree with the table wherever the table is legible.
GUIDE_REST = [
    ["0.98", "", "", "", "", "", "", "", "", ""],
    ["", "411111", "Ambulance Officer", "0.26", "411112", "Intensive Care Ambulance Paramedic", "0.24", "", "", ""],
    ["", "", "", "", "", "", "", "", "", ""],
]


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def convert_text(tmp_path: Path, text: str | bytes, **kwargs) -> tuple[list[list[str]], tuple[int, int]]:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.csv"
    source.write_bytes(text.encode() if isinstance(text, str) else text)
    counts = convert_file(source, target, **kwargs)
    return read_csv(target), counts


def test_columns_are_the_jq_scripts_header():
    assert ",".join(CSV_COLUMNS) == JQ_HEADER
    assert len(CSV_COLUMNS) == 17


def test_guide_example_converts_to_the_guides_table(tmp_path):
    rows, counts = convert_text(tmp_path, GUIDE_EXAMPLE)
    assert counts == (3, 0)
    table = [line.split("\t") for line in GUIDE_TABLE.split("\n")]
    assert rows[0][:7] == table[0]
    assert [row[:7] for row in rows[1:]] == table[1:]
    assert [row[7:] for row in rows[1:]] == GUIDE_REST
    assert (tmp_path / "out.csv").read_bytes().startswith(JQ_HEADER.encode() + b"\n")


def test_guide_example_without_record_ids(tmp_path):
    rows, counts = convert_text(tmp_path, GUIDE_NO_RECORD_ID)
    assert counts == (3, 0)
    assert [row[:3] for row in rows[1:]] == [["", "successful", ""], ["", "unsuccessful", ""],
                                             ["unknown", "unsuccessful", "Invalid JSON data format."]]
    assert rows[1][3:8] == ["software developer", "writing code and unit tests", "261313", "Software Engineer", "0.98"]
    assert rows[2][8:14] == ["411111", "Ambulance Officer", "0.26", "411112", "Intensive Care Ambulance Paramedic", "0.24"]
    assert rows[3][3:] == [""] * 14


def test_flatten_coderd_record_results():
    successful = {"recordId": "r1", "codeStatus": "successful",
                  "input": {"occp_text": "software developer", "tasks_text": "writing code and unit tests"},
                  "result": [{"codeCategory": "261313", "codeLabel": "Software Engineer", "codeConfidence": 0.61},
                             {"codeCategory": "261312", "codeLabel": "Developer Programmer", "codeConfidence": 0.2}],
                  "suggestions": [], "error": None}
    assert flatten(successful) == ["r1", "successful", "", "software developer", "writing code and unit tests",
                                   "261313", "Software Engineer", "0.61"] + [""] * 9
    codes = [{"codeCategory": str(411110 + i), "codeLabel": f"L{i}", "codeConfidence": 0.3 - i / 10} for i in range(4)]
    unsuccessful = {"recordId": 7, "codeStatus": "unsuccessful", "input": {"occp_text": "Paramedic", "tasks_text": ""},
                    "result": [], "suggestions": codes, "error": None}
    assert flatten(unsuccessful) == ["7", "unsuccessful", "", "Paramedic", "", "", "", "",
                                     "411110", "L0", "0.3", "411111", "L1", "0.19999999999999998",
                                     "411112", "L2", "0.09999999999999998"]
    invalid = {"recordId": None, "codeStatus": "invalid", "input": {"occp_text": "ab", "tasks_text": ""},
               "result": [], "suggestions": [], "error": "text length 2 is outside 3-100 for sync"}
    assert flatten(invalid) == ["", "invalid", "text length 2 is outside 3-100 for sync", "ab"] + [""] * 13


def test_flatten_cells_follow_jq():
    line = {"recordId": 12, "codeStatus": "successful", "input": {"occp_text": None, "tasks_text": "x"},
            "result": {"codeCategory": 261313, "codeLabel": False, "codeConfidence": 1.0},
            "suggestions": [{"codeConfidence": 0}, None, {"codeConfidence": 1e-05}],
            "error": {"code": "upstream_error", "message": "the API said no"}}
    assert flatten(line) == ["12", "successful", "the API said no", "", "x", "261313", "", "1.0",
                             "", "", "0", "", "", "", "", "", "1e-05"]


@pytest.mark.parametrize("line", [
    {}, {"result": "x", "suggestions": {"a": 1}, "input": ["a"]}, {"result": [None], "suggestions": [[1], "s"]},
    {"recordId": {"a": [1, "b"]}, "input": {"occp_text": ["x"]}},
])
def test_flatten_never_raises_on_odd_shapes(line):
    row = flatten(line)
    assert len(row) == 17 and all(isinstance(cell, str) for cell in row)


def test_round_trip_with_awkward_text_and_a_malformed_line(tmp_path):
    awkward = 'a "quoted", comma\nnewline\r\nand a lone\rcarriage return, café ✓'
    lines = [
        json.dumps({"recordId": "a", "codeStatus": "successful", "input": {"occp_text": awkward, "tasks_text": "t"},
                    "result": [{"codeCategory": "1", "codeLabel": "L, \"x\"", "codeConfidence": 0.5}]}),
        '{"recordId": "b", "codeStatus": "successful", "input": {"occp_text": "tr',  # cut short
        "",  # blank: skipped
        "[1, 2]",
        json.dumps({"recordId": "c", "codeStatus": "unsuccessful", "input": {"occp_text": "o", "tasks_text": "t"},
                    "suggestions": [{"codeCategory": "2", "codeLabel": "M", "codeConfidence": 0.25}]}),
    ]
    rows, counts = convert_text(tmp_path, "\r\n".join(lines))  # CRLF line ends, no final newline
    assert counts == (4, 2)
    assert rows[0] == CSV_COLUMNS
    assert all(len(row) == 17 for row in rows)
    assert rows[1][:7] == ["a", "successful", "", awkward, "t", "1", 'L, "x"']
    assert rows[2][:2] == ["", "invalid"] and rows[2][2].startswith("line 2: not valid JSON")
    assert rows[3][:3] == ["", "invalid", "line 4: not a JSON object but an array"]
    assert rows[4][:2] == ["c", "unsuccessful"] and rows[4][8:11] == ["2", "M", "0.25"]


def test_bad_utf8_is_replaced_not_fatal(tmp_path):
    line = b'{"recordId": "x\xff", "codeStatus": "successful"}\n'
    rows, counts = convert_text(tmp_path, line)
    assert counts == (1, 0)
    assert rows[1][:2] == ["x\ufffd", "successful"]


def test_workers_give_the_same_bytes_and_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "BLOCK_BYTES", 300)  # many blocks
    good = GUIDE_EXAMPLE.splitlines()
    lines = [good[i % 3] if i % 17 else "oops" for i in range(1, 400)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    assert convert_file(source, tmp_path / "one.csv", jobs=1) == (399, 23)
    assert convert_file(source, tmp_path / "two.csv", jobs=2) == (399, 23)
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()
    errors = [row[2] for row in read_csv(tmp_path / "two.csv")[1:] if row[1] == "invalid"]
    assert errors[:2] == ["line 17: not valid JSON (Expecting value)", "line 34: not valid JSON (Expecting value)"]


def test_failure_leaves_no_partial_output(tmp_path, monkeypatch):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.csv"
    source.write_text(GUIDE_EXAMPLE)
    target.write_text("previous\n")

    def boom(first, block):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(convert, "convert_block", boom)
    with pytest.raises(RuntimeError):
        convert_file(source, target, jobs=1)
    assert target.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.csv"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_memory_does_not_grow_with_the_file(tmp_path, monkeypatch, jobs):
    monkeypatch.setattr(convert, "BLOCK_BYTES", 64 << 10)
    one = GUIDE_EXAMPLE.splitlines()[1] + "\n"
    source = tmp_path / "big.jsonl"
    source.write_text(one * 30_000)  # about 11 MB
    tracemalloc.start()
    try:
        assert convert_file(source, tmp_path / "big.csv", jobs=jobs) == (30_000, 0)
        peak = tracemalloc.get_traced_memory()[1]  # this process's: with workers, the blocks in flight
    finally:
        tracemalloc.stop()
    assert peak < 3_000_000, peak  # a few blocks' worth, not the file


def test_a_lone_carriage_return_is_quoted(tmp_path):
    rows, _ = convert_text(tmp_path, '{"recordId": "a\\rb", "codeStatus": "successful"}\n')
    assert rows[1][:2] == ["a\rb", "successful"]


def test_stdout_and_main_directly(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text(GUIDE_EXAMPLE)
    parser = __import__("argparse").ArgumentParser()
    convert.add_convert_arguments(parser)
    assert convert.convert_main(parser.parse_args([str(source), "-o", "-"])) == 0
    out, err = capsys.readouterr()
    assert list(csv.reader(io.StringIO(out)))[3][:3] == ["unknown", "unsuccessful", "invalid JSON"]
    assert "3 rows written to stdout, 0 malformed lines" in err
    assert convert.convert_main(parser.parse_args([str(tmp_path / "missing.jsonl")])) == 2
    assert convert.convert_main(parser.parse_args([str(source), "-o", str(source)])) == 2
    assert source.read_text() == GUIDE_EXAMPLE


def test_cli_subprocess(tmp_path):
    source = tmp_path / "batch-output.jsonl"
    source.write_text(GUIDE_EXAMPLE + "this is not json either\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "daemon", "convert", str(source), "-o", str(tmp_path / "o.csv")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"coderd convert: 4 rows written to {tmp_path / 'o.csv'}, 1 malformed lines")
    rows = read_csv(tmp_path / "o.csv")
    assert rows[0] == CSV_COLUMNS and rows[3][0] == "unknown"
    assert rows[4][:3] == ["", "invalid", "line 4: not valid JSON (Expecting value)"]
    done = subprocess.run([sys.executable, "-m", "daemon", "convert", str(source)],  # default: beside it, .csv
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert read_csv(tmp_path / "batch-output.csv") == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch-output.csv", "batch-output.jsonl", "o.csv"]


def test_a_pipe_is_written_in_place_not_renamed_over(tmp_path):
    import stat
    source, fifo = tmp_path / "in.jsonl", tmp_path / "out.fifo"
    source.write_text(GUIDE_EXAMPLE)
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that the writer's open does not block
    try:
        assert convert_file(source, fifo) == (3, 0)
        data = os.read(reader, 1 << 16).decode()
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert data.startswith(JQ_HEADER + "\n") and data.count("\n") == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.fifo"]


def test_a_symlinked_target_keeps_its_link(tmp_path):
    source, real, link = tmp_path / "in.jsonl", tmp_path / "real.csv", tmp_path / "link.csv"
    source.write_text(GUIDE_EXAMPLE)
    real.write_text("old\n")
    link.symlink_to(real)
    assert convert_file(source, link) == (3, 0)
    assert link.is_symlink() and read_csv(real)[0] == CSV_COLUMNS
