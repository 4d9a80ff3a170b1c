"""`coderd submit FILE`: code a CSV or JSONL file through a running daemon and write the
results as the guide's flat CSV beside it. Resumable after any interruption: see docs/submit.md."""

from __future__ import annotations

import asyncio  # noqa: E401
import contextlib
import csv
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from itertools import islice
from pathlib import Path

CHUNK = 300  # records per request message: one API call's worth
WINDOW = 8  # chunks published and unanswered at once, at most: a timeout then means something
LINE_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal
QUEUE_EXPIRES_MS = 14 * 86400 * 1000  # a reply queue nobody came back for is removed after two weeks


class SubmitError(Exception):
    pass


def add_submit_arguments(p) -> None:
    p.add_argument("file", help="CSV (header naming occp_text, tasks_text, optionally recordId) or JSONL")
    p.add_argument("--topic", default="osca", help="API topic uriName (default: osca)")
    p.add_argument("--model", default=None, help="model GUID (default: the topic's latest)")
    p.add_argument("--suggestions", type=int, choices=range(17), metavar="N", help="0-16 (default: the daemon's)")
    p.add_argument("--config", default=None, help="the daemon's TOML file (default: config/coderd.toml when present)")
    p.add_argument("--output", default=None, help="CSV to write (default: FILE's stem + .coded.csv)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds before a request published but unanswered is published again (default: 600)")


