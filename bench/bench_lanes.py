"""Lanes benchmark (issue 12): is a person's single record answered within seconds while a
bulk load saturates the coding API, does bulk still run at the API's limit, and is a small
bulk request not stuck behind a huge one?

Each run starts, each in its own process, the emulator at the API's real limit (public tier,
--rate 1 call/s, --latency 1 s, 300 records a call; its public daily quota lifted as in
bench/soak.py) and `python -m daemon run` (CODERD_*: tier public, 1 request/s,
CODERD_CACHE=false so every record costs API work, CODERD_DAILY_QUOTA=10,000,000 so quota
pacing never holds a call: the even pace is then ~115 calls/s), on unique queues
(bench-lanes-<hex>.requests and its .interactive lane). With the daemon consuming:

  A  one bulk request of 24,000 records (distinct texts), published at t=0;
  B  50,000 single-record bulk messages published as fast as possible, t=0 when the last
     is confirmed (the daemon consumes meanwhile);

then an interactive single-record request every 2 s from t=4 s (--interactive, >= 10) and
a 5-record bulk request at t=4 s. Lane on: the interactive requests go to the interactive
queue; lane off: the same messages go to the bulk queue (one FIFO). app_id: bench-bulk,
bench-small, bench-forms. A run stops once the interactive series and the small request
are answered (each waited for at most --tail s after its last publish; ">" marks a lower
bound), not waiting for the bulk load; the daemon and emulator are then stopped and the
queues purged and deleted.

Per run: interactive latency p50/p99/max (publish -> reply received), the small request's
latency, bulk records/s over 300/s in the saturated window (t=5 s to the last interactive
reply: records the API coded, from /_emulator/stats polled every 0.1 s, between call
boundaries, less the interactive and small ones; for B also bulk replies received), and
the emulator's throttle violations (must be 0). Targets (lane on): interactive max <= 3 s,
bulk >= 0.9 of 300/s, the small request <= 15 s (load A only: the issue sets it behind a
huge request; under B it waits in the broker behind the flood). Exit code 1 on a MISS.

Run: .venv/bin/python bench/bench_lanes.py [--load A|B|both] [--interactive 10] [--seed 1]
(both loads: 4 runs, about 3.5 minutes on 2 cores; best on an otherwise idle machine)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak  # bench/soak.py: its process, log and record-text helpers

FULL = 300  # records a call; at 1 call/s the limit is 300 records/s
BIG, FLOOD, SMALL = 24_000, 50_000, 5
START, EVERY, SMALL_AT, WINDOW_FROM = 4.0, 2.0, 4.0, 5.0
TARGET_MAX, TARGET_BULK, TARGET_SMALL = 3.0, 0.9, 15.0
LAUNCHER = ("import sys; import daemon.emulator.settings as s; s.DAILY_QUOTA_BY_TIER['public'] = 0; "
            "from daemon.cli import main; sys.exit(main(sys.argv[1:]))")


def record(rng: random.Random, n: int, tag: str) -> dict:
    """A valid record whose text no other record of the run has (the cache is off anyway)."""
    occp = f"{rng.choice(soak.TITLES)} {tag}{n}"
    return {"recordId": f"{tag}{n}", "occp_text": occp, "tasks_text": rng.choice(soak.TASKS)[: 95 - len(occp)]}


def boundary_rate(points: list[tuple[float, float]], start: float, end: float) -> tuple[float, float, float] | None:
    """(rate, t_from, t_to) from the first (time, cumulative count) point at/after `start`
    to the last at/before `end` (points taken at call boundaries)."""
    inside = [p for p in points if start <= p[0] <= end]
    if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1:
        return None
    (t1, c1), (t2, c2) = inside[0], inside[-1]
    return (c2 - c1) / (t2 - t1), t1, t2


class Run:
    def __init__(self, load: str, lane: bool, args: argparse.Namespace, workdir: Path) -> None:
        self.load, self.lane, self.args = load, lane, args
        self.prefix = f"bench-lanes-{uuid.uuid4().hex[:10]}"
        self.queue = f"{self.prefix}.requests"
        self.replies, self.bulk_replies = f"{self.prefix}.replies", f"{self.prefix}.bulk-replies"
        self.default_replies = f"{self.prefix}.default-replies"
        self.workdir = workdir / f"{load}-{'on' if lane else 'off'}"
        self.workdir.mkdir()
        self.rng = random.Random(f"{args.seed}-{load}")  # the same texts lane on and off
        # interactive and small requests: correlation_id -> publish time, reply time, a failed reply
        self.sent, self.got, self.failed = {}, {}, {}
        self.bulk_stamps, self.samples, self.t0 = [], [], math.inf  # bulk reply times; (time, emulator stats)
        self.emulator = self.daemon = self.connection = None

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/_emulator/stats", timeout=10) as response:
            return json.load(response)

    async def start(self) -> None:
        port = soak.free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.emulator = await soak.start_process(
            [sys.executable, "-c", LAUNCHER, "emulator", "--port", str(port), "--tier", "public",
             "--rate", "1", "--latency", "1", "--client-id", soak.CLIENT_ID, "--client-secret", soak.CLIENT_SECRET],
            self.workdir / "emulator.log")
        for _ in range(300):
            try:
                await asyncio.to_thread(self.stats)
                break
            except OSError:
                await asyncio.sleep(0.2)
        else:
            raise RuntimeError("the emulator did not answer within 60 s")
        state = self.workdir / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODERD_")}
        env.update({
            "CODERD_AMQP_URL": soak.AMQP_URL, "CODERD_API_URL": self.url, "CODERD_AUTH_URL": self.url,
            "CODERD_CLIENT_ID": soak.CLIENT_ID, "CODERD_CLIENT_SECRET": soak.CLIENT_SECRET, "CODERD_TIER": "public",
            "CODERD_REQUEST_QUEUE": self.queue, "CODERD_INTERACTIVE_QUEUE": f"{self.queue}.interactive",
            "CODERD_DEFAULT_REPLY_QUEUE": self.default_replies, "CODERD_STATE_DIR": str(state),
            "CODERD_INBOX_DIR": str(state / "inbox"), "CODERD_OUTBOX_DIR": str(state / "outbox"),
            "CODERD_HTTP_LISTEN": "127.0.0.1:0", "CODERD_LOG_FORMAT": "json", "CODERD_REQUESTS_PER_SECOND": "1",
            "CODERD_DAILY_QUOTA": str(10**7), "CODERD_CACHE": "false"})
        self.log = soak.LogTail(self.workdir / "coderd.log")
        self.daemon = await soak.start_process([sys.executable, "-m", "daemon", "run"], self.log.path, env)
        deadline = time.monotonic() + 60
        while not self.log.count("consuming"):
            if self.daemon.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start:\n{self.log.tail_text()}")
            await asyncio.sleep(0.1)
        self.connection = await aio_pika.connect(soak.AMQP_URL)
        self.channel = await self.connection.channel()
        for name, handler in ((self.replies, self.on_reply), (self.bulk_replies, self.on_bulk_reply)):
            queue = await self.channel.declare_queue(name, durable=True)
            await queue.consume(handler, no_ack=True)

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def on_reply(self, msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        if msg.correlation_id in self.sent and msg.correlation_id not in self.got:
            self.got[msg.correlation_id] = self.now()
            body = json.loads(msg.body)
            statuses = {r.get("codeStatus") for r in body.get("records", [])}  # "unsuccessful": coded, no code
            if body.get("status") != "completed" or not statuses <= {"successful", "unsuccessful"}:
                self.failed[msg.correlation_id] = json.dumps(body)[:300]

    async def on_bulk_reply(self, msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.bulk_stamps.append(self.now())

    async def publish(self, body: dict, cid: str, queue: str, reply_to: str, app_id: str) -> None:
        await self.channel.default_exchange.publish(aio_pika.Message(
            json.dumps(body).encode(), correlation_id=cid, reply_to=reply_to, app_id=app_id,
            content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)

    async def sample(self) -> None:
        while True:
            stats = await asyncio.to_thread(self.stats)
            self.samples.append((self.now(), stats))
            await asyncio.sleep(0.1)

    async def send_at(self, at: float, cid: str, body: dict, queue: str, app_id: str) -> None:
        await asyncio.sleep(max(0.0, at - self.now()))
        self.sent[cid] = self.now()
        await self.publish(body, cid, queue, self.replies, app_id)

    async def go(self) -> None:
        args = self.args
        if self.load == "A":
            big = {"topic": "anzsco", "records": [record(self.rng, i, "a") for i in range(BIG)]}
            self.t0 = time.monotonic()
            await self.publish(big, "big", self.queue, self.bulk_replies, "bench-bulk")
        else:
            self.t0 = time.monotonic()  # provisional: reset once the flood is in the broker
            for first in range(0, FLOOD, 1000):
                await asyncio.gather(*(self.publish({"topic": "anzsco", "record": record(self.rng, i, "b")}, f"b{i}",
                                                    self.queue, self.bulk_replies, "bench-bulk")
                                       for i in range(first, min(first + 1000, FLOOD))))
            shift = self.now()
            self.t0 += shift
            self.bulk_stamps = [t - shift for t in self.bulk_stamps]
            self.publish_seconds = shift
        sampler = asyncio.create_task(self.sample())
        lane = f"{self.queue}.interactive" if self.lane else self.queue
        sends = [self.send_at(SMALL_AT, "small", {"topic": "anzsco", "records": [
            record(self.rng, i, "s") for i in range(SMALL)]}, self.queue, "bench-small")]
        sends += [self.send_at(START + EVERY * k, f"i{k}", {"topic": "anzsco", "record": record(self.rng, k, "i")},
                               lane, "bench-forms") for k in range(args.interactive)]
        await asyncio.gather(*sends)
        last = START + EVERY * (args.interactive - 1)
        while ((any(c not in self.got for c in self.sent if c != "small") and self.now() < last + args.tail)
               or ("small" not in self.got and self.now() < SMALL_AT + args.tail)):
            await asyncio.sleep(0.05)
        self.end = self.now()
        await asyncio.sleep(0.3)
        sampler.cancel()

    async def stop(self) -> None:
        if self.daemon is not None:
            self.log.poll()
            self.log_events = list(self.log.events)
            await soak.stop_process(self.daemon, 15)
        if self.connection is not None:
            await self.channel.close()  # our reply consumers first: then the queues can go quietly
            channel = await self.connection.channel()
            for name in (self.queue, f"{self.queue}.dead", f"{self.queue}.interactive",
                         f"{self.queue}.interactive.dead", self.replies, self.bulk_replies, self.default_replies):
                try:
                    queue = await channel.get_queue(name, ensure=True)  # passive: fails if never declared
                    await queue.purge()
                    await queue.delete(if_unused=False, if_empty=False)
                except aio_pika.exceptions.AMQPError:  # not declared in this run: the channel is closed, open another
                    channel = await self.connection.channel()
            await self.connection.close()
        await soak.stop_process(self.emulator, 10)

    def result(self) -> dict:
        inter = [f"i{k}" for k in range(self.args.interactive)]
        waits = sorted(self.got[c] - self.sent[c] if c in self.got else math.inf for c in inter)
        answered_times = [self.got[c] for c in inter if c in self.got]
        end = max(answered_times) if len(answered_times) == len(inter) else self.end
        calls = [(t, s["records_coded"]) for (t, s), (_, prev) in zip(self.samples[1:], self.samples)
                 if s["records_coded"] != prev["records_coded"]]
        api = boundary_rate(calls, WINDOW_FROM, end)
        out = {"p50": soak.percentile(waits, 0.5), "p99": soak.percentile(waits, 0.99), "max": waits[-1],
               "answered": len(answered_times), "censor": self.end - self.sent[inter[-1]],
               "small": self.got["small"] - self.sent["small"] if "small" in self.got else math.inf,
               "small_censor": self.end - self.sent["small"], "failed": self.failed,
               "throttled": self.samples[-1][1]["throttled"] if self.samples else None,
               "gaps": self.samples[-1][1]["throttled_gaps"] if self.samples else [],
               "calls": self.samples[-1][1]["coding_calls"] if self.samples else 0, "end": end,
               "publish_seconds": getattr(self, "publish_seconds", 0.0)}
        if api:
            rate, t1, t2 = api
            lane_records = sum(1 if c.startswith("i") else SMALL for c, t in self.got.items() if t1 < t <= t2)
            out["bulk"], out["window"] = (rate - lane_records / (t2 - t1)) / FULL, (t1, t2)
            out["partial"] = [c - p for (t, c), (_, p) in zip(calls[1:], calls) if t1 < t <= t2 and c - p < FULL]
        if self.load == "B":
            s = self.bulk_stamps
            bursts = [(t, i) for i, t in enumerate(s) if i == 0 or t - s[i - 1] > 0.25]
            answered = boundary_rate(bursts, WINDOW_FROM, end)
            out["replied"] = answered[0] / FULL if answered else None
        out["warnings"] = Counter(e.get("event") for e in self.log_events
                                  if e.get("level") in ("warning", "error", "critical") or e.get("event") == "unparsed")
        return out


def secs(value: float | None, censor: float) -> str:
    return "-" if value is None else f"> {censor:.1f}" if math.isinf(value) else f"{value:.2f}"


def table(load: str, on: dict, off: dict, n: int) -> tuple[list[str], bool]:
    title = (f"load A: one {BIG:,}-record bulk request at t=0" if load == "A" else
             f"load B: {FLOOD:,} single-record bulk messages before t=0 (published in "
             f"{on['publish_seconds']:.1f} s / {off['publish_seconds']:.1f} s)")
    rows = [(f"interactive p50 (s), {n} requests", lambda r: secs(r["p50"], r["censor"])),
            ("interactive p99 (s)", lambda r: secs(r["p99"], r["censor"])),
            ("interactive max (s)", lambda r: secs(r["max"], r["censor"])),
            ("interactive answered in the run", lambda r: f"{r['answered']}/{n}"),
            (f"small request, {SMALL} records (s)", lambda r: secs(r["small"], r["small_censor"])),
            ("bulk records/s over 300/s", lambda r: f"{r['bulk']:.3f}" if "bulk" in r else "-"),
            ("  window (s)", lambda r: "{:.1f}-{:.1f}".format(*r["window"]) if "window" in r else "-")]
    if load == "B":
        rows.append(("  bulk replies received /s over 300/s",
                     lambda r: f"{r['replied']:.3f}" if r.get("replied") else "-"))
    rows += [("coding calls in the run", lambda r: str(r["calls"])),
             ("  calls in the window under 300 records", lambda r: str(r.get("partial", "-"))),
             ("throttle violations (gaps, s)", lambda r: f"{r['throttled']} {r['gaps'] or ''}"),
             ("failed replies (interactive/small)", lambda r: str(len(r["failed"])))]
    lines = [title, f"  {'':<38}{'lane on':>14}{'lane off':>14}"]
    lines += [f"  {name:<38}{get(on):>14}{get(off):>14}" for name, get in rows]
    lines += [f"  daemon warnings/errors, lane {lane}: " + (", ".join(f"{k} x{v}" for k, v in r["warnings"].items())
                                                         or "none") for lane, r in (("on", on), ("off", off))]
    verdicts = [(f"interactive max <= {TARGET_MAX:g} s (lane on)", on["max"] <= TARGET_MAX,
                 secs(on["max"], on["censor"])),
                (f"bulk >= {TARGET_BULK} of 300/s (lane on)", on.get("bulk", 0) >= TARGET_BULK,
                 f"{on.get('bulk', 0):.3f}")]
    if load == "A":
        verdicts.append((f"small request <= {TARGET_SMALL:g} s (lane on)", on["small"] <= TARGET_SMALL,
                         secs(on["small"], on["small_censor"])))
    verdicts.append(("throttle violations = 0 (lane on / off)", on["throttled"] == 0 and off["throttled"] == 0,
                     f"{on['throttled']} / {off['throttled']}"))
    lines += [f"  {'PASS' if ok else 'MISS'}  {name}: {shown}" for name, ok, shown in verdicts]
    return lines, all(ok for _, ok, _ in verdicts)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--load", choices=["A", "B", "both"], default="both")
    parser.add_argument("--interactive", type=int, default=10, help="interactive requests, 2 s apart (>= 10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the record texts")
    parser.add_argument("--tail", type=float, default=30.0,
                        help="seconds after the last interactive request after which a run stops anyway")
    args = parser.parse_args()
    if args.interactive < 10:
        parser.error("--interactive must be at least 10 (the issue's max is over at least 10)")
    started, ok = time.monotonic(), True
    with tempfile.TemporaryDirectory(prefix="bench-lanes-") as tmp:
        for load in (["A", "B"] if args.load == "both" else [args.load]):
            results = {}
            for lane in (True, False):
                run = Run(load, lane, args, Path(tmp))
                print(f"load {load}, lane {'on' if lane else 'off'} ({run.prefix}) ...", file=sys.stderr, flush=True)
                try:
                    await run.start()
                    await run.go()
                finally:
                    await run.stop()
                results[lane] = run.result()
                for cid, body in results[lane]["failed"].items():
                    print(f"  failed reply {cid}: {body}", file=sys.stderr)  # the whole reply, for the record
            lines, passed = table(load, results[True], results[False], args.interactive)
            ok &= passed
            print("\n".join(lines) + "\n", flush=True)
    print(f"total run time {time.monotonic() - started:.0f} s; {'all targets PASS' if ok else 'some targets MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
