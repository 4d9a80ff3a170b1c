"""Mapping the batch service's output back to a request's records.

The manifest (spool.py) has one line per input position; the API's output files (one per
spool part, in part order) have one AsynchronousCodeResponse per spooled record, whose
recordId is the position as a string. Normally the output is in spool order and both are
read side by side. If a line's recordId is not the expected position (the service
re-ordered or dropped lines), the rest is found through an index of the remaining output
lines: an array of 8-byte offsets, one slot per remaining position. Blocking IO, for
`asyncio.to_thread`; streams, so memory stays flat in the normal case.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

NO_RESULT = "the batch service returned no result for this record"
_BUFFER = 1 << 20
_OFFSET_BITS = 40  # index entry: (output file number << 40) | byte offset (files are <= 5 GB)
_EMPTY_INPUT = {"occp_text": "", "tasks_text": ""}


@dataclass
class MappingCounts:
    records: int = 0
    successful: int = 0
    unsuccessful: int = 0
    invalid: int = 0
    cached: int = 0  # answered from the result cache (not uploaded)


def invalid_entry_result(manifest_entry: dict, error: str) -> dict:
    return {"recordId": manifest_entry.get("id"), "codeStatus": "invalid",
            "input": manifest_entry.get("in") or dict(_EMPTY_INPUT),
            "result": [], "suggestions": [], "error": error}


def batch_result(manifest_entry: dict, api_line: dict | None) -> dict:
    """One RecordResult from a manifest entry and its AsynchronousCodeResponse (None: the
    service returned none)."""
    err = manifest_entry.get("err")
    if err is not None:
        return invalid_entry_result(manifest_entry, err)
    if not isinstance(api_line, dict):
        return invalid_entry_result(manifest_entry, NO_RESULT)
    result = api_line.get("result")
    codes = [result] if isinstance(result, dict) else [c for c in result if c] if isinstance(result, list) else []
    base = {"recordId": manifest_entry.get("id"), "codeStatus": "successful",
            "input": manifest_entry.get("in") or dict(_EMPTY_INPUT)}
    if api_line.get("codeStatus") == "successful" and codes:
        base.update(result=codes, suggestions=[], error=None)
        return base
    suggestions = api_line.get("suggestions") or []
    if isinstance(suggestions, dict):
        suggestions = [suggestions]
    error = api_line.get("error")
    if error is None and api_line.get("codeStatus") == "successful":
        error = "the batch service reported success without a code"
    base.update(codeStatus="unsuccessful", result=[], suggestions=suggestions, error=error)
    return base


def cached_result(manifest_entry: dict, item: dict) -> dict:
    """One RecordResult from a manifest entry and the result cache's answer (what the
    real-time API said for the same text and model)."""
    codes = item.get("result") or []
    successful = item.get("codeStatus") == "successful"
    return {"recordId": manifest_entry.get("id"), "codeStatus": "successful" if successful else "unsuccessful",
            "input": manifest_entry.get("in") or dict(_EMPTY_INPUT), "result": codes if successful else [],
            "suggestions": [] if successful else codes, "error": None}


def _is_position(api_line: Any, position: int) -> bool:
    if not isinstance(api_line, dict):
        return False
    rid = api_line.get("recordId")
    return rid == str(position) if isinstance(rid, str) else (type(rid) is int and rid == position)


def _position_of(api_line: Any) -> int | None:
    rid = api_line.get("recordId") if isinstance(api_line, dict) else None
    if isinstance(rid, str) and rid.isascii() and rid.isdigit():
        return int(rid)
    return rid if type(rid) is int else None


_decode = json.JSONDecoder().decode
_raw_decode = json.JSONDecoder().raw_decode


def _parse(line: bytes) -> Any:
    """An API output line, or None if it is not JSON."""
    try:
        return _decode(line.decode("utf-8"))
    except ValueError:  # includes UnicodeDecodeError
        return None


_LEADING_ID = re.compile(rb'\s*\{\s*"recordId"\s*:\s*"(\d{1,18})"')


def _key_of(line: bytes) -> int | None:
    """The position an output line answers: read off the line's start when recordId is its
    first key (the usual shape), else by parsing it. Lookups re-check the parsed line."""
    match = _LEADING_ID.match(line)
    if match is not None:
        return int(match.group(1))
    return _position_of(_parse(line)) if not line.isspace() else None


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as source:
        while chunk := source.read(_BUFFER):
            count += chunk.count(b"\n")
    return count


class _ApiOutput:
    """The output lines for successive positions: read in order, or via the index."""

    def __init__(self, outputs: list[Path], manifest: Path) -> None:
        self.paths, self.manifest = [Path(p) for p in outputs], manifest
        self.number, self.handle, self.offset = 0, None, 0
        self.index: array | None = None
        self.base = 0
        self.fds: dict[int, int] = {}

    def _next_line(self) -> tuple[int, int, bytes] | None:
        while self.number < len(self.paths):
            if self.handle is None:
                self.handle, self.offset = open(self.paths[self.number], "rb", buffering=_BUFFER), 0
            line = self.handle.readline()
            if not line:
                self.handle.close()
                self.handle, self.number = None, self.number + 1
                continue
            offset, self.offset = self.offset, self.offset + len(line)
            if not line.isspace():
                return self.number, offset, line
        return None

    def get(self, position: int) -> Any:
        """The parsed output line for `position`, or None if the service returned none."""
        if self.index is None:
            found = self._next_line()
            if found is None:
                return None
            api_line = _parse(found[2])
            if _is_position(api_line, position):
                return api_line
            self._build_index(position, found[0], found[1])
        slot = position - self.base
        entry = self.index[slot] if 0 <= slot < len(self.index) else -1
        if entry < 0:
            return None
        api_line = _parse(self._line_at(entry >> _OFFSET_BITS, entry & ((1 << _OFFSET_BITS) - 1)))
        return api_line if _is_position(api_line, position) else None

    def _build_index(self, position: int, number: int, offset: int) -> None:
        """Offsets of the output lines from (number, offset) on, by position; first wins."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        self.base = position
        remaining = max(_count_lines(self.manifest) - position, 0)
        index = self.index = array("q", [-1]) * remaining
        for n in range(number, len(self.paths)):
            with open(self.paths[n], "rb", buffering=_BUFFER) as source:
                at = offset if n == number else 0
                source.seek(at)
                for line in source:
                    line_offset, at = at, at + len(line)
                    key = _key_of(line)
                    if key is not None and 0 <= key - position < remaining and index[key - position] < 0:
                        index[key - position] = (n << _OFFSET_BITS) | line_offset

    def _line_at(self, number: int, offset: int) -> bytes:
        fd = self.fds.get(number)
        if fd is None:
            fd = self.fds[number] = os.open(self.paths[number], os.O_RDONLY)
        pieces = []
        while chunk := os.pread(fd, 4096, offset):
            end = chunk.find(b"\n")
            if end >= 0:
                pieces.append(chunk[:end])
                break
            pieces.append(chunk)
            offset += len(chunk)
        return b"".join(pieces)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def map_results(manifest: Path, outputs: list[Path], emit: Callable[[dict], None],
                cached: Iterable[tuple[int, dict]] = ()) -> MappingCounts:
    """Call `emit` with one RecordResult per manifest line (= input position), in order.

    `outputs` are the API's output files for the spool parts, in part order; `cached` the
    (position, answer) pairs of the records the result cache answered, in position order.
    A position the service gave no result for comes back `invalid` (NO_RESULT); nothing
    shifts.
    """
    counts = MappingCounts()
    source = _ApiOutput(outputs, Path(manifest))
    known = iter(cached)
    next_known = next(known, None)
    try:
        with open(manifest, "rb", buffering=_BUFFER) as entries:
            for position, line in enumerate(entries):
                entry = _raw_decode(line.decode("ascii"))[0]  # our own compact lines
                if "err" in entry:
                    result = invalid_entry_result(entry, entry["err"])
                elif next_known is not None and next_known[0] == position:
                    result = cached_result(entry, next_known[1])
                    next_known = next(known, None)
                    counts.cached += 1
                else:
                    result = batch_result(entry, source.get(position))
                status = result["codeStatus"]
                if status == "successful":
                    counts.successful += 1
                elif status == "unsuccessful":
                    counts.unsuccessful += 1
                else:
                    counts.invalid += 1
                counts.records += 1
                emit(result)
    finally:
        source.close()
    return counts
