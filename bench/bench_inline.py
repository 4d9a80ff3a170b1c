"""Benchmark of one very large inline request: what a `records` message of N records costs
`coderd run` on the public tier (the real-time worker, 300-record calls).

It starts the emulator (`--tier public`, a high --rate, --latency 0) and the daemon
(CODERD_TIER=public, CODERD_REQUESTS_PER_SECOND matching, a large CODERD_DAILY_QUOTA) in
processes of their own, publishes ONE request {"topic": "anzsco", "records": [...]} with N
inline records to a fresh request queue (reply_to: a fresh reply queue), waits for its one
reply, and prints:

  - the body size, the time from publish to reply, the reply's size and whether it carried
    `records` inline or an `output` summary (a claim-check file);
  - the daemon's RSS before the request and its peak RSS (VmHWM, read after the reply), and
    the peak as a ratio to the body size;
  - the longest event-loop stall, measured from outside: a separate process GETs the
    daemon's /healthz every 10 ms for the whole request; the longest single response time
    and the 99th percentile are reported, overall and per phase (intake: publish to the
    first coding call; coding: first to last call; reply: last call to reply received),
    with the five longest and when they began.

If the broker refuses the daemon's reply (e.g. larger than its max_message_size), the
request is nacked and delivered again: each delivery is split into the same phases, and
the benchmark stops when the request is dead-lettered (or at --timeout). A request that
needs more than the emulator's public daily quota (1,000 calls) runs with that quota lifted.

The records are short occupation texts with some variety (a few with accents and
typographic punctuation, which coderd transliterates). Each one's two texts come to at most
96 characters after cleaning, so every record is codable on the real-time endpoint; by
default each text is right-padded with spaces, as fixed-width (CHAR column) exports are, so
that a record is about 280 bytes of JSON (200,000 records: about 56 MB). Cleaning strips
the padding; `--record-bytes 0` sends the texts unpadded (about 113 bytes a record).

MB here means 10^6 bytes, for body, reply and RSS alike.

Run: .venv/bin/python bench/bench_inline.py [--records N] [--gzip] [--json] [--code-dir DIR]
     (200,000 records: about 40 s; 400,000: about 7 minutes on the code of 6b0ef03, whose
     260 MB reply the broker refuses, so the request is coded six times; see --help)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from running import LogTail, delete_queues, free_port, percentile, stop_process

ROOT = Path(__file__).resolve().parent.parent
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
CLIENT_ID, CLIENT_SECRET = "client1", "secret123"  # the emulator's defaults (the guide's)
EMULATOR_PUBLIC_DAILY_QUOTA = 1000  # calls a UTC day the emulator allows a public client
MB = 1_000_000
POLL_INTERVAL = 0.010  # seconds between /healthz probes
STATS_INTERVAL = 0.050  # seconds between probes of the emulator's call counter

# --- the records --------------------------------------------------------------------

TITLES = [
    "truck driver", "registered nurse", "software developer", "chef", "primary school teacher",
    "electrician", "accountant", "retail sales assistant", "aged care worker", "plumber",
    "carpenter", "barista", "café manager", "Māori language teacher", "forklift operator",
    "dental assistant", "civil engineer", "bookkeeper", "hairdresser", "security officer",
    "disability support worker", "early childhood educator", "police officer", "pharmacist",
    "real estate agent", "bus driver", "welder", "cleaner", "receptionist", "payroll officer",
    "data analyst", "graphic designer", "mechanic – heavy vehicles", "farm hand", "baker",
    "kitchen hand", "warehouse storeperson", "call centre operator", "ICT support technician",
    "social worker", "physiotherapist", "labourer", "sales representative", "project manager",
]
PREFIXES = ["", "", "", "", "senior ", "junior ", "casual ", "trainee ", "assistant ", "relief ", "head "]
TASKS = [
    "delivering freight", "patient care on a medical ward", "writing code and unit tests",
    "cooking meals for the restaurant", "teaching year 3", "wiring houses", "preparing tax returns",
    "serving customers and stocking shelves", "helping residents with daily living",
    "fixing pipes and drains", "building frames and decks", "making coffee", "running the café’s floor",
    "teaching te reo Māori", "moving pallets in the warehouse", "assisting the dentist",
    "designing roads and bridges", "keeping the books for small businesses", "cutting and colouring hair",
    "patrolling the shopping centre", "supporting clients in their homes", "looking after toddlers",
    "general duties policing", "dispensing medicines", "selling houses", "driving a route bus",
    "welding steel structures", "cleaning offices at night", "answering phones and greeting visitors",
    "processing the fortnightly pay run", "building reports in Excel and SQL", "designing logos",
    "servicing trucks and trailers", "feeding stock and fencing", "baking bread and pastries",
    "washing dishes", "picking and packing orders", "answering customer calls", "resetting passwords",
    "case management for families", "treating sports injuries", "digging trenches", "selling to retailers",
    "running building projects",
]
SUFFIXES = ["", "", "", " and related duties", " on weekends", " full time", " part time", " (night shift)",
            " for the council", " in a small team"]
MAX_TEXT_CHARS = 96  # occp_text + tasks_text after cleaning; the real-time limit is 100


def make_records(count: int, record_bytes: int, seed: int = 1) -> list[dict]:
    """`count` records with some variety, each padded (trailing spaces in its texts) to
    about `record_bytes` bytes of JSON; 0: no padding."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        occp = rng.choice(PREFIXES) + rng.choice(TITLES)
        tasks = rng.choice(TASKS) + rng.choice(SUFFIXES)
        if len(occp) + len(tasks) > MAX_TEXT_CHARS:
            tasks = tasks[: MAX_TEXT_CHARS - len(occp)].rstrip()
        record = {"recordId": f"r{i}", "occp_text": occp, "tasks_text": tasks}
        if record_bytes:
            pad = record_bytes - len(json.dumps(record)) - 2  # ", " between list items
            if pad > 0:
                record["occp_text"] += " " * (pad // 2)
                record["tasks_text"] += " " * (pad - pad // 2)
        records.append(record)
    return records


# --- the /healthz poller (a process of its own) -------------------------------------

def poller_main(health_url: str, stats_url: str, out_path: str) -> int:
    """GET /healthz every 10 ms (one keep-alive connection; reconnect on error) and the
    emulator's call counter every 50 ms, until SIGTERM; then write what was seen."""
    import http.client
    from urllib.parse import urlsplit

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark stops us
    samples: list[tuple[float, float, bool]] = []  # (start, seconds, ok), monotonic clock
    calls: list[tuple[float, int, int]] = []  # (when, /v1 calls, coding calls)

    def count_calls() -> None:
        import urllib.request
        while not stop.is_set():
            started = time.monotonic()
            with contextlib.suppress(Exception):  # the emulator busy or gone: try again
                with urllib.request.urlopen(stats_url, timeout=30) as response:
                    stats = json.load(response)
                calls.append((started, int(stats["v1_calls"]), int(stats["coding_calls"])))
            stop.wait(max(0.0, started + STATS_INTERVAL - time.monotonic()))

    counter = threading.Thread(target=count_calls, daemon=True)
    counter.start()
    target = urlsplit(health_url)
    connection = None
    while not stop.is_set():
        started = time.monotonic()
        ok = False
        try:
            if connection is None:
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=300)
            connection.request("GET", target.path)
            response = connection.getresponse()
            response.read()
            ok = response.status == 200
        except Exception:  # noqa: BLE001 - counted as a failed probe; reconnect
            with contextlib.suppress(Exception):
                connection.close()
            connection = None
        samples.append((started, time.monotonic() - started, ok))
        stop.wait(max(0.0, started + POLL_INTERVAL - time.monotonic()))
    counter.join(timeout=5)
    Path(out_path).write_text(json.dumps({"healthz": samples, "calls": list(calls)}))
    return 0


# --- processes and the daemon's log -------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Vm"):
            key, value = line.split(":", 1)
            parts = value.split()
            values[key] = int(parts[0]) * 1024 if parts and parts[0].isdigit() else 0
    return values


async def start_process(argv: list[str], cwd: Path = ROOT, **kwargs) -> asyncio.subprocess.Process:
    # A session of its own: a Ctrl-C reaches only the benchmark, which stops them in order.
    return await asyncio.create_subprocess_exec(*argv, cwd=str(cwd), start_new_session=True, **kwargs)


async def wait_for_event(log: LogTail, daemon: asyncio.subprocess.Process, name: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (event := log.find(name)) is None:
        if daemon.returncode is not None:
            raise RuntimeError(f"the daemon exited ({daemon.returncode}) before {name!r}:\n{log.tail_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {name!r} event from the daemon within {timeout:g}s:\n{log.tail_text()}")
        await asyncio.sleep(0.05)
    return event


# --- figures ------------------------------------------------------------------------

def log_moment(event: dict) -> float:
    """A log event's time, as a Unix time."""
    from datetime import datetime
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def loop_figures(poll: dict, published: float, attempt_ends: list[float], replied: float | None,
                 end: float) -> dict:
    """The /healthz probes from publish to the end, overall and by phase.

    Each delivery of the request (one, unless the daemon failed to reply and the broker
    delivered it again) is split by the emulator's counter of coding calls into intake
    (up to its first coding call), coding (to its last) and reply (to its reply, or its
    failed reply); `attempt_ends` are those moments. A probe counts in the phase it started in.
    """
    during = [tuple(s) for s in poll["healthz"] if s[0] >= published]
    calls = [(t, coding) for t, _, coding in poll["calls"]]

    def counter_at(moment: float) -> int:
        before = [n for t, n in calls if t <= moment]
        return before[-1] if before else (calls[0][1] if calls else 0)

    spans: list[tuple[str, int, float, float]] = []  # (phase, attempt, from, to)
    start = published
    for number, finish in enumerate(attempt_ends, 1):
        base = counter_at(start)
        inside = [(t, n) for t, n in calls if start <= t <= finish]
        top = max((n for _, n in inside), default=base)
        first = next((t for t, n in inside if n > base), None)
        last = next((t for t, n in inside if n >= top), None) if top > base else None
        if first is None:
            spans.append(("intake", number, start, finish))
        else:
            spans += [("intake", number, start, first), ("coding", number, first, last),
                      ("reply", number, last, finish)]
        start = finish
    if end > start:  # after the reply, or after the last failed reply (dead-lettered)
        spans.append(("after_reply" if replied is not None else "after_last_delivery", len(attempt_ends), start, end))

    def phase_of(moment: float) -> tuple[str, int]:
        for phase, number, lo, hi in spans:
            if lo <= moment < hi:
                return phase, number
        if moment < published or not spans:
            return "before_publish", 0
        return spans[-1][:2]

    def summary(chosen: list) -> dict:
        times = sorted(s[1] for s in chosen)
        return {"probes": len(times), "max_s": round(times[-1], 3) if times else None,
                "p99_s": round(percentile(times, 0.99), 4) if times else None,
                "failed": sum(not s[2] for s in chosen)}

    phases: dict[str, dict] = {}
    for name in ("intake", "coding", "reply", "after_reply", "after_last_delivery"):
        mine = [(lo, hi) for phase, _, lo, hi in spans if phase == name]
        if mine:
            chosen = [s for s in during if any(lo <= s[0] < hi for lo, hi in mine)]
            phases[name] = {"seconds": round(sum(hi - lo for lo, hi in mine), 2), **summary(chosen)}
            if len(mine) == 1:
                phases[name].update(from_s=round(mine[0][0] - published, 2), to_s=round(mine[0][1] - published, 2))
    worst = sorted(during, key=lambda s: -s[1])[:5]
    v1_calls = (poll["calls"][-1][1] - ([v for t, v, _ in poll["calls"] if t < published] or [0])[-1]
                if poll["calls"] else 0)
    return {
        "overall": summary(during),
        "phases": phases,
        "deliveries": len(attempt_ends),
        "longest": [{"at_s": round(s[0] - published, 2), "seconds": round(s[1], 3),
                     "phase": phase_of(s[0])[0], "delivery": phase_of(s[0])[1]} for s in worst],
        "coding_calls": (calls[-1][1] - counter_at(published)) if calls else 0,
        "v1_calls": v1_calls,
    }


async def run(args: argparse.Namespace) -> dict:
    import aio_pika

    code = Path(args.code_dir).resolve() if args.code_dir else ROOT
    if not (code / "daemon" / "__main__.py").is_file():
        raise RuntimeError(f"{code} holds no daemon/ package")
    result: dict = {"records": args.records, "gzip": args.gzip, "code_dir": str(code)}
    prefix = f"bench-inline-{uuid.uuid4().hex[:8]}"
    request_queue, reply_queue = f"{prefix}.requests", f"{prefix}.replies"
    default_reply_queue = f"{prefix}.default-replies"
    workdir = Path(tempfile.mkdtemp(prefix="bench-inline-"))
    emulator = daemon = poller = None
    connection = None
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if not args.quiet else (lambda *a: None)
    try:
        # The request body first: building it is no part of what is measured.
        records = make_records(args.records, args.record_bytes)
        text_chars = max(len(r["occp_text"].strip()) + len(r["tasks_text"].strip()) for r in records)
        body = json.dumps({"topic": "anzsco", "records": records}).encode()
        del records
        published_body = gzip.compress(body, compresslevel=6, mtime=0) if args.gzip else body
        result["body_mb"] = round(len(body) / MB, 2)
        result["published_mb"] = round(len(published_body) / MB, 2)
        result["longest_record_text_chars"] = text_chars
        say(f"body: {args.records:,} records, {len(body) / MB:.1f} MB"
            + (f" ({len(published_body) / MB:.1f} MB gzipped)" if args.gzip else ""))

        # The emulator. Its public tier allows 1000 calls a UTC day: past that, lift it.
        calls_needed = math.ceil(args.records / 300) + 5
        port = free_port()
        emulator_args = ["emulator", "--port", str(port), "--tier", "public", "--rate", str(args.rate),
                         "--latency", "0"]
        if calls_needed > EMULATOR_PUBLIC_DAILY_QUOTA:
            launcher = ("import sys; import daemon.emulator.settings as s; s.DAILY_QUOTA_BY_TIER['public'] = 0; "
                        "from daemon.cli import main; sys.exit(main(sys.argv[1:]))")
            argv = [sys.executable, "-c", launcher, *emulator_args]
            result["emulator_quota_lifted"] = True
            say(f"(the emulator's public daily quota of {EMULATOR_PUBLIC_DAILY_QUOTA} calls is lifted: "
                f"this request needs about {calls_needed})")
        else:
            argv = [sys.executable, "-m", "daemon", *emulator_args]
        with open(workdir / "emulator.log", "ab") as sink:  # noqa: ASYNC230 - opened once, for a child
            emulator = await start_process(argv, code, stdout=asyncio.subprocess.PIPE, stderr=sink)
        await asyncio.wait_for(emulator.stdout.readline(), 30)
        emulator_url = f"http://127.0.0.1:{port}"

        # The daemon.
        state = workdir / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODERD_")}
        env.update({
            "CODERD_AMQP_URL": AMQP_URL, "CODERD_API_URL": emulator_url, "CODERD_AUTH_URL": emulator_url,
            "CODERD_CLIENT_ID": CLIENT_ID, "CODERD_CLIENT_SECRET": CLIENT_SECRET,
            "CODERD_REQUEST_QUEUE": request_queue, "CODERD_DEFAULT_REPLY_QUEUE": default_reply_queue,
            "CODERD_STATE_DIR": str(state), "CODERD_INBOX_DIR": str(state / "inbox"),
            "CODERD_OUTBOX_DIR": str(state / "outbox"), "CODERD_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
            "CODERD_LOG_FORMAT": "json", "CODERD_TIER": "public",
            "CODERD_REQUESTS_PER_SECOND": str(args.rate), "CODERD_DAILY_QUOTA": str(10**7),
        })
        log_path = Path(args.daemon_log) if args.daemon_log else workdir / "coderd.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(b"")
        log = LogTail(log_path)
        with open(log_path, "ab") as sink:  # noqa: ASYNC230 - opened once, for a child
            daemon = await start_process([sys.executable, "-m", "daemon", "run"], code, env=env, stdout=sink,
                                         stderr=sink)
        listening = await wait_for_event(log, daemon, "http_listening", 60)
        await wait_for_event(log, daemon, "consuming", 60)
        health_url = f"http://127.0.0.1:{listening['port']}/healthz"

        # The broker side: a reply queue of our own (exclusive: it goes with our connection).
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel()
        replies = await channel.declare_queue(reply_queue, exclusive=True)
        got: list[tuple[float, aio_pika.abc.AbstractIncomingMessage]] = []
        replied = asyncio.Event()

        async def take(message) -> None:
            got.append((time.monotonic(), message))
            replied.set()

        await replies.consume(take, no_ack=True)

        # The poller, then a quiet second to measure the idle daemon.
        poll_out = workdir / "poll.json"
        poller = await start_process([sys.executable, str(Path(__file__).resolve()), "--_poll", health_url,
                                      f"{emulator_url}/_emulator/stats", str(poll_out)])
        await asyncio.sleep(1.0)
        rss_before = proc_status(daemon.pid)
        result["rss_before_mb"] = round(rss_before["VmRSS"] / MB, 1)
        result["peak_rss_before_request_mb"] = round(rss_before["VmHWM"] / MB, 1)

        # The request.
        say("publishing ...")
        message = aio_pika.Message(published_body, content_type="application/json",
                                   content_encoding="gzip" if args.gzip else None,
                                   correlation_id=prefix, reply_to=reply_queue,
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        published = time.monotonic()
        try:
            await channel.default_exchange.publish(message, routing_key=request_queue)
        except Exception as exc:  # noqa: BLE001 - e.g. larger than the broker's max_message_size
            result["publish_error"] = f"{type(exc).__name__}: {exc}"
            say(f"the broker did not take the request: {result['publish_error']}")
        else:
            result["publish_confirmed_s"] = round(time.monotonic() - published, 2)
            say(f"published and confirmed in {result['publish_confirmed_s']:.1f} s; waiting for the reply ...")

        deadline = published + args.timeout
        unconfirmed = 0
        while not replied.is_set() and "publish_error" not in result:
            if daemon.returncode is not None:
                result["daemon_exit"] = daemon.returncode
                break
            if time.monotonic() > deadline:
                break
            failures = sum(e.get("event") == "reply_not_confirmed" for e in log.poll())
            if failures > unconfirmed:
                unconfirmed = failures
                say(f"the daemon's reply was not confirmed by the broker ({failures} so far): the request is "
                    f"nacked and delivered again; waiting until it is dead-lettered or --timeout ...")
            if failures and await queue_depth(connection, f"{request_queue}.dead"):
                result["dead_lettered"] = True
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(replied.wait(), 1.0)
        reply_time = got[0][0] if got else None
        if got:
            # Let the daemon finish the request (ack, log) while still probing it.
            with contextlib.suppress(RuntimeError):
                await wait_for_event(log, daemon, "request_done", 30)
        end = time.monotonic()
        status = proc_status(daemon.pid) if daemon.returncode is None else None
        await stop_process(poller, 30)
        poller = None
        poll = json.loads(poll_out.read_text()) if poll_out.exists() else {"healthz": [], "calls": []}

        # Figures.
        if status is not None:
            result["peak_rss_mb"] = round(status["VmHWM"] / MB, 1)
            result["rss_after_mb"] = round(status["VmRSS"] / MB, 1)
            result["peak_rss_to_body"] = round(status["VmHWM"] / len(body), 2)
            result["peak_rss_growth_to_body"] = round((status["VmHWM"] - rss_before["VmRSS"]) / len(body), 2)
        # Each failed reply ends one delivery of the request (log time -> monotonic clock).
        offset = time.time() - time.monotonic()
        attempt_ends = sorted(log_moment(e) - offset for e in log.poll() if e.get("event") == "reply_not_confirmed")
        if reply_time is not None:
            attempt_ends.append(reply_time)
        elif not (result.get("dead_lettered") and attempt_ends):
            attempt_ends.append(end)  # still waiting when we stopped
        result["loop"] = loop_figures(poll, published, attempt_ends, reply_time, end)
        if reply_time is None:
            result["reply"] = None
            result["waited_s"] = round(end - published, 1)
        else:
            result["reply_s"] = round(reply_time - published, 2)
            result["reply"] = describe_reply(got[0][1], state / "outbox")
            result["replies_received"] = len(got)
        notable = {}
        for event in log.poll():
            if event.get("level") in ("warning", "error", "critical") or event.get("event") in (
                    "request_done", "reply_not_confirmed", "request_error", "task_crashed", "broker_reconnected"):
                notable[event.get("event")] = notable.get(event.get("event"), 0) + 1
        result["daemon_events"] = notable
        failures = [e.get("error") for e in log.poll() if e.get("event") == "reply_not_confirmed"]
        if failures:
            result["reply_failures"] = {"count": len(failures), "first": str(failures[0])[:300]}
        if args.daemon_log:
            result["daemon_log"] = str(log_path)
        return result
    finally:
        with contextlib.suppress(Exception):
            await stop_process(poller, 10)
        with contextlib.suppress(Exception):
            await stop_process(daemon, 30)
        with contextlib.suppress(Exception):
            await stop_process(emulator, 10)
        await delete_queues(AMQP_URL, [request_queue, f"{request_queue}.dead", reply_queue, default_reply_queue])
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
        shutil.rmtree(workdir, ignore_errors=True)


async def queue_depth(connection, name: str) -> int:
    """Messages in a queue (0 when it does not exist), on a channel of its own: a passive
    declare of a missing queue closes its channel."""
    try:
        channel = await connection.channel()
    except Exception:  # noqa: BLE001
        return 0
    try:
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0
    except Exception:  # noqa: BLE001 - not there (yet)
        return 0
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


def describe_reply(message, outbox: Path) -> dict:
    raw = message.body
    info: dict = {"size_mb": round(len(raw) / MB, 2), "size_bytes": len(raw),
                  "content_encoding": message.content_encoding}
    body = raw
    if message.content_encoding == "gzip":
        body = gzip.decompress(raw)
        info["uncompressed_mb"] = round(len(body) / MB, 2)
    try:
        reply = json.loads(body)
    except ValueError as exc:
        info["carries"] = f"not JSON ({exc})"
        return info
    info["status"] = reply.get("status")
    if reply.get("error"):
        error = reply["error"]
        info["error"] = {"code": error.get("code"), "message": str(error.get("message"))[:300]}
    if reply.get("records") is not None:
        info["carries"] = "records"
        outcomes: dict[str, int] = {}
        for record in reply["records"]:
            outcomes[record.get("codeStatus")] = outcomes.get(record.get("codeStatus"), 0) + 1
        info["records"] = len(reply["records"])
        info["outcomes"] = outcomes
    elif reply.get("output") is not None:
        info["carries"] = "output"
        info["output"] = reply["output"]
        name = reply["output"].get("file")
        if isinstance(name, str) and (outbox / name).is_file():
            info["output_file_mb"] = round((outbox / name).stat().st_size / MB, 2)
    else:
        info["carries"] = "neither records nor output"
    return info


def report(result: dict) -> str:
    out = []
    n = result["records"]
    body = f"{result['body_mb']:.1f} MB" + (f" (published gzipped: {result['published_mb']:.1f} MB, "
                                             f"content_encoding gzip)" if result["gzip"] else "")
    out.append(f"one inline request of {n:,} records (public tier; MB = 10^6 bytes)"
               + (f"; code from {result['code_dir']}" if result["code_dir"] != str(ROOT) else ""))
    out.append(f"  body:                     {body}; longest record text {result['longest_record_text_chars']} "
               f"characters after cleaning")
    if "publish_error" in result:
        out.append(f"  publish failed:           {result['publish_error']}")
        return "\n".join(out)
    out.append(f"  publish confirmed after:  {result['publish_confirmed_s']:.2f} s")
    reply = result.get("reply")
    if reply is None:
        if "daemon_exit" in result:
            why = f"the daemon exited with {result['daemon_exit']}"
        elif result.get("dead_lettered"):
            why = f"the request was dead-lettered after {result['waited_s']:.0f} s"
        else:
            why = f"none within {result['waited_s']:.0f} s"
        out.append(f"  reply:                    NONE ({why})")
    else:
        out.append(f"  publish to reply:         {result['reply_s']:.2f} s")
        size = f"{reply['size_mb']:.1f} MB" if reply["size_mb"] >= 0.1 else f"{reply['size_bytes']:,} bytes"
        if reply.get("content_encoding"):
            size += f" ({reply['content_encoding']}; {reply.get('uncompressed_mb', '?')} MB uncompressed)"
        carries = reply.get("carries")
        if carries == "records":
            tally = ", ".join(f"{k} {v:,}" for k, v in reply["outcomes"].items())
            detail = f"records inline: {reply['records']:,} ({tally})"
        elif carries == "output":
            detail = f"output summary (claim-check file): {json.dumps(reply['output'])}"
            if "output_file_mb" in reply:
                detail += f", file {reply['output_file_mb']:.1f} MB"
        else:
            detail = carries
        out.append(f"  reply:                    {size}, status {reply.get('status')}, {detail}")
        if reply.get("error"):
            out.append(f"  reply error:              {reply['error']['code']}: {reply['error']['message']}")
        if result.get("replies_received", 1) > 1:
            out.append(f"  replies received:         {result['replies_received']}")
    if result.get("reply_failures"):
        failures = result["reply_failures"]
        out.append(f"  replies refused:          {failures['count']} (the request delivered "
                   f"{result['loop']['deliveries']} times); first: {failures['first']}")
    if "peak_rss_mb" in result:
        out.append(f"  daemon RSS before:        {result['rss_before_mb']:.0f} MB "
                   f"(peak before the request {result['peak_rss_before_request_mb']:.0f} MB)")
        out.append(f"  daemon peak RSS (VmHWM):  {result['peak_rss_mb']:.0f} MB = {result['peak_rss_to_body']:.1f}x "
                   f"the body (growth over RSS before: {result['peak_rss_growth_to_body']:.1f}x the body); "
                   f"RSS after {result['rss_after_mb']:.0f} MB")
    loop = result["loop"]
    overall = loop["overall"]
    if overall["probes"]:
        out.append(f"  /healthz (event loop), {overall['probes']:,} probes every 10 ms from another process:")
        out.append(f"    longest response:       {overall['max_s']:.3f} s; p99 {overall['p99_s'] * 1000:.1f} ms"
                   + (f"; {overall['failed']} failed" if overall["failed"] else ""))
        many = loop["deliveries"] > 1
        for phase, figures in loop["phases"].items():
            if figures["probes"]:
                where = (f"{figures['from_s']:.1f}-{figures['to_s']:.1f} s after publish" if "from_s" in figures
                         else f"{figures['seconds']:.1f} s over {loop['deliveries']} deliveries")
                out.append(f"    {phase + ':':<24}longest {figures['max_s']:.3f} s, "
                           f"p99 {figures['p99_s'] * 1000:.1f} ms ({where}, {figures['probes']:,} probes)")
        out.append("    longest five:           " + ", ".join(
            f"{s['seconds']:.3f} s at +{s['at_s']:.1f} s ({s['phase']}{' ' + str(s['delivery']) if many else ''})"
            for s in loop["longest"]))
    out.append(f"  seen by the emulator:     {loop['coding_calls']} coding calls, {loop['v1_calls']} /v1 calls in all"
               + ("  (its public daily quota lifted)" if result.get("emulator_quota_lifted") else ""))
    if result.get("daemon_events"):
        out.append("  daemon log: " + ", ".join(f"{k} x{v}" for k, v in result["daemon_events"].items()))
    return "\n".join(out)


def count(text: str) -> int:
    return int(text.replace(",", "").replace("_", ""))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_poll"]:
        return poller_main(*argv[1:4])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=count, default=200_000, help="inline records (default 200,000)")
    parser.add_argument("--gzip", action="store_true",
                        help="publish the body gzip-compressed, with content_encoding gzip")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    parser.add_argument("--record-bytes", type=int, default=280,
                        help="pad each record's texts with trailing spaces to about this many bytes of JSON "
                             "(default 280: 200,000 records are about 56 MB); 0: no padding")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="the emulator's --rate and CODERD_REQUESTS_PER_SECOND (default 1000)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for the reply (default 1200)")
    parser.add_argument("--daemon-log", help="keep the daemon's JSON log at this path")
    parser.add_argument("--code-dir", help="run the daemon and the emulator from this tree's daemon/ package "
                                           "(e.g. `git archive HEAD | tar -x -C DIR`); default: this repository")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.records < 1:
        parser.error("--records must be at least 1")

    async def guarded() -> dict:
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run(args)

    try:
        result = asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: processes stopped, queues deleted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench_inline: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0 if result.get("reply") is not None else 1


if __name__ == "__main__":
    sys.exit(main())
