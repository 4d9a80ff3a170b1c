"""Claim-check files: paths inside the inbox/outbox, opening inputs, reading records,
atomic output. (Races against a producer swapping inbox entries: test_inbox_races.py.)"""

import json
import os
import threading

import pytest

from daemon.durable import AtomicFile
from daemon.request import inbox as inbox_module
from daemon.request import records as records_module
from daemon.request.claimcheck import ClaimCheckError, default_output_name, resolve_inside
from daemon.request.inbox import check_input, open_input, read_local_records, read_records


def read(path):
    """Every (raw, error) of a file, opened the way the daemon opens inbox files."""
    with open_input(path.parent, path.name) as opened:
        return list(read_records(opened))


@pytest.fixture
def inbox(tmp_path):
    box = tmp_path / "inbox"
    box.mkdir()
    (box / "ok.jsonl").write_text('{"occp_text": "chef"}\n')
    (box / "census").mkdir()
    (box / "census" / "sample.jsonl").write_text('{"occp_text": "chef"}\n')
    (tmp_path / "secret.jsonl").write_text("outside\n")
    return box


# --- resolve_inside ---------------------------------------------------------------------

def test_resolve_inside_accepts_files_in_the_directory_and_below(inbox):
    assert resolve_inside(inbox, "ok.jsonl", must_exist=True) == (inbox / "ok.jsonl").resolve()
    assert resolve_inside(inbox, "census/sample.jsonl", must_exist=True) == (inbox / "census/sample.jsonl").resolve()
    # a harmless '..' that stays inside is fine
    assert resolve_inside(inbox, "census/../ok.jsonl", must_exist=True) == (inbox / "ok.jsonl").resolve()
    # outputs need not exist, nor their directories
    assert resolve_inside(inbox, "new/dir/out.jsonl", must_exist=False) == (inbox / "new/dir/out.jsonl").resolve()


@pytest.mark.parametrize("name", ["", "   ", "/etc/passwd", "../secret.jsonl", "a/../../secret.jsonl",
                                  "census/../../secret.jsonl", ".", "census/..", "ok\x00.jsonl"])
def test_resolve_inside_refuses_leaving_the_directory(inbox, name):
    with pytest.raises(ClaimCheckError) as caught:
        resolve_inside(inbox, name, must_exist=False)
    assert caught.value.code == "path_not_allowed"
    assert str(inbox) not in caught.value.message and str(inbox.parent) not in caught.value.message


def test_resolve_inside_refuses_a_symlink_pointing_out(inbox):
    (inbox / "link.jsonl").symlink_to(inbox.parent / "secret.jsonl")
    (inbox / "linkdir").symlink_to(inbox.parent)
    (inbox / "dangling.jsonl").symlink_to(inbox.parent / "nothing-yet.jsonl")
    for name, must_exist in [("link.jsonl", True), ("linkdir/secret.jsonl", True), ("dangling.jsonl", False)]:
        with pytest.raises(ClaimCheckError) as caught:
            resolve_inside(inbox, name, must_exist=must_exist)
        assert caught.value.code == "path_not_allowed", name
    # a symlink that stays inside is followed
    (inbox / "alias.jsonl").symlink_to(inbox / "ok.jsonl")
    assert resolve_inside(inbox, "alias.jsonl", must_exist=True) == (inbox / "ok.jsonl").resolve()


def test_resolve_inside_missing_input(inbox):
    for name in ["missing.jsonl", "census"]:  # absent, or not a regular file
        with pytest.raises(ClaimCheckError) as caught:
            resolve_inside(inbox, name, must_exist=True)
        assert caught.value.code == "input_not_found"
        assert name in caught.value.message and str(inbox) not in caught.value.message


def test_default_output_name():
    assert default_output_name("census/sample.jsonl") == "census/sample.coded.jsonl"
    assert default_output_name("a.csv") == "a.coded.jsonl"
    assert default_output_name("noext") == "noext.coded.jsonl"


# --- open_input ---------------------------------------------------------------------------

