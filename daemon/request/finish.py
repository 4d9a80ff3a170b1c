"""Finishing a request, on either route: its reply rendered as strict JSON, published and
confirmed, then counted and logged. The one place a `request_done` is written.

A reply larger than MAX_REPLY_BYTES is not published whole: its RecordResults are written
to the outbox as a JSONL file (a claim check) and the reply carries `output`, as for an
`inputFile` request. Large replies are encoded a record at a time in a thread, so the
event loop never waits for one big encode.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..durable import AtomicFile, fsync_dir
from ..logs import get_logger
from ..ops import metrics
from .answered import AnsweredLog
from .incoming import ReplyAddress
from .outbox import MAX_REPLY_BYTES, Outbox, reply_file_name
from .results import encode

log = get_logger("coderd.requests")

ENCODE_IN_THREAD = 1000  # replies with more records than this are encoded off the event loop
_OUTCOMES = ("successful", "unsuccessful", "invalid")


class ReplyNotConfirmed(Exception):
    """The broker did not confirm a reply; `connection_lost` when it was cut meanwhile (then
    the request is delivered again, and a single line about the cut says why)."""

    def __init__(self, message: str, *, connection_lost: bool) -> None:
        super().__init__(message)
        self.connection_lost = connection_lost


class Publisher(Protocol):
    async def publish(self, body: bytes, reply_to: str | None, correlation_id: str) -> None: ...


@dataclass
class ResultsFile:
    """A large request's RecordResults, already encoded, one a line in request order."""

    path: Path
    records: int = 0
    cached: int = 0  # of them, answered from the result cache
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_OUTCOMES, 0))

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def outcome_counts(reply: dict) -> dict[str, int]:
    """Records answered, by codeStatus, whatever form the reply's results take."""
    records = reply.get("records")
    if isinstance(records, ResultsFile):
        return dict(records.counts)
    results = records if isinstance(records, list) else [reply["record"]] if reply.get("record") else []
    if results:
        counts = dict.fromkeys(_OUTCOMES, 0)
        for result in results:
            counts[result["codeStatus"]] += 1
        return counts
    summary = reply.get("output") or {}
    return {k: summary.get(k, 0) for k in _OUTCOMES}


class Finisher:
    def __init__(self, publisher: Publisher, outbox: Outbox, answered: AnsweredLog) -> None:
        self.publisher, self.outbox, self.answered = publisher, outbox, answered

    async def finish(self, address: ReplyAddress, reply: dict, *, elapsed: float, owner: str,
                     lane: str = "bulk", **fields) -> None:
        """Returns once the broker has confirmed the reply; raises if it could not.
        `owner` identifies the request (for a claim-check file written for it)."""
        counts = outcome_counts(reply)
        body, claim_checked = await self.render(address, reply, owner)
        await self.publisher.publish(body, address.reply_to, address.correlation_id)
        self.answered.record(owner)
        metrics.observe_reply({"route": reply.get("route"), "status": reply["status"], "error": reply.get("error"),
                               "output": counts}, elapsed, lane)
        error = reply.get("error") or {}
        log.info("request_done", correlation_id=address.correlation_id, status=reply["status"],
                 route=reply.get("route"), records=sum(counts.values()), latency_ms=round(elapsed * 1000, 1),
                 lane=lane, error=error.get("code"), claim_check=claim_checked or None, **fields)

    async def render(self, address: ReplyAddress, reply: dict, owner: str) -> tuple[bytes, str | None]:
        """The reply's body, and the claim-check file it names instead of its records."""
        records = reply.get("records")
        if isinstance(records, ResultsFile):
            if records.size + 64 * 1024 <= MAX_REPLY_BYTES:
                return await asyncio.to_thread(_inline_from_file, reply, records), None
            return await self._claim_check(address, reply, records, owner)
        if isinstance(records, list) and len(records) > ENCODE_IN_THREAD:
            lines = await asyncio.to_thread(lambda: [encode(r) for r in records])
            if sum(map(len, lines)) + len(lines) + 64 * 1024 <= MAX_REPLY_BYTES:
                return await asyncio.to_thread(_join, reply, lines), None
            path = self.outbox.root / f".unsent-{os.getpid()}-{id(lines)}.jsonl"
            results = await asyncio.to_thread(_write_lines, path, lines, records)
            return await self._claim_check(address, reply, results, owner)
        return encode(reply).encode(), None

    async def _claim_check(self, address: ReplyAddress, reply: dict, results: ResultsFile,
                           owner: str) -> tuple[bytes, str]:
        name = reply_file_name(address.correlation_id)
        target = await asyncio.to_thread(self.outbox.claim, name, owner)
        try:
            await asyncio.to_thread(_move, results.path, target)
        except BaseException:
            self.outbox.release(target)
            raise
        await asyncio.to_thread(self.outbox.written, target, owner)
        summary = {k: v for k, v in reply.items() if k not in ("records", "error")}
        summary["output"] = {"file": name, "records": results.records, **results.counts, "cached": results.cached}
        summary["error"] = None
        log.info("reply_claim_checked", correlation_id=address.correlation_id, file=name, records=results.records)
        return encode(summary).encode(), name


def _head(reply: dict) -> str:
    """The reply's JSON up to its records: everything but `records` and `error`."""
    head = {k: v for k, v in reply.items() if k not in ("records", "error")}
    return encode(head)[:-1] + ',"records":['


def _tail(reply: dict) -> str:
    return '],"error":' + encode(reply.get("error")) + "}"


def _join(reply: dict, lines: list[str]) -> bytes:
    return (_head(reply) + ",".join(lines) + _tail(reply)).encode()


def _inline_from_file(reply: dict, results: ResultsFile) -> bytes:
    with open(results.path, encoding="utf-8") as source:
        lines = [line.rstrip("\n") for line in source]
    results.path.unlink(missing_ok=True)
    return _join(reply, lines)


def _write_lines(path: Path, lines: list[str], records: list[dict]) -> ResultsFile:
    results = ResultsFile(path, len(lines))
    with AtomicFile(path) as out:
        for line, record in zip(lines, records):
            out.write_line(line)
            results.counts[record["codeStatus"]] += 1
    return results


def _move(source: Path, target: Path) -> None:
    """Into the outbox, whole: a rename where it can be, else a copy renamed into place."""
    try:
        os.replace(source, target)
        fsync_dir(target.parent)
        return
    except OSError:
        pass  # another filesystem
    with open(source, "rb") as src, AtomicFile(target, binary=True) as out:
        shutil.copyfileobj(src, out.file, 1 << 20)
    source.unlink(missing_ok=True)
