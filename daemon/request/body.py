"""A request body as it arrives: decoded (gzip, deflate), and when large, parsed as a
stream with its records spooled to disk, so that memory does not grow with the number of
records and no single parse holds the event loop (or the GIL) for long.

Blocking: `spool_body` runs in a thread. ijson (yajl's C parser) yields one record at a
time; between records other threads, the event loop's included, get their turn.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import ijson

from ..durable import sync_and_close
from .messages import InvalidMessage

LARGE_BODY = 1 << 20  # a body larger than this (or compressed) is parsed as a stream
MAX_DECODED = 1 << 30  # a compressed body may not decode to more than this
ENCODINGS = ("identity", "gzip", "x-gzip", "deflate")
_encode_record = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode  # ASCII: read back exactly


class _Bounded(io.RawIOBase):
    """A decoded stream that refuses to grow past MAX_DECODED (a small "zip bomb" must not
    fill the disk or the memory)."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner, self.total = inner, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self.inner.read(len(buffer))
        except (OSError, EOFError, zlib.error) as exc:
            raise InvalidMessage(f"body cannot be decompressed: {exc}") from None
        self.total += len(data)
        if self.total > MAX_DECODED:
            raise InvalidMessage(f"body decompresses to more than {MAX_DECODED >> 20} MiB")
        buffer[:len(data)] = data
        return len(data)


class _Inflate(io.RawIOBase):
    """A zlib ('deflate' in HTTP's sense) stream; raw deflate is accepted too."""

    def __init__(self, body: bytes) -> None:
        wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
        self.source, self.inflate = io.BytesIO(body), zlib.decompressobj(wbits)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            data = self.inflate.unconsumed_tail or self.source.read(1 << 16)
            if not data:
                out = self.inflate.flush()
            else:
                out = self.inflate.decompress(data, len(buffer))
            if out or not data:
                buffer[:len(out)] = out
                return len(out)


def is_large(body: bytes, encoding: str | None) -> bool:
    return len(body) > LARGE_BODY or (encoding or "identity").lower() != "identity"


def open_body(body: bytes, encoding: str | None) -> BinaryIO:
    """The body, decoded as its content_encoding says."""
    encoding = (encoding or "identity").lower()
    if encoding == "identity":
        return io.BytesIO(body)
    if encoding in ("gzip", "x-gzip"):
        return io.BufferedReader(_Bounded(gzip.GzipFile(fileobj=io.BytesIO(body))), 1 << 16)
    if encoding == "deflate":
        return io.BufferedReader(_Bounded(_Inflate(body)), 1 << 16)
    raise InvalidMessage(f"content_encoding {encoding!r} is not supported: send the body as is, or gzip or deflate")


class SpoolArea:
    """`state_dir/spool`: a directory for each large request while it is coded, removed
    when it is done (and, for one left by a crash, at the next start)."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "spool"

    def new(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(dir=self.root))

    def sweep(self, older_than: float = 86400.0) -> None:
        """Remove what a crashed process left (old enough not to be a replica's, in use)."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            with contextlib.suppress(OSError):
                if time.time() - entry.stat().st_mtime > older_than:
                    shutil.rmtree(entry, ignore_errors=True)


@dataclass
class SpooledBody:
    fields: dict  # the body's members, `records` aside
    records: Path | None  # `records`, one JSON value a line, in order (None: not a list)
    count: int = 0


def spool_body(body: bytes, encoding: str | None, directory: Path,
               on_record: Callable[[object], None] | None = None) -> SpooledBody:
    """Parse a large or encoded body: its members other than `records` are built, and the
    items of `records` are written to `directory/records.jsonl` as they are read (each
    also shown to `on_record`)."""
    try:
        fields, records_kind = _members(open_body(body, encoding))
        if records_kind != "start_array":
            return SpooledBody(fields, None)
        directory.mkdir(parents=True, exist_ok=True)
        path, count = directory / "records.jsonl", 0
        out = open(path, "w", encoding="ascii", buffering=1 << 20)
        try:
            for item in ijson.items(open_body(body, encoding), "records.item", use_float=True):
                if on_record is not None:
                    on_record(item)
                out.write(_encode_record(item))
                out.write("\n")
                count += 1
        finally:
            sync_and_close(out)
        return SpooledBody(fields, path, count)
    except ijson.JSONError as exc:
        raise InvalidMessage(f"body is not JSON: {str(exc).strip().splitlines()[0]}") from None
    except (RecursionError, ValueError) as exc:  # a record nested too deeply to write back
        raise InvalidMessage(f"body is not JSON that can be read: {exc or 'nested too deeply'}") from None


_CONTAINER_START, _CONTAINER_END = ("start_map", "start_array"), ("end_map", "end_array")
_TYPES = {"start_map": "object", "start_array": "array", "string": "string", "number": "number",
          "boolean": "boolean", "null": "null", "integer": "number", "double": "number"}


def _members(stream: BinaryIO) -> tuple[dict, str | None]:
    """The top-level members, `records` aside (its kind of value is returned instead; an
    object or scalar there is put in the fields, so validation names the problem)."""
    events = ijson.basic_parse(stream, use_float=True)
    first = next(events, (None, None))
    if first[0] != "start_map":
        raise InvalidMessage(f"body must be a JSON object, not {_TYPES.get(first[0], 'nothing')}")
    fields: dict = {}
    records_kind: str | None = None
    for event, value in events:
        if event == "end_map":
            break
        key = value  # a map_key
        event, value = next(events)
        if key == "records":
            records_kind = event
            if event in _CONTAINER_START:
                if event == "start_map":
                    fields["records"] = {}
                _skip(events)
            else:
                fields["records"] = value
            continue
        fields[key] = _build(event, value, events)
    return fields, records_kind


def _skip(events) -> None:
    depth = 1
    for event, _ in events:
        depth += (event in _CONTAINER_START) - (event in _CONTAINER_END)
        if depth == 0:
            return


def _build(event: str, value, events):
    if event not in _CONTAINER_START:
        return value
    builder = ijson.ObjectBuilder()
    builder.event(event, value)
    depth = 1
    for event, value in events:
        builder.event(event, value)
        depth += (event in _CONTAINER_START) - (event in _CONTAINER_END)
        if depth == 0:
            return builder.value
    return builder.value