@pytest.fixture(params=["proc", "no-proc"])
def proc(request, monkeypatch):
    """Both ways of checking what was opened: /proc/self/fd, and O_NOFOLLOW per component."""
    if request.param == "no-proc":
        monkeypatch.setattr(inbox_module, "_PROC_FD", "/nonexistent/fd")
    return request.param


def opened_text(inbox, name):
    with open_input(inbox, name) as opened:
        return opened.file.read().decode()


def refused(inbox, name):
    with pytest.raises(ClaimCheckError) as caught:
        open_input(inbox, name)
    message = caught.value.message
    assert str(inbox) not in message and str(inbox.parent) not in message and "outside\n" not in message
    return caught.value


def test_open_input_opens_files_in_the_inbox_and_below(inbox, proc):
    assert opened_text(inbox, "ok.jsonl") == '{"occp_text": "chef"}\n'
    assert opened_text(inbox, "census/sample.jsonl") == '{"occp_text": "chef"}\n'
    assert opened_text(inbox, "census/../ok.jsonl") == opened_text(inbox, "./census//sample.jsonl")
    with open_input(inbox, "ok.jsonl") as opened:
        assert opened.name == "ok.jsonl" and not opened.is_csv
        assert os.get_blocking(opened.file.fileno())  # O_NONBLOCK cleared for reading
    assert opened.file.closed


@pytest.mark.parametrize("name", ["", "   ", "/etc/passwd", "../secret.jsonl", "a/../../secret.jsonl",
                                  "census/../../secret.jsonl", ".", "census/..", "ok\x00.jsonl",
                                  "../inbox/ok.jsonl"])
def test_open_input_refuses_names_leaving_the_inbox(inbox, proc, name):
    assert refused(inbox, name).code == "path_not_allowed"


def test_open_input_refuses_symlinks_out_and_follows_those_inside(inbox, proc):
    (inbox / "link.jsonl").symlink_to(inbox.parent / "secret.jsonl")
    (inbox / "linkdir").symlink_to(inbox.parent)
    (inbox / "dangling.jsonl").symlink_to(inbox.parent / "nothing-yet.jsonl")
    (inbox / "loop.jsonl").symlink_to(inbox / "loop.jsonl")
    for name in ["link.jsonl", "linkdir/secret.jsonl", "linkdir/missing.jsonl", "dangling.jsonl", "loop.jsonl"]:
        assert refused(inbox, name).code == "path_not_allowed", name  # missing or not: outside says nothing
    (inbox / "alias.jsonl").symlink_to(inbox / "ok.jsonl")
    (inbox / "alias.csv").symlink_to("census/sample.jsonl")
    if proc == "proc":  # a symlink that stays inside is followed; '.csv' is the name's
        assert opened_text(inbox, "alias.jsonl") == opened_text(inbox, "ok.jsonl")
        with open_input(inbox, "alias.csv") as opened:
            assert opened.is_csv
    else:  # where the opened file's path cannot be read back, no symlink is followed
        assert refused(inbox, "alias.jsonl").code == "path_not_allowed"
        (inbox / "sub").symlink_to("census")
        assert refused(inbox, "sub/sample.jsonl").code == "path_not_allowed"


def test_open_input_missing_or_not_a_regular_file(inbox, proc):
    os.mkfifo(inbox / "fifo.jsonl")
    for name, says in [("missing.jsonl", "does not exist"), ("census/missing.jsonl", "does not exist"),
                       ("ok.jsonl/x", "does not exist"), ("census", "is not a regular file"),
                       ("fifo.jsonl", "is not a regular file")]:
        error = refused(inbox, name)
        assert error.code == "input_not_found" and error.message == f"file {name!r} {says}"
    assert refused(inbox.parent / "no-inbox", "a.jsonl").code == "input_not_found"


def test_opening_a_fifo_never_waits_for_a_writer(inbox):
    os.mkfifo(inbox / "fifo.jsonl")
    outcome = []
    opener = threading.Thread(target=lambda: outcome.append(refused(inbox, "fifo.jsonl").code), daemon=True)
    opener.start()
    opener.join(5)
    if opener.is_alive():  # release it before failing
        os.close(os.open(inbox / "fifo.jsonl", os.O_WRONLY | os.O_NONBLOCK))
    assert outcome == ["input_not_found"]


