"""Records parsed from an opened claim-check file (inbox.py opens it): JSONL or CSV.

Every line is read with a bound (MAX_LINE_BYTES): a longer line is an `invalid` record at
its position (a longer CSV header refuses the file), skipped a bound at a time, so memory
never grows with a line's length nor with the file's size. Blocking IO, for
`asyncio.to_thread`.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, BinaryIO, Iterator

from .claimcheck import ClaimCheckError
from .cleaning import json_type, record_problem

MAX_LINE_BYTES = 1 << 20  # a longer line is reported, never read whole (CSV: characters)
_RAW_TEXT_CHARS = 1000    # how much of a malformed line is kept for the caller
_TEXT_FIELDS = ("occp_text", "tasks_text")  # CSV columns

Records = Iterator[tuple[Any, "str | None"]]


# --- JSONL -------------------------------------------------------------------------------

def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decode = json.JSONDecoder(parse_constant=_no_constants).decode  # strict JSON: no NaN/Infinity


def _parse_line(text: str, number: int) -> tuple[Any, str | None]:
    try:
        raw = _decode(text)
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, ints too long to convert
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        return text, f"line {number} is not valid JSON: {detail}"
    if not isinstance(raw, dict):
        return text, f"line {number} is not a JSON object: it is {json_type(raw)}"
    problem = record_problem(raw)
    if problem is not None:  # an object: keep it, so its recordId can still be echoed
        return raw, f"line {number}: {problem}"
    return raw, None


def read_jsonl(source: BinaryIO) -> Records:
    # Binary, split on b"\n" only (never on a stray \r or U+2028), decoded per line with
    # errors="replace" so one bad byte spoils one line, not the file.
    number = 0
    while True:
        line = source.readline(MAX_LINE_BYTES)
        if not line:
            return
        number += 1
        if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
            head = line[:_RAW_TEXT_CHARS].decode("utf-8", "replace")
            while (more := source.readline(MAX_LINE_BYTES)) and not more.endswith(b"\n"):
                pass
            yield head, f"line {number} is longer than {MAX_LINE_BYTES} bytes"
            continue
        if line.isspace():
            continue
        text = line.decode("utf-8", "replace")
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield _parse_line(text.rstrip("\r\n"), number)


# --- CSV ---------------------------------------------------------------------------------

class _TooLong(Exception):
    """A CSV line (or a row spanning lines) over the bound; `head` is its beginning."""

    def __init__(self, head: str, number: int, row: bool) -> None:
        self.head, self.number, self.row = head, number, row

    def error(self, start: int) -> str:
        if self.row:
            return f"line {start} starts a row longer than {MAX_LINE_BYTES} characters (a quote left open?)"
        return f"line {self.number} is longer than {MAX_LINE_BYTES} characters"


def _ended(line: str) -> bool:
    return len(line) < MAX_LINE_BYTES or line[-1] in "\r\n"


class _BoundedLines:
    """csv.reader's source: the file's physical lines, none longer than MAX_LINE_BYTES.

    csv.reader takes whole lines from its source, and a file's own iterator reads a whole
    line however long; this one stops at the bound and raises _TooLong instead (the rest
    of the line is dropped, a bound at a time, only if another line is asked for: a
    refused header costs one bound). csv.reader lets the exception through and starts its
    next row afresh. Lines end at \\n, \\r or \\r\\n (newline="", as csv wants). A quoted
    field may span lines, so a row is bounded too (`start_row`).
    """

    def __init__(self, source: BinaryIO) -> None:
        self._text = io.TextIOWrapper(source, encoding="utf-8-sig", errors="replace", newline="")
        self.number = 0     # physical lines read
        self._row_chars = 0
        self._in_long_line = False

    def start_row(self) -> None:
        self._row_chars = 0

    def __iter__(self) -> "_BoundedLines":
        return self

    def __next__(self) -> str:
        while self._in_long_line:
            self._in_long_line = not _ended(self._text.readline(MAX_LINE_BYTES))
        line = self._text.readline(MAX_LINE_BYTES)  # at most that many characters
        if not line:
            raise StopIteration
        self.number += 1
        if not _ended(line):
            self._in_long_line = True
            raise _TooLong(line[:_RAW_TEXT_CHARS], self.number, row=False)
        self._row_chars += len(line)
        if self._row_chars > MAX_LINE_BYTES:
            raise _TooLong(line[:_RAW_TEXT_CHARS], self.number, row=True)
        return line


def _blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _csv_header(reader, lines: _BoundedLines) -> list[str]:
    while True:
        lines.start_row()
        try:
            row = next(reader)
        except StopIteration:
            raise ClaimCheckError("invalid_message", "the CSV file is empty: it needs a header row naming "
                                                     "occp_text and tasks_text") from None
        except csv.Error as exc:
            raise ClaimCheckError("invalid_message", f"the CSV header row cannot be read: {exc}") from None
        except _TooLong as long:
            what = "row" if long.row else "line"
            raise ClaimCheckError("invalid_message", f"the CSV header {what} is longer than {MAX_LINE_BYTES} "
                                                     "characters") from None
        if not _blank(row):
            break
    names = [name.strip() for name in row]
    missing = [key for key in _TEXT_FIELDS if key not in names]
    if missing:
        found = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise ClaimCheckError("invalid_message", f"the CSV header has no {' or '.join(missing)} column "
                                                 f"(it names: {found[:300]})")
    return names


def read_csv(source: BinaryIO) -> Records:
    """The header is read at once (ClaimCheckError('invalid_message') if it lacks a text
    column); the rows as the returned iterator is consumed."""
    lines = _BoundedLines(source)
    reader = csv.reader(lines)
    return _csv_rows(reader, lines, _csv_header(reader, lines))


def _csv_rows(reader, lines: _BoundedLines, names: list[str]) -> Records:
    width = len(names)
    while True:
        start = lines.number + 1
        lines.start_row()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit(); the reader resets per row
            yield "", f"line {start} is not valid CSV: {exc}"
            continue
        except _TooLong as long:
            yield long.head, long.error(start)
            continue
        if _blank(row):
            continue
        if len(row) > width:
            if any(cell.strip() for cell in row[width:]):
                yield ",".join(row)[:_RAW_TEXT_CHARS], (f"line {start} has {len(row)} fields but the header "
                                                        f"has {width} (an unquoted comma?)")
                continue
            row = row[:width]
        elif len(row) < width:
            row = row + [""] * (width - len(row))
        raw = dict(zip(names, row))
        if "recordId" in raw and not raw["recordId"]:
            del raw["recordId"]
        yield raw, None
