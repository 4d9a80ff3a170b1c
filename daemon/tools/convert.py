"""`coderd convert`: coding-API batch output or coderd RecordResults (JSONL) -> the flat CSV of the
integration guide's section 6, as its jq script makes it (docs/convert.md). Blocks of whole lines go
through forked workers, a bounded number in flight, in input order: memory is flat in file size."""

from __future__ import annotations

import argparse
import collections
import csv
import gc
import json
import os
import signal
import sys
import time
from json.scanner import make_scanner
from pathlib import Path
from types import SimpleNamespace

CODE_FIELDS = ("codeCategory", "codeLabel", "codeConfidence")
CSV_COLUMNS: list[str] = (["recordId", "codeStatus", "error", "input.occp_text", "input.tasks_text"]
                          + [f"result.{f}" for f in CODE_FIELDS]
                          + [f"suggestions_{i}.{f}" for i in (1, 2, 3) for f in CODE_FIELDS])
BLOCK_BYTES = 512 << 10    # amortises the workers' overhead; glibc's heap still levels off
MAX_LINE_BYTES = 16 << 20  # a longer line is cut into pieces (each reported malformed)
_decode = json.JSONDecoder().decode
_scan = make_scanner(json.JSONDecoder())  # the C scanner: decode() without its Python wrappers
_EMPTY3, _NOTHING = ("", "", ""), {}
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _cell(value) -> str:
    """jq's `value // ""` then @csv: null/false -> "", numbers as their JSON text."""
    if value is None or value is False:
        return ""
    if type(value) in (str, float, int, bool):
        return value if type(value) is str else "true" if value is True else repr(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))  # jq's @csv would abort here


def _code(code) -> tuple[str, str, str]:
    if type(code) is not dict:
        return _EMPTY3
    a, b, c = code.get("codeCategory"), code.get("codeLabel"), code.get("codeConfidence")
    return ("" if a is None else a if type(a) is str else _cell(a),
            "" if b is None else b if type(b) is str else _cell(b),
            repr(c) if type(c) is float else _cell(c))


def flatten(line: dict) -> list[str]:
    """One coding-API output line or coderd RecordResult -> one CSV row (CSV_COLUMNS order)."""
    get = line.get
    text, result, suggestions, error = get("input"), get("result"), get("suggestions"), get("error")
    text = text if type(text) is dict else _NOTHING  # API: an unparseable record comes back as a string
    if type(result) is list:  # coderd: codes best first; the CSV has room for the first
        result = result[0] if result else None
    if type(error) is dict:  # a reply-style error object: keep its human sentence
        error = error.get("message") or error.get("code")
    a, b, c, d = get("recordId"), get("codeStatus"), text.get("occp_text"), text.get("tasks_text")
    row = ["" if a is None else a if type(a) is str else _cell(a),
           "" if b is None else b if type(b) is str else _cell(b),
           "" if error is None else error if type(error) is str else _cell(error),
           "" if c is None else c if type(c) is str else _cell(c),
           "" if d is None else d if type(d) is str else _cell(d)]
    row += _code(result)
    n = len(suggestions) if type(suggestions) is list else 0
    row += _code(suggestions[0]) if n else _EMPTY3
    row += _code(suggestions[1]) if n > 1 else _EMPTY3
    row += _code(suggestions[2]) if n > 2 else _EMPTY3
    return row


def convert_block(first: int, block: bytes) -> tuple[bytes, int, int]:
    """CSV rows (UTF-8) for the lines of `block`, numbered from `first`; (rows, malformed)."""
    buf: list[str] = []
    scan, join, append, commas = _scan, ",".join, buf.append, len(CSV_COLUMNS) - 1
    # Minimal quoting; CRLF so that a lone CR in a field is quoted too, then LF like jq's output.
    writer = csv.writer(SimpleNamespace(write=lambda text: append(text[:-2] + "\n")), lineterminator="\r\n")
    malformed = 0
    for number, line in enumerate(block.decode("utf-8", "replace").split("\n"), first):
        try:  # fast path: the C scanner, then only whitespace may follow the object
            obj, end = scan(line, 0)
            if end != len(line) and not line[end:].isspace():
                raise StopIteration
        except (StopIteration, ValueError, RecursionError):
            try:  # the slow path, for its error message (and leading whitespace)
                obj = _decode(line)
            except (ValueError, RecursionError) as exc:  # incl. extra data after the value
                if not line.strip():
                    continue
                obj = ValueError(f"not valid JSON ({getattr(exc, 'msg', exc)})")
        if type(obj) is dict:
            row = flatten(obj)
        else:
            malformed += 1
            why = obj if isinstance(obj, ValueError) else f"not a JSON object but {_JSON_TYPES.get(type(obj), 'null')}"
            row = ["", "invalid", f"line {number}: {why}"] + [""] * (len(CSV_COLUMNS) - 3)
        text = join(row)  # most rows have nothing to quote: joined by hand
        if text.count(",") == commas and '"' not in text and "\n" not in text and "\r" not in text:
            append(text + "\n")
        else:
            writer.writerow(row)
    return "".join(buf).encode("utf-8"), len(buf), malformed  # one buf item a row