def submit_main(args) -> int:
    from ..config import settings_for_command
    from ..logs import configure_logging
    settings = settings_for_command(args.config)
    configure_logging(settings.log_format, level="warning")
    path, job = Path(args.file).resolve(), None
    try:
        job = Submission(settings, args, path, Path(args.output).absolute() if args.output
                         else path.with_name(path.stem + ".coded.csv"))
        return asyncio.run(job.run())
    except KeyboardInterrupt:
        print(f"\ncoderd submit: interrupted; the answers so far are kept in {job.side}: run the same "
              "command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the analyst, not a traceback (ClaimCheckError has .message)
        message = str(getattr(exc, "message", "") or exc) or type(exc).__name__
        print(f"coderd submit: {' '.join(message.split())}", file=sys.stderr)
        return 1


class Submission:
    def __init__(self, settings, args, path: Path, output: Path) -> None:
        self.settings, self.args, self.path, self.output = settings, args, path, output
        st = path.stat()
        self.hash = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
        self.queue_name, self.side = f"coderd.submit.{self.hash}", output.with_name(output.name + ".partial.jsonl")
        self.answered: dict = {}  # chunk index (or "file") -> offset of its answer's line in the side file
        self.published: dict = {}  # chunk -> when it was last published
        self.inflight: dict = {}  # chunk -> (request body, when to publish it again)
        self.failure, self.changed, self.last_line = None, asyncio.Event(), 0.0

    def load_state(self, header: dict) -> None:  # the side file: a header line, then one event a line
        old, offset = None, 0
        with open(self.side, "a+b") as f:
            f.seek(0)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn: the previous run was killed while writing it
                event = json.loads(line)
                old = old or event
                if "chunk" in event:
                    self.answered.setdefault(event["chunk"], offset)
                elif "published" in event:
                    self.published[event["published"]] = event["at"]
                elif "failed" in event:
                    self.published.pop(event["failed"], None)
                offset += len(line)
            if old and old["hash"] != self.hash:  # the input changed since: that run is void (its queue expires)
                old, offset, self.answered, self.published = None, 0, {}, {}
            elif old and any(old[k] != header[k] for k in ("topic", "model", "suggestions")):
                options = " ".join(f"--{k} {old[k]}" for k in ("topic", "model", "suggestions") if old[k] is not None)
                raise SubmitError(f"an unfinished run of this file with {options} exists: run it with the same "
                                  f"options to finish it, or delete {self.side} to start over")
            f.truncate(offset)
        self.header, self.file = old or header, open(self.side, "ab")
        if old is None:
            self.append(header)

    def append(self, event: dict) -> int:
        offset = self.file.tell()
        self.file.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        return offset

    def answer(self, key) -> dict | list:
        with open(self.side, "rb") as side:
            side.seek(self.answered[key])
            return json.loads(side.readline())["results"]

    async def run(self) -> int:
        import aio_pika
        from tqdm import tqdm

        from ..broker.connection import Nodes
        from ..request.inbox import read_local_records
        s, a, self.aio_pika, self.records = self.settings, self.args, aio_pika, lambda: read_local_records(self.path)
        self.total = total = await asyncio.to_thread(lambda: sum(1 for _ in self.records()))
        header = {"hash": self.hash, "input": str(self.path), "queue": self.queue_name, "records": total,
                  "topic": a.topic, "model": a.model, "suggestions": a.suggestions, "mode": "chunks"}
        if total > s.batch_threshold and s.tier == "partner":
            header.update(await asyncio.to_thread(self.place_in_inbox) or {})
        self.load_state(header)
        self.file_mode, self.chunks, self.start = self.header["mode"] == "file", -(-total // CHUNK), time.time()
        self.expected = {"file"} if self.file_mode else range(self.chunks)  # the keys of our replies
        self.done = self.first = sum(map(self.size, self.answered))
        self.connection = await Nodes(s.amqp_urls).connect(timeout=30, client_properties={
            "connection_name": "coderd-submit"})
        try:
            self.channel = await self.connection.channel(on_return_raises=True)
            await self.channel.set_qos(prefetch_count=50)
            if (consumers := await self.consumers()) is None:
                raise SubmitError(f"the request queue {s.request_queue!r} does not exist: start the daemon "
                                  "(./scripts/run or coderd run) with the same configuration first")
            if not consumers:
                print(f"coderd submit: no daemon consumes {s.request_queue!r} yet: requests wait there", file=sys.stderr)
            queue = await self.channel.declare_queue(self.queue_name, durable=True, exclusive=False, auto_delete=False,
                                                     arguments={"x-expires": QUEUE_EXPIRES_MS})
            self.bar = tqdm(total=total, initial=self.done, unit="rec", file=sys.stderr, disable=not sys.stderr.isatty())
            try:
                tag = await queue.consume(self.on_reply)
                counts = await self.code()
            finally:
                self.bar.close()
            await queue.cancel(tag)
            await queue.delete(if_unused=False, if_empty=False)
        finally:
            await self.connection.close()
        self.file.close()
        self.side.unlink()
        print(f"coderd submit: {total} records: {counts['successful']} successful, {counts['unsuccessful']} "
              f"unsuccessful, {counts['invalid']} invalid -> {self.output}")
        return 0

    def size(self, chunk) -> int:
        return self.total if chunk == "file" else min(CHUNK, self.total - chunk * CHUNK)

    async def consumers(self) -> int | None:  # of the request queue; None: it does not exist
        with contextlib.suppress(self.aio_pika.exceptions.ChannelClosed):
            async with self.connection.channel() as channel:
                queue = await channel.declare_queue(self.settings.request_queue, passive=True)
                return queue.declaration_result.consumer_count

    def message(self, body: dict) -> bytes:
        options = {"model": self.args.model, "numberOfSuggestions": self.args.suggestions}
        return json.dumps({"topic": self.args.topic, "mode": "auto", **body,
                           **{k: v for k, v in options.items() if v is not None}}).encode()

    async def publish(self, chunk, body: bytes) -> None:
        ap = self.aio_pika
        await self.channel.default_exchange.publish(ap.Message(  # confirmed by the broker, mandatory
            body, correlation_id=f"submit:{self.hash}:{chunk}", reply_to=self.queue_name,
            content_type="application/json", delivery_mode=ap.DeliveryMode.PERSISTENT),
            routing_key=self.settings.request_queue, mandatory=True)
        self.published[chunk] = now = time.time()
        self.append({"published": chunk, "at": now})
        self.inflight[chunk] = (body, now + self.args.timeout)

    def adopt(self, chunk, body: bytes) -> None:  # published by an earlier run: its reply may be queued
        self.inflight[chunk] = (body, max(self.published[chunk], self.start) + self.args.timeout)

    def settle(self, chunk, results, failure: str | None = None) -> None:  # on disk first, then in memory
        self.inflight.pop(chunk, None)
        if failure:
            self.failure, _ = failure, self.published.pop(chunk, None)
            self.append({"failed": chunk})
        else:
            self.answered[chunk] = self.append({"chunk": chunk, "results": results})
            self.done += self.size(chunk)
            self.bar.update(self.size(chunk))
        self.changed.set()

    async def on_reply(self, message) -> None:
        async with message.process():  # acked once its answer is on disk
            prefix, _, index = (message.correlation_id or "").rpartition(":")
            key = int(index) if index.isdigit() else index
            if prefix != f"submit:{self.hash}" or key in self.answered or key not in self.expected:
                return  # a duplicate (delivery is at-least-once) or a stray message
            reply, error = json.loads(message.body), None
            if reply.get("status") != "completed":
                error = reply.get("error") or {}
                error = f"request {message.correlation_id} failed: {error.get('code')}: {error.get('message')}"
            self.settle(key, reply.get("output" if self.file_mode else "records") or [], error)

    async def wait(self, done) -> None:
        """Until done(): publish again what timed out, stop at a failed reply, show progress."""
        while not self.failure and not done():
            for chunk, (body, deadline) in list(self.inflight.items()):
                if time.time() < deadline:
                    continue
                # Not while nobody consumes requests (they wait safely in the queue), nor
                # while the daemon's batch journal holds the request.
                if (self.file_mode and self.batch_phase()) or not await self.consumers():
                    self.inflight[chunk] = (body, time.time() + min(self.args.timeout, 60))
                    continue
                self.bar.write(f"coderd submit: no reply to request {chunk} within {self.args.timeout:g} s: "
                               "publishing it again", file=sys.stderr)
                await self.publish(chunk, body)
            self.show_progress(self.batch_phase() if self.file_mode else "")
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)
        if self.failure:
            raise SubmitError(self.failure)

    def show_progress(self, note: str) -> None:  # tqdm on a terminal, else a line every few seconds
        now, self.bar.postfix = time.monotonic(), note
        if self.bar.disable and now - self.last_line >= LINE_EVERY:
            rate, self.last_line = (self.done - self.first) / max(time.time() - self.start, 1e-3), now
            eta = f", ETA {(self.total - self.done) / rate:.0f} s" if rate > 0 else ""
            print(f"coderd submit: {self.done}/{self.total} records ({100 * self.done // max(self.total, 1)}%)"
                  f"{eta}{'; ' + note if note else ''}", file=sys.stderr, flush=True)

    def requests(self):
        """(key, what to ask, or None when nothing is left to code) for each request message, in order."""
        if self.file_mode:
            yield "file", {"inputFile": self.header["inputFile"],
                           "outputFile": f"submit/{self.hash}/{self.path.stem}.coded.jsonl"}
            return
        reader = self.records()
        for chunk in range(self.chunks):
            valid = [raw for raw, error in islice(reader, CHUNK) if error is None]  # malformed: invalid here
            yield chunk, {"records": valid} if valid else None

    async def code(self) -> dict:
        for key, payload in self.requests():
            if key in self.answered:
                continue
            if payload is None:
                self.settle(key, [])
            elif key in self.published:
                self.adopt(key, self.message(payload))
            else:
                await self.wait(lambda: len(self.inflight) < WINDOW)
                await self.publish(key, self.message(payload))
        await self.wait(lambda: len(self.answered) >= (1 if self.file_mode else self.chunks))
        if not self.file_mode:
            counts = Counter()
            await asyncio.to_thread(write_csv, self.results(counts), self.output)
            return counts
        output = self.answer("file")  # the reply's summary: file, records, successful, ...
        with open(self.settings.outbox_dir / output["file"], encoding="utf-8", errors="replace") as lines:
            await asyncio.to_thread(write_csv, (json.loads(line) for line in lines if line.strip()), self.output)
        shutil.rmtree(self.settings.outbox_dir / "submit" / self.hash, ignore_errors=True)
        if self.header.get("copied"):
            shutil.rmtree(self.settings.inbox_dir / "submit" / self.hash, ignore_errors=True)
        return output

    def results(self, counts: Counter):
        """RecordResults in input order: the daemon's, with the malformed records put back in place."""
        from ..request.results import invalid_result
        reader = self.records()
        for chunk in range(self.chunks):
            answers = iter(self.answer(chunk))
            for raw, error in islice(reader, CHUNK):
                if (found := invalid_result(raw, error) if error else next(answers, None)) is None:
                    raise SubmitError(f"the reply to chunk {chunk} has fewer results than records sent")
                counts[found["codeStatus"]] += 1
                yield found

    # --- large files on the partner tier: one inputFile request through the batch service
    def place_in_inbox(self) -> dict | None:
        inbox = self.settings.inbox_dir.resolve()
        if self.path.is_relative_to(inbox):
            return {"mode": "file", "inputFile": str(self.path.relative_to(inbox)), "copied": False}
        target = inbox / "submit" / self.hash / self.path.name
        try:
            if not (target.is_file() and target.stat().st_size == self.path.stat().st_size):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.path, temp := target.with_name(target.name + ".copying"))
                os.replace(temp, target)
        except OSError as exc:
            print(f"coderd submit: cannot copy into the inbox ({exc.strerror}): sending chunks instead", file=sys.stderr)
            return None
        return {"mode": "file", "inputFile": str(target.relative_to(inbox)), "copied": True}

    def batch_phase(self) -> str:
        from ..batch.journal import Journal
        cid = f"submit:{self.hash}:file"
        return next((f"batch job {j.phase}" for j in Journal(self.settings.state_dir).jobs() if j.correlation_id == cid), "")


def write_csv(results, target: Path) -> None:
    """The guide's flat CSV (convert.CSV_COLUMNS, convert.flatten), written whole or not at all."""
    from .convert import CSV_COLUMNS, flatten
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            writer.writerows(flatten(result) for result in results)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
