"""Batch records the result cache already knows: taken out of the spool before anything
is uploaded, and put back in their places when the output is mapped.

    job_dir/cached.jsonl   {"p": <input position>, "item": <the cached answer>}, in position order

Done in the spooling phase, before the job's first operation exists: a crash meanwhile
spools again from the start (spool.py removes this file with the others). Streams, a chunk
of spooled records at a time, so memory does not grow with the job.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ..api.cache import CacheKey, ResultCache
from ..durable import fsync_dir, sync_and_close
from .journal import Job, Part
from .spool import SpoolSummary

CACHED_NAME = "cached.jsonl"
CHUNK = 5000  # spooled records looked up at once


async def take_cached(job: Job, directory: Path, cache: ResultCache, model: str) -> int:
    """Remove from the job's spool parts the records `cache` answers (for `model`), write
    their answers to cached.jsonl, and drop parts left empty. Returns how many."""
    cached_path, taken = directory / CACHED_NAME, 0
    cached_file = await asyncio.to_thread(open, cached_path, "w", encoding="utf-8")
    try:
        for part in job.parts:
            source, kept = directory / part.spool, directory / (part.spool + ".kept")
            reader = await asyncio.to_thread(lambda: open(source, encoding="utf-8"))
            writer = await asyncio.to_thread(lambda: open(kept, "w", encoding="utf-8"))
            part.records = part.size = 0
            try:
                while chunk := await asyncio.to_thread(_read_chunk, reader):
                    keys = {line: _key(job, model, line) for line in chunk}
                    found = await cache.lookup(list(set(keys.values())))
                    taken += await asyncio.to_thread(_split, chunk, keys, found, cached_file, writer, part)
            finally:
                await asyncio.to_thread(reader.close)
                await asyncio.to_thread(sync_and_close, writer)
            await asyncio.to_thread(os.replace, kept, source)
    finally:
        await asyncio.to_thread(sync_and_close, cached_file)
    for part in job.parts:
        if not part.records:
            await asyncio.to_thread((directory / part.spool).unlink)
    job.parts = [part for part in job.parts if part.records]
    await asyncio.to_thread(fsync_dir, directory)
    return taken


def _read_chunk(reader) -> list[str]:
    chunk = []
    for line in reader:
        chunk.append(line)
        if len(chunk) == CHUNK:
            break
    return chunk


def _key(job: Job, model: str, line: str) -> CacheKey:
    record = json.loads(line)
    return CacheKey(job.topic, model, record["occp_text"], record["tasks_text"], job.suggestions)


def _split(chunk: list[str], keys: dict[str, CacheKey], found: dict, cached_file, writer, part) -> int:
    taken = 0
    for line in chunk:
        item = found.get(keys[line])
        if item is None:
            writer.write(line)
            part.records += 1
            part.size += len(line.encode("utf-8"))
        else:
            position = int(json.loads(line)["recordId"])
            cached_file.write(json.dumps({"p": position, "item": item}, separators=(",", ":")) + "\n")
            taken += 1
    return taken


def cached_answers(path: Path) -> Iterator[tuple[int, dict]]:
    """(position, cached answer) in position order; nothing when there is no such file."""
    try:
        source = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with source:
        for line in source:
            entry = json.loads(line)
            yield entry["p"], entry["item"]


def rebuild_parts(respool: Callable[[], SpoolSummary], directory: Path) -> list[Part]:
    """The parts take_cached left, made again on another host: spool the input again
    (`respool`, blocking), then take out the records cached.jsonl answers. Blocking IO."""
    cached, kept = directory / CACHED_NAME, directory / (CACHED_NAME + ".kept")
    if kept.exists() and not cached.exists():  # an earlier rebuild stopped half-way
        os.replace(kept, cached)
    if cached.exists():
        os.replace(cached, kept)  # spooling removes cached.jsonl
    summary = respool()
    if kept.exists():
        os.replace(kept, cached)
    positions = {position for position, _ in cached_answers(cached)}
    parts = []
    for spooled in summary.parts:
        part = Part(spooled.path.name, spooled.records, spooled.size)
        if positions:
            part.records = part.size = 0
            with open(spooled.path, encoding="utf-8") as reader, \
                    open(spooled.path.with_name(part.spool + ".kept"), "w", encoding="utf-8") as writer:
                for line in reader:
                    if int(json.loads(line)["recordId"]) not in positions:
                        writer.write(line)
                        part.records += 1
                        part.size += len(line.encode("utf-8"))
            os.replace(spooled.path.with_name(part.spool + ".kept"), spooled.path)
        if part.records:
            parts.append(part)
        else:
            spooled.path.unlink()
    fsync_dir(directory)
    return parts