def _blocks(source):  # (number of its first line, a block of whole lines)
    first = 1
    while block := source.read(BLOCK_BYTES):
        if not block.endswith(b"\n"):
            block += source.readline(MAX_LINE_BYTES)
        yield first, block
        first += block.count(b"\n")


def default_jobs(source: Path | None = None) -> int:  # CPUs, at most 2 (memory); none if small
    small = source is not None and os.path.getsize(source) <= 4 * BLOCK_BYTES
    return 1 if small else max(1, min(len(os.sched_getaffinity(0)), 2))


def _converted(source, jobs: int):
    """convert_block's results for the blocks of `source`, in order."""
    if jobs <= 1:
        yield from (convert_block(first, block) for first, block in _blocks(source))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    gc.freeze()  # the forked workers' copy-on-write pages stay shared
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"),
                               initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    try:
        pending: collections.deque = collections.deque()
        for first, block in _blocks(source):
            pending.append(pool.submit(convert_block, first, block))
            if len(pending) >= 2 * jobs:  # bounded read-ahead
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)
        gc.unfreeze()


def write_csv(source, out, jobs: int = 1) -> tuple[int, int]:
    """Header and rows for the binary JSONL stream `source` onto the binary stream `out`."""
    out.write((",".join(CSV_COLUMNS) + "\n").encode())
    rows = malformed = 0
    for data, n, bad in _converted(source, jobs):
        out.write(data)
        rows, malformed = rows + n, malformed + bad
    return rows, malformed


def convert_file(source: Path, target: Path, jobs: int | None = None) -> tuple[int, int]:
    """`source` (JSONL) -> `target` (CSV): (rows, malformed lines). A regular file is written
    under a temporary name beside it, synced, and renamed over it; a pipe or device as it is."""
    target, jobs = Path(target), default_jobs(source) if jobs is None else jobs
    direct = target.exists() and not target.is_file()  # never rename over /dev/null or a pipe
    target = target if direct else target.resolve()  # a symlink: its file is replaced, not the link
    temp = target if direct else target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(source, "rb") as src, open(temp, "wb") as out:
            counts = write_csv(src, out, jobs)
            if not direct:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temp, target)  # a no-op when direct
    except BaseException:
        if not direct:
            temp.unlink(missing_ok=True)
        raise
    return counts


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE.jsonl", help="coding-API batch output or coderd results")
    parser.add_argument("-o", "--output", metavar="FILE.csv", help="the CSV (default: FILE.csv beside it; '-': stdout)")
    parser.add_argument("-j", "--jobs", type=int, help=f"worker processes (1: none; default {default_jobs()}: CPUs, max 2)")


def convert_main(args: argparse.Namespace) -> int:
    source, started, jobs = Path(args.file), time.monotonic(), getattr(args, "jobs", None)
    where = "stdout" if args.output == "-" else Path(args.output) if args.output else source.with_suffix(".csv")
    try:
        if where == "stdout":
            with open(source, "rb") as src:
                rows, bad = write_csv(src, sys.stdout.buffer, default_jobs(source) if jobs is None else jobs)
        elif where.exists() and where.samefile(source):
            print(f"coderd convert: refusing to overwrite the input {source}", file=sys.stderr)
            return 2
        else:
            rows, bad = convert_file(source, where, jobs)
    except OSError as exc:
        print(f"coderd convert: {exc.filename or source}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(f"coderd convert: {rows} rows written to {where}, {bad} malformed lines "
          f"({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0