def test_check_input_and_local_files(inbox, tmp_path):
    check_input(inbox, "ok.jsonl")
    with pytest.raises(ClaimCheckError):
        check_input(inbox, "../secret.jsonl")
    records = read_local_records(tmp_path / "secret.jsonl")  # the operator's own file: no inbox
    assert next(records) == ("outside", "line 1 is not valid JSON: Expecting value at column 1")
    records.close()
    with pytest.raises(ClaimCheckError) as caught:
        read_local_records(inbox / "census")
    assert caught.value.code == "input_not_found"


# --- read_records -----------------------------------------------------------------------

def test_jsonl_malformed_lines_keep_their_position_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"recordId": "a", "occp_text": "chef", "tasks_text": "cooking"}\n'
                     b"\n   \n"
                     b"not json\n"
                     b"[1, 2]\n"
                     b'{"occp_text": 5}\n'
                     b'{"recordId": ["x"]}\n'
                     b'{"recordId": NaN}\n'
                     b'{"recordId": 7, "occp_text": null}\r\n'
                     b'{"occp_text": "caf\xff"}\n'
                     b'{"tasks_text": "last, no newline"}')
    items = read(path)
    assert len(items) == 9
    assert items[0] == ({"recordId": "a", "occp_text": "chef", "tasks_text": "cooking"}, None)
    assert items[1][0] == "not json" and items[1][1].startswith("line 4 is not valid JSON")
    assert items[2][1] == "line 5 is not a JSON object: it is array"
    assert items[3] == ({"occp_text": 5}, "line 6: occp_text must be a string or null, not number")
    assert items[4][1].startswith("line 7: recordId must be")
    assert items[5][1].startswith("line 8 is not valid JSON")
    assert items[6] == ({"recordId": 7, "occp_text": None}, "line 9: recordId must be a string or null, not number")
    assert items[7] == ({"occp_text": "caf\ufffd"}, None)  # one bad byte: an odd line, not an unreadable file
    assert items[8] == ({"tasks_text": "last, no newline"}, None)


def test_jsonl_bom_and_an_overlong_line(tmp_path, monkeypatch):
    monkeypatch.setattr(records_module, "MAX_LINE_BYTES", 64)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"occp_text": "chef"}\n{"occp_text": "' + b"x" * 200 + b'"}\n{"occp_text": "cook"}\n')
    items = read(path)
    assert items[0] == ({"occp_text": "chef"}, None)
    assert items[1][1] == "line 2 is longer than 64 bytes"
    assert items[2] == ({"occp_text": "cook"}, None)


def test_csv_with_record_ids_bom_quotes_and_blank_rows(tmp_path):
    path = tmp_path / "in.CSV"
    path.write_bytes("\ufeffrecordId, occp_text ,tasks_text,extra\r\n"
                     'r1,"chef, head","cooking, ""fine"" food",x\r\n'
                     ",nurse,caring,\r\n"
                     "\r\n"
                     'r3,"multi\nline",,\r\n'
                     "r4,short\r\n"
                     "r5,a,b,c,d\r\n"
                     "r6,a,b,c,,\r\n".encode("utf-8"))
    items = read(path)
    assert [e for _, e in items] == [None, None, None, None, "line 8 has 5 fields but the header has 4 "
                                                             "(an unquoted comma?)", None]
    assert items[0][0] == {"recordId": "r1", "occp_text": "chef, head", "tasks_text": 'cooking, "fine" food',
                           "extra": "x"}
    assert items[1][0] == {"occp_text": "nurse", "tasks_text": "caring", "extra": ""}  # empty id: no recordId
    assert items[2][0]["occp_text"] == "multi\nline"
    assert items[3][0] == {"recordId": "r4", "occp_text": "short", "tasks_text": "", "extra": ""}
    assert items[5][0]["recordId"] == "r6"


