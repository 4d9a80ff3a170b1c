"""Claim-check files: resolving names inside the inbox/outbox, streaming records in, and
writing an output file completely or not at all.

Blocking file IO on purpose: these run inside `asyncio.to_thread`. Nothing here holds
more than one record (or one line) in memory, whatever the file's size.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from .cleaning import json_type, record_problem

MAX_LINE_BYTES = 1 << 20  # a longer JSONL line is reported as malformed, not read whole
_RAW_TEXT_CHARS = 1000    # how much of a malformed line is kept for the caller
_BUFFER = 1 << 20
_TEXT_FIELDS = ("occp_text", "tasks_text")  # CSV columns


class ClaimCheckError(Exception):
    """A claim-check request that cannot be served; `code` is the reply's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def resolve_inside(base: Path, name: str, *, must_exist: bool, label: str = "file") -> Path:
    """The real path of `name` (relative to `base`), refused if it leaves `base`.

    Symlinks are followed, so a link inside `base` pointing out of it is refused. The
    returned path is the resolved one: open that, not base / name. Messages name `name`
    (as the producer wrote it), never the absolute base.
    """
    if not isinstance(name, str) or not name.strip():
        raise ClaimCheckError("path_not_allowed", f"{label} name is empty")
    if "\x00" in name:
        raise ClaimCheckError("path_not_allowed", f"{label} {name!r} contains a NUL character")
    if PurePosixPath(name).is_absolute() or Path(name).is_absolute():
        raise ClaimCheckError("path_not_allowed", f"{label} {name!r} is absolute; it must be relative to its directory")
    root = Path(base).resolve()
    try:
        target = (root / name).resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise ClaimCheckError("path_not_allowed", f"{label} {name!r} cannot be resolved: {exc.__class__.__name__}") from None
    if target == root or not target.is_relative_to(root):
        raise ClaimCheckError("path_not_allowed", f"{label} {name!r} is outside its directory")
    if must_exist:
        if not target.is_file():
            raise ClaimCheckError("input_not_found", f"{label} {name!r} does not exist or is not a regular file")
    elif target.exists() and not target.is_file():
        raise ClaimCheckError("path_not_allowed", f"{label} {name!r} exists and is not a regular file")
    return target


def default_output_name(input_name: str) -> str:
    """'census/sample.jsonl' -> 'census/sample.coded.jsonl'; 'noext' -> 'noext.coded.jsonl'.
    Call it with an input name that resolve_inside accepted (it names a file)."""
    path = PurePosixPath(input_name)
    if not path.name or path.name in (".", ".."):
        raise ClaimCheckError("path_not_allowed", f"file {input_name!r} does not name a file")
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return str(path.with_name(f"{stem}.coded.jsonl"))


# --- reading records ----------------------------------------------------------------

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


def _read_jsonl(path: Path) -> Iterator[tuple[Any, str | None]]:
    # Binary, split on b"\n" only (never on a stray \r or U+2028), decoded per line with
    # errors="replace" so one bad byte spoils one line, not the file.
    with open(path, "rb", buffering=_BUFFER) as source:
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


def _blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as source:
        try:
            header = next((row for row in csv.reader(source) if not _blank(row)), None)
        except csv.Error as exc:
            raise ClaimCheckError("invalid_message", f"the CSV header row cannot be read: {exc}") from None
    if header is None:
        raise ClaimCheckError("invalid_message", "the CSV file is empty: it needs a header row naming "
                                                 "occp_text and tasks_text")
    names = [name.strip() for name in header]
    missing = [key for key in _TEXT_FIELDS if key not in names]
    if missing:
        found = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise ClaimCheckError("invalid_message", f"the CSV header has no {' or '.join(missing)} column "
                                                 f"(it names: {found[:300]})")
    return names


def _read_csv(path: Path, names: list[str]) -> Iterator[tuple[Any, str | None]]:
    width = len(names)
    with open(path, encoding="utf-8-sig", errors="replace", newline="", buffering=_BUFFER) as source:
        reader = csv.reader(source)
        seen_header, last_line = False, 0
        while True:
            start = last_line + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over csv.field_size_limit(); the reader resets per row
                last_line = reader.line_num
                yield "", f"line {start} is not valid CSV: {exc}"
                continue
            last_line = reader.line_num
            if _blank(row):
                continue
            if not seen_header:
                seen_header = True
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


def read_records(path: Path) -> Iterator[tuple[Any, str | None]]:
    """(raw, None) per record, or (raw, error) for a malformed one, in file order: raw is
    the line's text, or the parsed object when only its field types are wrong (so its
    recordId can be echoed). Error messages start with the 1-based file line number.

    '.csv' (any case) is CSV with a header naming occp_text and tasks_text (checked now:
    ClaimCheckError('invalid_message')); anything else is JSONL, blank lines skipped.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path, _csv_header(path))
    return _read_jsonl(path)