def test_csv_without_record_id_column(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("occp_text,tasks_text\nchef,cooking\n")
    assert read(path) == [({"occp_text": "chef", "tasks_text": "cooking"}, None)]


@pytest.mark.parametrize("content", ["recordId,occp_text\nr1,chef\n", "", "\n\n"])
def test_csv_header_must_name_both_texts(tmp_path, content):
    path = tmp_path / "in.csv"
    path.write_text(content)
    with open_input(tmp_path, "in.csv") as opened, pytest.raises(ClaimCheckError) as caught:
        read_records(opened)  # checked at once, not on the first next()
    assert caught.value.code == "invalid_message"
    if content:
        assert "tasks_text" in caught.value.message


def test_csv_with_bare_carriage_returns(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"occp_text,tasks_text\rchef,cooking\rnurse,caring")
    assert [raw for raw, _ in read(path)] == [{"occp_text": "chef", "tasks_text": "cooking"},
                                             {"occp_text": "nurse", "tasks_text": "caring"}]


def test_csv_overlong_lines_are_invalid_records_at_their_position(tmp_path, monkeypatch):
    monkeypatch.setattr(records_module, "MAX_LINE_BYTES", 64)
    path = tmp_path / "in.csv"
    path.write_text("recordId,occp_text,tasks_text\n"
                    "r1,chef,cooking\n"
                    "r2," + "x" * 300 + ",long\n"
                    "r3,nurse,caring\n"
                    'r4,"open quote\n' + "y" * 50 + "\n" + "z" * 50 + "\n"
                    "r5,last,line")
    items = read(path)
    assert items[0] == ({"recordId": "r1", "occp_text": "chef", "tasks_text": "cooking"}, None)
    assert items[1] == ("r2," + "x" * 61, "line 3 is longer than 64 characters")
    assert items[2] == ({"recordId": "r3", "occp_text": "nurse", "tasks_text": "caring"}, None)
    assert items[3][1] == "line 5 starts a row longer than 64 characters (a quote left open?)"
    assert items[-1] == ({"recordId": "r5", "occp_text": "last", "tasks_text": "line"}, None)


@pytest.mark.parametrize("content, says", [
    ("occp_text," + "h" * 100 + "\nchef,cooking\n", "the CSV header line is longer than 64 characters"),
    ('occp_text,"tasks_text\n' + "h" * 40 + "\n" + "h" * 40 + "\n", "the CSV header row is longer than 64 characters"),
])
def test_csv_overlong_header_refuses_the_file(tmp_path, monkeypatch, content, says):
    monkeypatch.setattr(records_module, "MAX_LINE_BYTES", 64)
    path = tmp_path / "in.csv"
    path.write_text(content)
    with open_input(tmp_path, "in.csv") as opened, pytest.raises(ClaimCheckError) as caught:
        read_records(opened)
    assert (caught.value.code, caught.value.message) == ("invalid_message", says)


# --- AtomicFile -------------------------------------------------------------------------

def test_output_file_appears_only_when_complete(tmp_path):
    final = tmp_path / "out" / "sub" / "result.jsonl"
    with AtomicFile(final) as out:
        out.write_line(json.dumps({"n": 1}))
        assert not final.exists()
        assert [p.name for p in final.parent.iterdir()][0].startswith(".result.jsonl.partial-")
        out.write_line('{"n":2}')
    assert final.read_text() == '{"n": 1}\n{"n":2}\n'
    assert os.listdir(final.parent) == ["result.jsonl"]


def test_output_file_on_error_leaves_nothing(tmp_path):
    final = tmp_path / "result.jsonl"
    with pytest.raises(RuntimeError):
        with AtomicFile(final) as out:
            out.write_line("half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_output_file_keeps_the_old_file_until_replaced(tmp_path):
    final = tmp_path / "result.jsonl"
    final.write_text("old\n")
    with pytest.raises(RuntimeError):
        with AtomicFile(final) as out:
            out.write_line("new")
            raise RuntimeError("boom")
    assert final.read_text() == "old\n" and os.listdir(tmp_path) == ["result.jsonl"]
    with AtomicFile(final) as out:
        out.write_line(json.dumps({"t": "\ud800"}, ensure_ascii=False))  # a lone surrogate does not fail the file
    assert json.loads(final.read_text()) == {"t": "\ud800"}
