"""Soak test: `coderd run` under a mixed load while faults land at random (seeded) times.

It starts, each in a process of its own, the emulator of the coding API (public tier,
--rate 2 calls/s and --latency 0.5 s by default, so that calls are slow enough for faults
to land mid-call; its public daily quota lifted) and the daemon (CODERD_* variables, as
the benchmarks do), the daemon's link to the broker going through a TCP proxy in this
process. For --minutes it publishes (each request with its own correlation_id, reply_to a
durable reply queue of its own):

  - single-record requests at a steady rate (--single-rate a second), a quarter of them
    repeating a text sent before;
  - now and then a request of a few hundred records (some repeated texts, a few invalid
    records);
  - now and then an invalid body (not JSON, no topic, NaN, a path out of the inbox,
    mode batch on the public tier, an unknown topic, ...);
  - now and then a small inputFile request (JSONL or CSV, placed in the inbox);

and injects faults at random times, each kind in turn (a shuffled bag, seeded by --seed):

  cut        the proxy drops every broker connection of the daemon at once;
  close      `rabbitmqctl close_connection` of the daemon's and this script's connections
             (with --close-all-connections: `rabbitmqctl close_all_connections`, which
             also closes every other client of the broker: other people's tests too);
  api_500    the emulator answers a fraction (error_rate) of calls 500 for a while;
  api_stall  the next 1-3 calls hang 25 s (longer than the daemon's call timeout);
  api_429    the next 3-10 calls are answered 429 Too Many Requests;
  kill       kill -9 of the daemon, then a restart on the same state_dir (log appended);
  disk_full  state_dir (a small tmpfs; root only, else this fault is skipped with a note)
             filled with a file for a while, then the file removed.

Then it stops injecting, waits until every request is answered (or --drain-timeout),
and prints one summary: requests sent, answered, duplicated, lost (must be 0), failed
replies by error code, extra API records spent on redeliveries, the longest wait and the
p50/p99, throttle violations seen by the emulator (must be 0), faults by kind with their
times, and what the daemon's log says (tracebacks, warnings, slow requests). Exit code 1
if a request was lost or the emulator saw a throttle violation; 2 if the run could not be
set up. Processes, queues and the mount are cleaned up at the end, also on Ctrl-C; the
logs are kept in the work directory (printed).

Run: .venv/bin/python bench/soak.py [--minutes 10] [--seed 1] [--json]   (as root for disk_full)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from proxy import TcpProxy  # noqa: E402 - the fault tests' proxy, shared
from running import LogTail, delete_queues, free_port, percentile, stop_process  # noqa: E402

BROKER_HOST, BROKER_PORT = "127.0.0.1", 5672
AMQP_URL = f"amqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}/"
CLIENT_ID, CLIENT_SECRET = "client1", "secret123"  # the emulator's defaults (the guide's)
DAEMON_CALL_TIMEOUT = 20.0  # seconds the daemon waits for a call (README): stalls last longer
STALL_SECONDS = 25.0
FAULT_KINDS = ["cut", "cut", "close", "api_500", "api_stall", "api_429", "kill", "disk_full"]
API_FAULTS = {"api_500", "api_stall", "api_429"}
# The least time 6 tries of a record take with the daemon's back-off (1 s doubling, each
# delay drawn from [d/2, d]): 0.5 + 1 + 2 + 4 + 8 s. An upstream_error after fewer seconds of
# API faults than this means the daemon gave up sooner than its retry policy says.
MIN_RETRY_SECONDS = 15.5


# --- processes and logs ----------------------------------------------------------------

def _die_with_parent() -> None:  # runs in the child, before exec
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def start_process(argv: list[str], log_path: Path, env: dict | None = None) -> asyncio.subprocess.Process:
    """A child in a session of its own (a Ctrl-C reaches only us: we stop it in order), its
    output appended to `log_path`; it is killed if this script dies without cleaning up."""
    with open(log_path, "ab") as sink:  # noqa: ASYNC230 - opened once, for a child
        return await asyncio.create_subprocess_exec(
            *argv, cwd=str(ROOT), env=env, stdout=sink, stderr=sink, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent)


def hms(wall: float) -> str:
    return datetime.fromtimestamp(wall).strftime("%H:%M:%S")


# --- the load --------------------------------------------------------------------------

TITLES = [
    "truck driver", "registered nurse", "software developer", "chef", "primary school teacher",
    "electrician", "accountant", "retail sales assistant", "aged care worker", "plumber",
    "carpenter", "barista", "cafe manager", "forklift operator", "dental assistant", "civil engineer",
    "bookkeeper", "hairdresser", "security officer", "disability support worker",
    "early childhood educator", "police officer", "pharmacist", "real estate agent", "bus driver",
    "welder", "cleaner", "receptionist", "payroll officer", "data analyst", "graphic designer",
    "mechanic - heavy vehicles", "farm hand", "baker", "kitchen hand", "warehouse storeperson",
    "call centre operator", "ICT support technician", "social worker", "physiotherapist", "labourer",
]
PREFIXES = ["", "", "", "senior ", "junior ", "casual ", "trainee ", "assistant ", "relief ", "head "]
TASKS = [
    "delivering freight", "patient care on a medical ward", "writing code and unit tests",
    "cooking meals for the restaurant", "teaching year 3", "wiring houses", "preparing tax returns",
    "serving customers and stocking shelves", "helping residents with daily living",
    "fixing pipes and drains", "building frames and decks", "making coffee", "running the cafe floor",
    "moving pallets in the warehouse", "assisting the dentist", "designing roads and bridges",
    "keeping the books for small businesses", "cutting and colouring hair", "patrolling the shopping centre",
    "supporting clients in their homes", "looking after toddlers", "general duties policing",
    "dispensing medicines", "selling houses", "driving a route bus", "welding steel structures",
    "cleaning offices at night", "answering phones and greeting visitors", "processing the pay run",
    "building reports in Excel and SQL", "designing logos", "servicing trucks and trailers",
    "feeding stock and fencing", "baking bread and pastries", "washing dishes", "picking and packing orders",
]
SUFFIXES = ["", "", "", " on weekends", " full time", " part time", " (night shift)", " for the council"]


class Texts:
    """Valid record texts (4-90 characters together after cleaning), some repeated."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sent: list[tuple[str, str]] = []

    def fresh(self) -> tuple[str, str]:
        rng = self.rng
        occp = rng.choice(PREFIXES) + rng.choice(TITLES)
        tasks = rng.choice(TASKS) + rng.choice(SUFFIXES)
        if len(occp) + len(tasks) > 90:
            tasks = tasks[: 90 - len(occp)].rstrip()
        pair = (occp, tasks)
        self.sent.append(pair)
        if len(self.sent) > 200:
            self.sent.pop(0)
        return pair

    def pick(self, repeat_fraction: float) -> tuple[tuple[str, str], bool]:
        if self.sent and self.rng.random() < repeat_fraction:
            return self.rng.choice(self.sent), True
        return self.fresh(), False


def invalid_record(rng: random.Random, rid: str) -> dict:
    """A record the daemon answers `invalid` without a call (never near a length boundary)."""
    kind = rng.randrange(4)
    if kind == 0:
        return {"recordId": rid, "occp_text": "x", "tasks_text": ""}  # 1 character
    if kind == 1:
        return {"recordId": rid, "occp_text": "senior " * 10 + "developer", "tasks_text": "writing code " * 6}  # ~150
    if kind == 2:
        return {"recordId": 12345, "occp_text": "chef", "tasks_text": "cooking"}  # recordId not a string
    return {"recordId": rid, "occp_text": "chef", "tasks_text": ["cooking"]}  # a text not a string


VALID_RECORD = {"occp_text": "chef", "tasks_text": "cooking meals"}
INVALID_BODIES: list[tuple[str, bytes | dict, str]] = [
    ("not_json", b"this is not JSON", "invalid_message"),
    ("no_payload", {"topic": "anzsco"}, "invalid_message"),
    ("empty_records", {"topic": "anzsco", "records": []}, "invalid_message"),
    ("no_topic", {"records": [VALID_RECORD]}, "invalid_message"),
    ("bad_suggestions", {"topic": "anzsco", "record": VALID_RECORD, "numberOfSuggestions": 99}, "invalid_message"),
    ("not_object", b"[1, 2, 3]", "invalid_message"),
    ("nan", b'{"topic": "anzsco", "record": {"occp_text": NaN, "tasks_text": "cooking"}}', "invalid_message"),
    ("bad_utf8", b'{"topic": "anzsco", "record": {"occp_text": "chef \xff\xfe", "tasks_text": "x"}}',
     "invalid_message"),
    ("batch_on_public", {"topic": "anzsco", "mode": "batch", "record": VALID_RECORD}, "not_supported"),
    ("path_escape", {"topic": "anzsco", "inputFile": "../../etc/passwd"}, "path_not_allowed"),
    ("missing_input", {"topic": "anzsco", "inputFile": "soak/no-such-file.jsonl"}, "input_not_found"),
    ("unknown_topic", {"topic": "nosuchtopic", "record": VALID_RECORD}, "unknown_topic"),
]


@dataclass
class Request:
    cid: str
    kind: str  # single, large, invalid:<what>, file
    total: int  # records in it (0: none reach coding)
    valid: int  # records the API will be asked to code
    invalid: int  # records the daemon answers `invalid`
    expected: str  # "completed" or an error code
    sent: float = 0.0  # monotonic, when the publish began
    sent_wall: float = 0.0
    confirmed: bool = False
    publishes: int = 0
    replies: dict[str, float] = field(default_factory=dict)  # message_id -> monotonic arrival
    first: float | None = None
    first_body: dict | None = None
    first_source: str = ""
    problems: list[str] = field(default_factory=list)
    texts: set = field(default_factory=set)  # (topic, occp_text, tasks_text) of its valid records


@dataclass
class Fault:
    kind: str
    at: float  # seconds after the load began
    params: dict
    started_wall: float = 0.0
    started: float = 0.0  # monotonic
    ended: float | None = None
    note: str = ""


# --- the soak ---------------------------------------------------------------------------

class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.seed = args.seed
        self.prefix = f"soak-{uuid.uuid4().hex[:8]}"
        self.request_queue = f"{self.prefix}.requests"
        self.reply_queue = f"{self.prefix}.replies"
        self.default_reply_queue = f"{self.prefix}.default-replies"
        self.dead_queue = f"{self.request_queue}.dead"
        self.workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="coderd-soak-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state = self.workdir / "state"
        self.log_path = self.workdir / "coderd.log"
        self.emulator_log = self.workdir / "emulator.log"
        self.log = LogTail(self.log_path)
        self.mounted = False
        self.tmpfs_note = ""
        self.emulator = None
        self.emulator_url = ""
        self.daemon: asyncio.subprocess.Process | None = None
        self.daemon_lock = asyncio.Lock()
        self.daemon_expected_down = False
        self.daemon_starts: list[dict] = []  # every start attempt
        self.unexpected_exits: list[dict] = []
        self.proxy: TcpProxy | None = None
        self.connection = None
        self.pub_channel = None
        self.requests: dict[str, Request] = {}
        self.order: list[str] = []
        self.stray: dict[str, int] = {}  # replies to correlation ids we never sent
        self.dead_letters: list[dict] = []
        self.rerouted = 0
        self.publish_retries = 0
        self.client_reconnects: list[str] = []
        self.files_skipped = 0
        self.faults: list[Fault] = []
        self.disk_full_active = False
        self.load_started = 0.0
        self.load_started_wall = 0.0
        self.injecting = False
        self.interrupted = False
        self.tasks: list[asyncio.Task] = []
        self.fault_tasks: set[asyncio.Task] = set()
        self.say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
        self.client_name = f"coderd-{self.prefix}-client"
        self.counter = 0
        self.final_exit: int | None = None
        self.drain_seconds = 0.0
        self.drained = False

    def now(self) -> float:
        return time.monotonic() - self.load_started if self.load_started else 0.0

    # --- setup ---

    def mount_state(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        if self.args.no_tmpfs:
            self.tmpfs_note = "disk_full skipped: --no-tmpfs"
            return
        size = f"{self.args.tmpfs_mb}m"
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(self.state)],
                                  capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            done = None
            why = str(exc)
        else:
            why = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        if done is not None and done.returncode == 0:
            self.mounted = True
            self.tmpfs_note = f"state_dir on a {size} tmpfs"
        else:
            self.tmpfs_note = f"disk_full skipped: cannot mount a tmpfs on state_dir ({why}; needs root)"
            print(f"note: {self.tmpfs_note}", file=sys.stderr, flush=True)

    def api_faults(self, **switches) -> dict:
        request = urllib.request.Request(f"{self.emulator_url}/_emulator/faults", data=json.dumps(switches).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def api_stats(self) -> dict:
        with urllib.request.urlopen(f"{self.emulator_url}/_emulator/stats", timeout=10) as response:
            return json.load(response)

    async def start_emulator(self) -> None:
        port = free_port()
        # The public tier's daily quota (1,000 calls) would end a long soak: lift it.
        launcher = ("import sys; import daemon.emulator.settings as s; s.DAILY_QUOTA_BY_TIER['public'] = 0; "
                    "from daemon.cli import main; sys.exit(main(sys.argv[1:]))")
        argv = [sys.executable, "-c", launcher, "emulator", "--port", str(port), "--tier", "public",
                "--rate", str(self.args.rate), "--latency", str(self.args.latency), "--processing-seconds", "0"]
        self.emulator = await start_process(argv, self.emulator_log)
        self.emulator_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            if self.emulator.returncode is not None:
                raise RuntimeError(f"the emulator exited ({self.emulator.returncode}):\n"
                                   f"{self.emulator_log.read_text(errors='replace')[-2000:]}")
            try:
                await asyncio.to_thread(self.api_stats)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the emulator did not answer within 90 s") from None
                await asyncio.sleep(0.2)

    def daemon_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODERD_")}
        env.update({
            "CODERD_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{self.proxy.port}/",
            "CODERD_API_URL": self.emulator_url, "CODERD_AUTH_URL": self.emulator_url,
            "CODERD_CLIENT_ID": CLIENT_ID, "CODERD_CLIENT_SECRET": CLIENT_SECRET,
            "CODERD_REQUEST_QUEUE": self.request_queue, "CODERD_DEFAULT_REPLY_QUEUE": self.default_reply_queue,
            "CODERD_STATE_DIR": str(self.state), "CODERD_INBOX_DIR": str(self.state / "inbox"),
            "CODERD_OUTBOX_DIR": str(self.state / "outbox"), "CODERD_HTTP_LISTEN": "127.0.0.1:0",
            "CODERD_LOG_FORMAT": "json", "CODERD_TIER": "public",
            "CODERD_REQUESTS_PER_SECOND": str(self.args.rate), "CODERD_DAILY_QUOTA": str(10**7),
        })
        return env

    async def start_daemon_once(self, why: str) -> bool:
        """Start the daemon; True once it logs `consuming` (or is still up after 90 s)."""
        before = self.log.count("consuming")
        started = time.monotonic()
        with open(self.log_path, "ab") as marker:  # noqa: ASYNC230 - a line for people reading the log
            marker.write(json.dumps({"event": "soak_daemon_start", "why": why,
                                     "timestamp": datetime.now(UTC).isoformat()}).encode() + b"\n")
        self.daemon = await start_process([sys.executable, "-m", "daemon", "run"], self.log_path, self.daemon_env())
        attempt = {"at": round(self.now(), 1), "wall": hms(time.time()), "why": why, "pid": self.daemon.pid}
        self.daemon_starts.append(attempt)
        while True:
            if self.log.count("consuming") > before:
                attempt["ok"] = True
                attempt["seconds_to_consuming"] = round(time.monotonic() - started, 2)
                return True
            if self.daemon.returncode is not None:
                attempt["ok"] = False
                attempt["exit"] = self.daemon.returncode
                lines = [e.get("line") or e.get("event") for e in self.log.poll()[-5:]]
                attempt["last_lines"] = lines
                return False
            if time.monotonic() - started > 90:
                attempt["ok"] = True
                attempt["note"] = "no `consuming` within 90 s; left running"
                return True
            await asyncio.sleep(0.1)

    async def ensure_daemon(self, why: str, retry_delay: float = 5.0, max_attempts: int | None = None) -> bool:
        attempts = 0
        while True:
            if await self.start_daemon_once(why):
                return True
            attempts += 1
            last = self.daemon_starts[-1]
            self.say(f"[{self.now():7.1f}s] the daemon did not start (exit {last.get('exit')}): "
                     f"{(last.get('last_lines') or ['?'])[-1]}")
            if max_attempts is not None and attempts >= max_attempts:
                return False
            await asyncio.sleep(retry_delay if attempts < 12 else max(retry_delay, 30.0))
            why = f"{why} (retry {attempts})"

    async def open_client(self) -> None:
        import aio_pika
        self.connection = await aio_pika.connect_robust(
            AMQP_URL, client_properties={"connection_name": self.client_name}, timeout=30)
        self.connection.reconnect_callbacks.add(
            lambda *_: self.client_reconnects.append(f"+{self.now():.1f}s ({hms(time.time())})"))
        self.pub_channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        consume = await self.connection.channel()
        await consume.set_qos(prefetch_count=500)
        replies = await consume.declare_queue(self.reply_queue, durable=True)
        await replies.consume(lambda m: self.on_reply(m, "reply_to"))

    async def watch_daemon_queues(self) -> None:
        """Once the daemon has declared them: its default reply queue (rerouted replies) and
        the request queue's dead letters."""
        consume = await self.connection.channel()
        await consume.set_qos(prefetch_count=100)
        default = await consume.declare_queue(self.default_reply_queue, passive=True)
        await default.consume(lambda m: self.on_reply(m, "default_reply_queue"))
        consume2 = await self.connection.channel()
        dead = await consume2.declare_queue(self.dead_queue, passive=True)
        await dead.consume(self.on_dead_letter)

    async def on_reply(self, message, source: str) -> None:
        arrived = time.monotonic()
        cid = message.correlation_id or ""
        mid = message.message_id or f"no-id-{uuid.uuid4().hex}"
        try:
            body = json.loads(message.body)
        except ValueError:
            body = {"status": "?", "error": {"code": "reply_not_json"}}
        request = self.requests.get(cid)
        if request is None:
            self.stray[cid] = self.stray.get(cid, 0) + 1
        elif mid not in request.replies:
            request.replies[mid] = arrived
            if source != "reply_to":
                self.rerouted += 1
            if request.first is None:
                request.first, request.first_body, request.first_source = arrived, body, source
                self.check_reply(request, body)
        with contextlib.suppress(Exception):  # a channel gone: the broker redelivers (same message_id)
            await message.ack()

    async def on_dead_letter(self, message) -> None:
        headers = dict(message.headers or {})
        self.dead_letters.append({
            "correlation_id": message.correlation_id, "at": round(self.now(), 1),
            "reason": str(headers.get("x-first-death-reason") or headers.get("x-coderd-dead-reason") or "?"),
            "is_reply": "x-coderd-dead-reason" in headers,
        })
        with contextlib.suppress(Exception):
            await message.ack()

    def check_reply(self, request: Request, body: dict) -> None:
        status = body.get("status")
        error = (body.get("error") or {}).get("code") if isinstance(body.get("error"), dict) else None
        if status != "completed":
            return  # judged in the summary, against the faults
        if request.expected != "completed":
            request.problems.append(f"completed, expected {request.expected}")
            return
        if request.kind == "file":
            output = body.get("output") or {}
            if output.get("records") != request.total:
                request.problems.append(f"output.records {output.get('records')} != {request.total}")
            elif output.get("invalid") != request.invalid:
                request.problems.append(f"output.invalid {output.get('invalid')} != {request.invalid}")
            return
        results = body.get("records") if request.kind == "large" else [body.get("record")]
        if body.get("output") is not None:
            return  # a claim-check reply: not expected at these sizes, but not wrong
        if not isinstance(results, list) or any(not isinstance(r, dict) for r in results):
            request.problems.append(f"no RecordResults in the reply (error {error})")
            return
        if len(results) != request.total:
            request.problems.append(f"{len(results)} RecordResults for {request.total} records")
        invalid = sum(r.get("codeStatus") == "invalid" for r in results)
        if invalid != request.invalid:
            request.problems.append(f"{invalid} invalid RecordResults, expected {request.invalid}")

    # --- publishing ---

    def new_cid(self, kind: str) -> str:
        self.counter += 1
        return f"{self.prefix}-{kind.split(':')[0]}-{self.counter:06d}"

    async def publish(self, request: Request, body: bytes) -> None:
        import aio_pika
        request.sent = time.monotonic()
        request.sent_wall = time.time()
        self.requests[request.cid] = request
        self.order.append(request.cid)
        message = aio_pika.Message(body, correlation_id=request.cid, reply_to=self.reply_queue,
                                   content_type="application/json",
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        while True:
            request.publishes += 1
            try:
                await asyncio.wait_for(self.pub_channel.default_exchange.publish(
                    message, routing_key=self.request_queue, mandatory=True), 20)
                request.confirmed = True
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - connection or channel gone: again, same correlation_id
                self.publish_retries += 1
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    if self.pub_channel.is_closed:
                        await self.pub_channel.reopen()

    async def load_singles(self, rng: random.Random, texts: Texts) -> None:
        interval = 1.0 / self.args.single_rate
        while True:
            (occp, tasks), _ = texts.pick(0.25)
            cid = self.new_cid("single")
            body = {"topic": "anzsco", "record": {"recordId": cid, "occp_text": occp, "tasks_text": tasks}}
            await self.publish(Request(cid, "single", 1, 1, 0, "completed", texts={("anzsco", occp, tasks)}),
                               json.dumps(body).encode())
            await asyncio.sleep(interval * rng.uniform(0.7, 1.3))

    async def load_large(self, rng: random.Random, texts: Texts) -> None:
        await asyncio.sleep(rng.uniform(3, 10))
        while True:
            count = rng.randint(120, 450)
            cid = self.new_cid("large")
            topic = rng.choice(["anzsco", "anzsco", "osca"])
            records, invalid, keys = [], 0, set()
            for i in range(count):
                if rng.random() < 0.03:
                    records.append(invalid_record(rng, f"{cid}-{i}"))
                    invalid += 1
                else:
                    occp, tasks = texts.pick(0.3)[0]
                    records.append({"recordId": f"{cid}-{i}", "occp_text": occp, "tasks_text": tasks})
                    keys.add((topic, occp, tasks))
            body = {"topic": topic, "records": records}
            await self.publish(Request(cid, "large", count, count - invalid, invalid, "completed", texts=keys),
                               json.dumps(body).encode())
            await asyncio.sleep(rng.uniform(15, 40))

    async def load_invalid(self, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(2, 8))
        while True:
            what, body, expected = rng.choice(INVALID_BODIES)
            cid = self.new_cid("invalid")
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            await self.publish(Request(cid, f"invalid:{what}", 0, 0, 0, expected), raw)
            await asyncio.sleep(rng.uniform(6, 18))

    async def load_files(self, rng: random.Random, texts: Texts) -> None:
        inbox = self.state / "inbox" / "soak"
        await asyncio.sleep(rng.uniform(5, 15))
        while True:
            count = rng.randint(5, 40)
            cid = self.new_cid("file")
            as_csv = rng.random() < 0.3
            name = f"soak/{cid}.{'csv' if as_csv else 'jsonl'}"
            rows, invalid, keys = [], 0, set()
            for i in range(count):
                if rng.random() < 0.05:
                    rows.append({"recordId": f"{cid}-{i}", "occp_text": "x", "tasks_text": ""})
                    invalid += 1
                else:
                    occp, tasks = texts.pick(0.3)[0]
                    rows.append({"recordId": f"{cid}-{i}", "occp_text": occp, "tasks_text": tasks})
                    keys.add(("anzsco", occp, tasks))
            if as_csv:
                out = io.StringIO()
                writer = csv.DictWriter(out, fieldnames=["recordId", "occp_text", "tasks_text"])
                writer.writeheader()
                writer.writerows(rows)
                data = out.getvalue().encode()
            else:
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
            try:
                inbox.mkdir(parents=True, exist_ok=True)
                partial = inbox / f".{cid}.partial"
                partial.write_bytes(data)
                os.replace(partial, self.state / "inbox" / name)
            except OSError as exc:  # the disk is full (our fault): a producer would try later
                self.files_skipped += 1
                with contextlib.suppress(OSError):
                    partial.unlink()
                self.say(f"[{self.now():7.1f}s] inputFile not placed ({exc.strerror}); trying again in 5 s")
                await asyncio.sleep(5)
                continue
            body = {"topic": "anzsco", "inputFile": name}
            await self.publish(Request(cid, "file", count, count - invalid, invalid, "completed", texts=keys),
                               json.dumps(body).encode())
            await asyncio.sleep(rng.uniform(20, 45))

    # --- faults ---

    def schedule(self) -> list[Fault]:
        rng = random.Random(f"{self.seed}-faults")
        chosen = self.args.faults.split(",") if self.args.faults else FAULT_KINDS
        kinds = [k for k in chosen if k != "disk_full" or self.mounted]
        if not kinds:
            return []
        duration = self.args.minutes * 60
        gap = self.args.fault_gap or min(25.0, max(10.0, duration / 9))
        t, bag, plan = min(15.0, duration / 8), [], []
        while t < duration - 5:
            if not bag:
                bag = kinds[:]
                rng.shuffle(bag)
            kind = bag.pop()
            if kind == "api_500":
                params = {"error_rate": rng.choice([0.3, 0.5, 1.0]), "seconds": round(rng.uniform(10, 60), 1)}
            elif kind == "api_stall":
                params = {"stall": rng.randint(1, 3), "stall_seconds": STALL_SECONDS}
            elif kind == "api_429":
                params = {"force_429": rng.randint(3, 10)}
            elif kind == "kill":
                params = {"restart_after": round(rng.uniform(1, 5), 1)}
            elif kind == "disk_full":
                params = {"seconds": round(rng.uniform(10, 40), 1)}
            else:
                params = {}
            if "seconds" in params:  # over by the end of the load
                params["seconds"] = round(max(5.0, min(params["seconds"], duration - t - 2)), 1)
            plan.append(Fault(kind, round(t, 1), params))
            t += gap * rng.uniform(0.5, 1.5)
        return plan

    async def inject_all(self, plan: list[Fault]) -> None:
        locks: dict[str, asyncio.Lock] = {}
        for fault in plan:
            delay = self.load_started + fault.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lock = locks.setdefault(fault.kind, asyncio.Lock())
            task = asyncio.create_task(self.inject(fault, lock))
            task.fault_kind = fault.kind
            self.fault_tasks.add(task)
            task.add_done_callback(self.fault_tasks.discard)

    async def inject(self, fault: Fault, lock: asyncio.Lock) -> None:
        async with lock:
            fault.started, fault.started_wall = time.monotonic(), time.time()
            self.faults.append(fault)
            self.say(f"[{self.now():7.1f}s] fault {fault.kind} {fault.params or ''}")
            try:
                await getattr(self, f"fault_{fault.kind}")(fault)
            except asyncio.CancelledError:
                fault.note = (fault.note + "; " if fault.note else "") + "ended early (injection stopped)"
                raise
            except Exception as exc:  # noqa: BLE001 - a fault that could not be injected is reported
                fault.note = f"not injected: {type(exc).__name__}: {exc}"
                self.say(f"[{self.now():7.1f}s]   {fault.note}")
            finally:
                fault.ended = time.monotonic()

    async def fault_cut(self, fault: Fault) -> None:
        fault.params["connections"] = self.proxy.cut()

    async def fault_close(self, fault: Fault) -> None:
        if self.args.close_all_connections:
            done = await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "close_all_connections", "soak fault"],
                                           capture_output=True, timeout=60)
            fault.params["command"] = "rabbitmqctl close_all_connections"
            if done.returncode:
                raise RuntimeError(done.stderr.decode(errors="replace").strip()[:300])
            return
        ports = self.proxy.upstream_ports()
        listing = await asyncio.to_thread(
            subprocess.run, ["rabbitmqctl", "-q", "list_connections", "pid", "peer_port", "client_properties"],
            capture_output=True, timeout=60)
        if listing.returncode:
            raise RuntimeError(listing.stderr.decode(errors="replace").strip()[:300])
        closed = {"daemon": 0, "soak": 0}
        for line in listing.stdout.decode(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) < 2 or not parts[1].strip().isdigit():
                continue
            whose = ("daemon" if int(parts[1]) in ports else
                     "soak" if self.client_name in line else None)
            if whose is None:
                continue
            done = await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "close_connection", parts[0],
                                                            "soak fault: connection closed by the broker"],
                                           capture_output=True, timeout=60)
            if done.returncode == 0:
                closed[whose] += 1
        fault.params.update(command="rabbitmqctl close_connection (this soak's connections)", closed=closed)

    async def fault_api_500(self, fault: Fault) -> None:
        try:
            await asyncio.to_thread(self.api_faults, error_rate=fault.params["error_rate"])
            await asyncio.sleep(fault.params["seconds"])
        finally:
            await asyncio.to_thread(self.api_faults, error_rate=0.0)

    async def fault_api_stall(self, fault: Fault) -> None:
        await asyncio.to_thread(self.api_faults, stall=fault.params["stall"], stall_seconds=STALL_SECONDS)
        # The window: until the stalled calls have been answered (503) or given up on.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            left = (await asyncio.to_thread(self.api_faults)).get("stall", 0)
            if not left:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(STALL_SECONDS)

    async def fault_api_429(self, fault: Fault) -> None:
        await asyncio.to_thread(self.api_faults, force_429=fault.params["force_429"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (await asyncio.to_thread(self.api_faults)).get("force_429", 0):
            await asyncio.sleep(0.5)

    async def fault_kill(self, fault: Fault) -> None:
        async with self.daemon_lock:
            if self.daemon is None or self.daemon.returncode is not None:
                fault.note = "the daemon was not running"
                return
            self.daemon_expected_down = True
            try:
                self.daemon.kill()
                await self.daemon.wait()
                fault.params["pid"] = self.daemon.pid
                await asyncio.sleep(fault.params["restart_after"])
                await self.ensure_daemon(f"restart after kill -9 at +{fault.at}s")
            finally:
                self.daemon_expected_down = False

    async def fault_disk_full(self, fault: Fault) -> None:
        filler = self.state / "soak-filler"
        self.disk_full_active = True
        try:
            fault.params["filled_bytes"] = await asyncio.to_thread(fill, filler)
            await asyncio.sleep(fault.params["seconds"])
        finally:
            with contextlib.suppress(OSError):
                filler.unlink()
            self.disk_full_active = False

    async def keep_daemon(self) -> None:
        """A daemon that dies when we did not kill it is restarted, and the exit reported."""
        while True:
            await asyncio.sleep(1.0)
            if self.daemon is None or self.daemon.returncode is None or self.daemon_expected_down:
                continue
            async with self.daemon_lock:
                if self.daemon.returncode is None or self.daemon_expected_down:
                    continue
                tail = [e.get("line") or e.get("event") for e in self.log.poll()[-5:]]
                self.unexpected_exits.append({"at": round(self.now(), 1), "wall": hms(time.time()),
                                              "exit": self.daemon.returncode, "last_lines": tail})
                self.say(f"[{self.now():7.1f}s] the daemon exited by itself ({self.daemon.returncode}): restarting")
                await self.ensure_daemon("restart after it exited by itself")

    # --- the run ---

    async def progress(self) -> None:
        while True:
            await asyncio.sleep(30)
            waiting = sum(1 for r in self.requests.values() if r.first is None)
            self.say(f"[{self.now():7.1f}s] sent {len(self.requests)}, waiting for {waiting}")

    async def drain(self) -> None:
        deadline = time.monotonic() + self.args.drain_timeout
        started = time.monotonic()
        last_say = 0.0
        while True:
            waiting = [r for r in self.requests.values() if r.first is None]
            if not waiting:
                self.drained = True
                break
            if time.monotonic() > deadline:
                break
            if time.monotonic() - last_say > 15:
                last_say = time.monotonic()
                self.say(f"[{self.now():7.1f}s] draining: {len(waiting)} requests unanswered")
            await asyncio.sleep(0.5)
        self.drain_seconds = time.monotonic() - started
        await asyncio.sleep(self.args.quiet_seconds)  # late duplicates

    async def run(self) -> dict:
        args = self.args
        self.say(f"soak {self.prefix}: {args.minutes:g} min, seed {self.seed}, work directory {self.workdir}")
        self.mount_state()
        (self.state / "inbox").mkdir(parents=True, exist_ok=True)
        (self.state / "outbox").mkdir(parents=True, exist_ok=True)
        await self.start_emulator()
        self.proxy = await TcpProxy(BROKER_HOST, BROKER_PORT).start()
        if not await self.ensure_daemon("first start", retry_delay=60.0, max_attempts=args.start_attempts):
            raise RuntimeError(f"the daemon would not start:\n{self.log.tail_text()}")
        await self.open_client()
        await self.watch_daemon_queues()
        plan = self.schedule()
        self.say(f"faults planned: {len(plan)} ({', '.join(f'{f.kind}@{f.at:g}s' for f in plan)})")
        self.load_started, self.load_started_wall = time.monotonic(), time.time()
        texts = Texts(random.Random(f"{self.seed}-texts"))
        load = [
            asyncio.create_task(self.load_singles(random.Random(f"{self.seed}-singles"), texts)),
            asyncio.create_task(self.load_large(random.Random(f"{self.seed}-large"), texts)),
            asyncio.create_task(self.load_invalid(random.Random(f"{self.seed}-invalid"))),
            asyncio.create_task(self.load_files(random.Random(f"{self.seed}-files"), texts)),
        ]
        injector = asyncio.create_task(self.inject_all(plan))
        keeper = asyncio.create_task(self.keep_daemon())
        progress = asyncio.create_task(self.progress())
        self.tasks = [*load, injector, keeper, progress]
        self.injecting = True
        try:
            await asyncio.sleep(args.minutes * 60)
        finally:
            # Stop the load and the injection; undo what is still in force.
            for task in [*load, injector]:
                task.cancel()
            await asyncio.gather(*load, injector, return_exceptions=True)
            self.injecting = False
            # Faults in force end now (their clean-up runs); a kill finishes its restart.
            for task in list(self.fault_tasks):
                if getattr(task, "fault_kind", "") != "kill":
                    task.cancel()
            await asyncio.gather(*list(self.fault_tasks), return_exceptions=True)
        self.load_ended = self.now()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.api_faults, error_rate=0.0, stall=0, force_429=0)
        with contextlib.suppress(OSError):
            (self.state / "soak-filler").unlink()
        self.say(f"[{self.now():7.1f}s] load and faults stopped; waiting for every reply "
                 f"(at most {args.drain_timeout:g} s)")
        await self.drain()
        keeper.cancel()
        progress.cancel()
        await asyncio.gather(keeper, progress, return_exceptions=True)
        return await self.summarize()

    async def summarize(self) -> dict:
        try:
            stats = await asyncio.to_thread(self.api_stats)
        except Exception as exc:  # noqa: BLE001
            stats = {"error": str(exc)}
        async with self.daemon_lock:
            self.final_exit = await stop_process(self.daemon, 60) if self.daemon is not None else None
        return build_summary(self, stats)

    async def cleanup(self) -> None:
        for task in [*self.tasks, *self.fault_tasks]:
            task.cancel()
        await asyncio.gather(*self.tasks, *self.fault_tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await stop_process(self.daemon, 30)
        with contextlib.suppress(Exception):
            await stop_process(self.emulator, 15)
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proxy.stop(), 5)
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connection.close(), 10)
        await delete_queues(AMQP_URL, [self.request_queue, self.dead_queue, self.reply_queue, self.default_reply_queue])
        with contextlib.suppress(OSError):
            (self.state / "soak-filler").unlink()
        if self.args.keep_state:
            with contextlib.suppress(OSError, shutil.Error):
                shutil.copytree(self.state, self.workdir / "state-kept", symlinks=True, dirs_exist_ok=True)
        if self.mounted:
            done = await asyncio.to_thread(subprocess.run, ["umount", str(self.state)], capture_output=True,
                                           check=False)
            if done.returncode != 0:
                await asyncio.to_thread(subprocess.run, ["umount", "-l", str(self.state)], capture_output=True,
                                        check=False)
            self.mounted = False
        shutil.rmtree(self.state, ignore_errors=True)


def fill(path: Path) -> int:
    """Take every free byte of the file system `path` is on; the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    with open(path, "wb") as filler:
        try:
            while True:
                filler.write(chunk)
                filler.flush()
                written += len(chunk)
        except OSError:
            pass
    # what is left below a MiB, too
    try:
        with open(path, "ab") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
                written += 4096
    except OSError:
        pass
    return written


# --- the summary -------------------------------------------------------------------------

def build_summary(soak: Soak, stats: dict) -> dict:
    requests = [soak.requests[cid] for cid in soak.order if soak.requests[cid].confirmed]
    unconfirmed = [soak.requests[cid] for cid in soak.order if not soak.requests[cid].confirmed]
    answered = [r for r in requests if r.first is not None]
    lost = [r for r in requests if r.first is None]
    duplicates = sum(max(0, len(r.replies) - 1) for r in requests)
    waits = sorted(r.first - r.sent for r in answered)
    longest = max(answered, key=lambda r: r.first - r.sent, default=None)

    api_windows = [(f.started, f.ended or time.monotonic()) for f in soak.faults if f.kind in API_FAULTS]
    disk_windows = [(f.started, f.ended or time.monotonic()) for f in soak.faults if f.kind == "disk_full"]

    def overlaps(request: Request, windows) -> bool:
        end = request.first or time.monotonic()
        return any(lo <= end and hi >= request.sent for lo, hi in windows)

    def fault_seconds(request: Request, windows) -> float:
        """Seconds of the request's wait during which one of `windows` was in force."""
        end = request.first or time.monotonic()
        spans = sorted((max(lo, request.sent), min(hi, end)) for lo, hi in windows if lo < end and hi > request.sent)
        total, reach = 0.0, -math.inf
        for lo, hi in spans:
            lo = max(lo, reach)
            if hi > lo:
                total += hi - lo
                reach = hi
        return total

    by_status: dict[str, int] = {}
    failed: dict[str, dict] = {}
    for r in answered:
        body = r.first_body or {}
        status = str(body.get("status"))
        by_status[status] = by_status.get(status, 0) + 1
        if status == "completed":
            continue
        code = (body.get("error") or {}).get("code") if isinstance(body.get("error"), dict) else None
        code = str(code)
        entry = failed.setdefault(code, {"count": 0, "expected": 0, "acceptable": 0, "unexpected": 0,
                                         "kinds": {}, "examples": []})
        entry["count"] += 1
        entry["kinds"][r.kind] = entry["kinds"].get(r.kind, 0) + 1
        exposure = fault_seconds(r, api_windows)
        if code == r.expected:
            entry["expected"] += 1
        elif code == "upstream_error" and exposure >= MIN_RETRY_SECONDS:
            entry["acceptable"] += 1
        elif code == "upstream_error" and r.expected == "unknown_topic":
            entry["acceptable"] += 1  # the topic list could not be had
        elif code == "output_not_writable" and r.kind == "file" and overlaps(r, disk_windows):
            entry["acceptable"] += 1
        else:
            entry["unexpected"] += 1
            if code == "upstream_error":
                entry["too_soon"] = entry.get("too_soon", 0) + 1
                entry["least_api_fault_s"] = round(min(entry.get("least_api_fault_s", math.inf), exposure), 1)
            if len(entry["examples"]) < 5:
                entry["examples"].append({"correlation_id": r.cid, "kind": r.kind, "expected": r.expected,
                                          "waited_s": round(r.first - r.sent, 1), "api_fault_s": round(exposure, 1),
                                          "message": str((body.get("error") or {}).get("message"))[:200]})
    wrong = [{"correlation_id": r.cid, "kind": r.kind, "problems": r.problems} for r in answered if r.problems]
    expected_failures_completed = [r for r in answered if r.expected != "completed"
                                   and (r.first_body or {}).get("status") == "completed"]

    valid_sent = sum(r.valid for r in requests)
    distinct_sent = len(set().union(*(r.texts for r in requests))) if requests else 0
    completed_texts = set().union(*(r.texts for r in answered if (r.first_body or {}).get("status") == "completed"))
    valid_in_failed = sum(r.valid for r in answered if (r.first_body or {}).get("status") != "completed")
    kinds: dict[str, int] = {}
    for r in requests:
        key = r.kind.split(":")[0]
        kinds[key] = kinds.get(key, 0) + 1

    faults_by_kind: dict[str, list] = {}
    for f in sorted(soak.faults, key=lambda f: f.started):
        faults_by_kind.setdefault(f.kind, []).append({
            "at_s": round(f.started - soak.load_started, 1), "wall": hms(f.started_wall),
            "lasted_s": round((f.ended or time.monotonic()) - f.started, 1),
            **{k: v for k, v in f.params.items()}, **({"note": f.note} if f.note else {})})

    records_coded = stats.get("records_coded")
    summary = {
        "run": {
            "prefix": soak.prefix, "seed": soak.seed, "minutes": soak.args.minutes,
            "emulator": {"tier": "public", "rate": soak.args.rate, "latency": soak.args.latency,
                         "daily_quota": "lifted"},
            "single_rate_per_s": soak.args.single_rate,
            "state_dir": soak.tmpfs_note,
            "load_seconds": round(getattr(soak, "load_ended", soak.now()), 1),
            "drain_seconds": round(soak.drain_seconds, 1), "drained": soak.drained,
            "interrupted": soak.interrupted, "workdir": str(soak.workdir), "daemon_log": str(soak.log_path),
        },
        "requests_sent": len(requests),
        "requests_by_kind": kinds,
        "records_sent": sum(r.total for r in requests),
        "valid_records_sent": valid_sent,
        "publishes_retried": soak.publish_retries,
        "requests_published_more_than_once": sum(r.publishes > 1 for r in requests),
        "never_confirmed_by_broker": len(unconfirmed),
        "answered": len(answered),
        "duplicated": duplicates,
        "requests_with_duplicates": sum(len(r.replies) > 1 for r in requests),
        "lost": len(lost),
        "lost_examples": [{"correlation_id": r.cid, "kind": r.kind, "sent_at_s": round(r.sent - soak.load_started, 1)}
                          for r in lost[:20]],
        "dead_lettered": soak.dead_letters,
        "replies_via_default_reply_queue": soak.rerouted,
        "stray_replies": sum(soak.stray.values()),
        "replies_by_status": by_status,
        "failed_by_code": failed,
        "wrong_replies": wrong[:20],
        "wrong_replies_count": len(wrong),
        "invalid_bodies_completed": len(expected_failures_completed),
        "api": {
            "records_coded": records_coded,
            "extra_records_on_redeliveries": (records_coded - valid_sent) if isinstance(records_coded, int) else None,
            "distinct_valid_texts_sent": distinct_sent,
            "distinct_valid_texts_completed": len(completed_texts),
            "records_beyond_distinct_texts": ((records_coded - len(completed_texts)) if isinstance(records_coded, int)
                                              else None),
            "valid_records_in_failed_requests": valid_in_failed,
            "coding_calls": stats.get("coding_calls"),
            "v1_calls": stats.get("v1_calls"),
            "statuses": stats.get("statuses"),
            "token_requests": stats.get("token_requests"),
            "quota_refused": stats.get("quota_refused"),
            "mean_records_per_call": (round(records_coded / stats["coding_calls"], 1)
                                      if stats.get("coding_calls") else None),
        },
        "wait_s": {
            "max": round(waits[-1], 2) if waits else None,
            "max_request": ({"correlation_id": longest.cid, "kind": longest.kind,
                             "sent_at_s": round(longest.sent - soak.load_started, 1)} if longest else None),
            "p50": round(percentile(waits, 0.50), 3) if waits else None,
            "p99": round(percentile(waits, 0.99), 2) if waits else None,
        },
        "throttle_violations": stats.get("throttled"),
        "throttled_gaps": stats.get("throttled_gaps"),
        "faults": {kind: len(items) for kind, items in faults_by_kind.items()},
        "fault_times": faults_by_kind,
        "files_postponed_disk_full": soak.files_skipped,
        "client_reconnects": soak.client_reconnects,
        "daemon": {
            "starts": len(soak.daemon_starts),
            "failed_starts": [s for s in soak.daemon_starts if not s.get("ok")],
            "slow_starts": [s for s in soak.daemon_starts if s.get("seconds_to_consuming", 0) > 10 or s.get("note")],
            "unexpected_exits": soak.unexpected_exits,
            "exit_code_at_sigterm": soak.final_exit,
        },
        "daemon_log": read_log(soak),
        "emulator_stats_error": stats.get("error"),
    }
    return summary


def read_log(soak: Soak) -> dict:
    events = soak.log.poll()
    by_level: dict[str, dict[str, int]] = {}
    tracebacks: dict[str, dict] = {}
    unparsed: list[str] = []
    slow: list[dict] = []
    for event in events:
        name = str(event.get("event"))
        name = name if len(name) <= 90 else name[:87] + "..."
        level = str(event.get("level", ""))
        if level in ("warning", "error", "critical"):
            by_level.setdefault(level, {})
            by_level[level][name] = by_level[level].get(name, 0) + 1
        if event.get("exception"):
            lines = [ln for ln in str(event["exception"]).splitlines() if ln.strip()]
            key = f"{name}: {lines[-1] if lines else '?'}"[:300]
            entry = tracebacks.setdefault(key, {"count": 0, "first_at": event.get("timestamp"),
                                                "where": [ln.strip() for ln in lines if ln.strip().startswith("File ")][-2:]})
            entry["count"] += 1
        if name == "unparsed":
            unparsed.append(event.get("line", ""))
        if name == "request_done" and isinstance(event.get("latency_ms"), (int, float)):
            slow.append({"correlation_id": event.get("correlation_id"), "latency_s": round(event["latency_ms"] / 1000, 1),
                         "status": event.get("status"), "error": event.get("error"), "records": event.get("records"),
                         "timestamp": event.get("timestamp")})
    slow.sort(key=lambda e: -e["latency_s"])
    done = sum(e.get("event") == "request_done" for e in events)
    lost_links = [e for e in events if e.get("event") == "broker_connection_lost"]
    broker_shutdowns = [e.get("timestamp") for e in lost_links if "shutdown" in str(e.get("error"))]
    return {
        "lines": len(events),
        "request_done": done,
        "warnings_and_errors": by_level,
        "tracebacks": tracebacks,
        "unparsed_lines": len(unparsed),
        "unparsed_examples": unparsed[:8],
        "slowest_request_done": slow[:5],
        "request_done_over_60s": sum(e["latency_s"] > 60 for e in slow),
        "broker_connection_lost": len(lost_links),
        "broker_shutdowns_not_injected": broker_shutdowns,
    }


def render(s: dict) -> str:
    out = []
    run = s["run"]
    out.append(f"coderd soak {run['prefix']}: {run['minutes']:g} min of load, seed {run['seed']}; emulator public tier, "
               f"{run['emulator']['rate']:g} calls/s, {run['emulator']['latency']:g} s latency; "
               f"{run['single_rate_per_s']:g} single-record requests/s; {run['state_dir']}")
    if run["interrupted"]:
        out.append("  INTERRUPTED (Ctrl-C): figures so far; nothing was drained")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["requests_by_kind"].items()))
    out.append(f"  requests sent:            {s['requests_sent']} ({kinds}); {s['records_sent']} records, "
               f"{s['valid_records_sent']} valid")
    if s["publishes_retried"] or s["never_confirmed_by_broker"]:
        out.append(f"  publishes retried:        {s['publishes_retried']} ({s['requests_published_more_than_once']} "
                   f"requests published more than once); never confirmed: {s['never_confirmed_by_broker']}")
    out.append(f"  answered:                 {s['answered']} (distinct correlation ids with a reply; drained in "
               f"{run['drain_seconds']:g} s after the load stopped{'' if run['drained'] else ', NOT ALL'})")
    out.append(f"  duplicated:               {s['duplicated']} replies beyond the first "
               f"({s['requests_with_duplicates']} requests)")
    out.append(f"  lost:                     {s['lost']}" + ("  <-- MUST BE 0" if s["lost"] else ""))
    for item in s["lost_examples"][:10]:
        out.append(f"      {item['correlation_id']} ({item['kind']}, sent at +{item['sent_at_s']} s)")
    if s["dead_lettered"]:
        reasons: dict[str, int] = {}
        for d in s["dead_lettered"]:
            reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
        out.append(f"  dead-lettered:            {len(s['dead_lettered'])} ({reasons})")
    if s["replies_via_default_reply_queue"] or s["stray_replies"]:
        out.append(f"  via the default reply queue: {s['replies_via_default_reply_queue']}; stray replies: "
                   f"{s['stray_replies']}")
    out.append(f"  replies by status:        {s['replies_by_status']}")
    if s["failed_by_code"]:
        out.append("  failed replies by code:")
        for code, entry in sorted(s["failed_by_code"].items(), key=lambda kv: -kv[1]["count"]):
            verdict = []
            if entry["expected"]:
                verdict.append(f"{entry['expected']} expected (invalid bodies)")
            if entry["acceptable"]:
                verdict.append(f"{entry['acceptable']} acceptable (API faults lasted through the daemon's retries, "
                               f">= {MIN_RETRY_SECONDS:g} s of its wait; or the disk was full)")
            if entry["unexpected"]:
                verdict.append(f"{entry['unexpected']} UNEXPECTED")
            if entry.get("too_soon"):
                verdict.append(f"{entry['too_soon']} of them after as little as {entry['least_api_fault_s']:g} s of "
                               f"API faults: 6 tries with back-off take >= {MIN_RETRY_SECONDS:g} s")
            out.append(f"    {code:<22}{entry['count']:>5}  {'; '.join(verdict)}")
            for ex in entry["examples"]:
                out.append(f"        e.g. {ex['correlation_id']} ({ex['kind']}, expected {ex['expected']}, waited "
                           f"{ex['waited_s']:g} s, {ex['api_fault_s']:g} s of it under API faults): {ex['message']}")
    if s["wrong_replies_count"] or s["invalid_bodies_completed"]:
        out.append(f"  wrong replies:            {s['wrong_replies_count']}; invalid bodies answered completed: "
                   f"{s['invalid_bodies_completed']}")
        for w in s["wrong_replies"][:5]:
            out.append(f"      {w['correlation_id']} ({w['kind']}): {'; '.join(w['problems'])}")
    api = s["api"]
    out.append(f"  API records coded:        {api['records_coded']} in {api['coding_calls']} coding calls "
               f"(mean {api['mean_records_per_call']}); /v1 answers {api['statuses']}; token requests "
               f"{api['token_requests']}")
    extra = api["extra_records_on_redeliveries"]
    out.append(f"  extra API records on redeliveries: {extra} (records coded minus the {s['valid_records_sent']} "
               f"valid records sent; {api['valid_records_in_failed_requests']} valid records were in requests "
               f"answered failed)")
    out.append(f"    (below 0: coderd sends a text once a call and caches answers). Records coded beyond the "
               f"{api['distinct_valid_texts_completed']} distinct valid texts of requests answered completed "
               f"({api['distinct_valid_texts_sent']} in all requests): {api['records_beyond_distinct_texts']}")
    wait = s["wait_s"]
    if wait["max"] is not None:
        mx = wait["max_request"]
        out.append(f"  wait, publish to first reply: longest {wait['max']:.1f} s ({mx['correlation_id']}, {mx['kind']}, "
                   f"sent at +{mx['sent_at_s']} s); p50 {wait['p50']:.2f} s; p99 {wait['p99']:.1f} s")
    out.append(f"  throttle violations:      {s['throttle_violations']}" +
               (f"  <-- MUST BE 0 (gaps {s['throttled_gaps']})" if s["throttle_violations"] else ""))
    out.append(f"  faults injected:          {sum(s['faults'].values())} "
               f"({', '.join(f'{k} {v}' for k, v in s['faults'].items())})")
    for kind, items in s["fault_times"].items():
        shown = []
        for item in items:
            extra_bits = {k: v for k, v in item.items() if k not in ("at_s", "wall", "lasted_s")}
            bits = ", ".join(f"{k}={v}" for k, v in extra_bits.items())
            shown.append(f"+{item['at_s']:g}s ({item['wall']}, {item['lasted_s']:g} s{', ' + bits if bits else ''})")
        out.append(f"    {kind:<10} " + "; ".join(shown))
    if s["files_postponed_disk_full"]:
        out.append(f"  inputFiles postponed (disk full): {s['files_postponed_disk_full']}")
    d = s["daemon"]
    out.append(f"  daemon: {d['starts']} starts ({len(d['failed_starts'])} failed), "
               f"{len(d['unexpected_exits'])} unexpected exits, exit code at the final SIGTERM {d['exit_code_at_sigterm']}")
    for f in d["failed_starts"]:
        out.append(f"      start at +{f['at']} s ({f['why']}) failed: exit {f.get('exit')}: {(f.get('last_lines') or [''])[-1]}")
    for f in d["slow_starts"]:
        out.append(f"      start at +{f['at']} s ({f['why']}): {f.get('seconds_to_consuming', '?')} s to consuming "
                   f"{f.get('note', '')}")
    for e in d["unexpected_exits"]:
        out.append(f"      exited by itself at +{e['at']} s: exit {e['exit']}: {e['last_lines'][-1:]}")
    log = s["daemon_log"]
    out.append(f"  daemon log: {log['lines']} lines, {log['request_done']} request_done; "
               f"{log['request_done_over_60s']} requests took over 60 s; unparsed lines {log['unparsed_lines']}; "
               f"broker_connection_lost {log['broker_connection_lost']}")
    if log["broker_shutdowns_not_injected"]:
        out.append(f"    NOT INJECTED: the broker itself shut down (reason 'shutdown': someone else restarted "
                   f"RabbitMQ) at {', '.join(log['broker_shutdowns_not_injected'])}")
    if s.get("client_reconnects"):
        out.append(f"    this soak's own broker connection reconnected at {', '.join(s['client_reconnects'])}")
    for level, names in log["warnings_and_errors"].items():
        out.append(f"    {level}: " + ", ".join(f"{k} x{v}" for k, v in sorted(names.items(), key=lambda kv: -kv[1])))
    for key, entry in log["tracebacks"].items():
        out.append(f"    traceback x{entry['count']}: {key}  [{' | '.join(entry['where'])}]")
    for line in log["unparsed_examples"][:5]:
        out.append(f"    unparsed: {line[:200]}")
    if log["slowest_request_done"]:
        out.append("    slowest request_done: " + "; ".join(
            f"{e['latency_s']} s {e['correlation_id']} ({e['status']}{'/' + str(e['error']) if e['error'] else ''}, "
            f"{e['records']} records)" for e in log["slowest_request_done"][:5]))
    out.append(f"  logs kept in {run['workdir']} (coderd.log, emulator.log)")
    verdict = "FAIL" if s["lost"] or s["throttle_violations"] else "PASS"
    out.append(f"  verdict: {verdict} (lost {s['lost']}, throttle violations {s['throttle_violations']})")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load and faults (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and the load (default 1)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object on stdout (the text goes to stderr)")
    parser.add_argument("--rate", type=float, default=2.0,
                        help="the emulator's --rate and CODERD_REQUESTS_PER_SECOND (default 2)")
    parser.add_argument("--latency", type=float, default=0.5, help="the emulator's --latency, seconds (default 0.5)")
    parser.add_argument("--single-rate", type=float, default=1.5,
                        help="single-record requests a second (default 1.5)")
    parser.add_argument("--fault-gap", type=float, default=None,
                        help="mean seconds between faults (default: a ninth of the run, 10-25 s)")
    parser.add_argument("--drain-timeout", type=float, default=900.0,
                        help="seconds to wait for the last replies after the load stops (default 900)")
    parser.add_argument("--quiet-seconds", type=float, default=10.0,
                        help="seconds to keep listening for late duplicates once all are answered (default 10)")
    parser.add_argument("--close-all-connections", action="store_true",
                        help="the close fault runs `rabbitmqctl close_all_connections` (every client of the "
                             "broker) instead of closing this soak's connections only")
    parser.add_argument("--faults", help="comma-separated fault kinds to inject (default: all; "
                                         "cut is in the bag twice: cut,cut,close,api_500,api_stall,api_429,kill,disk_full)")
    parser.add_argument("--tmpfs-mb", type=int, default=64, help="size of the state_dir tmpfs (default 64)")
    parser.add_argument("--no-tmpfs", action="store_true", help="no tmpfs (and no disk_full fault)")
    parser.add_argument("--workdir", help="work directory (default: a new one under the temporary directory); "
                                          "its logs are kept")
    parser.add_argument("--keep-state", action="store_true",
                        help="keep a copy of state_dir (inbox, outbox, ledgers) in the work directory")
    parser.add_argument("--start-attempts", type=int, default=5,
                        help="first-start attempts, a minute apart (default 5)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.single_rate <= 0 or args.rate <= 0:
        parser.error("--minutes, --single-rate and --rate must be positive")

    for name in ("aio_pika", "aiormq"):  # our own connection's reconnects are expected: no tracebacks
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    soak = Soak(args)

    async def guarded() -> dict | None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            try:
                return await soak.run()
            except asyncio.CancelledError:
                soak.interrupted = True
                print("\ninterrupted: summarizing what was seen, then cleaning up ...", file=sys.stderr, flush=True)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)  # a second Ctrl-C stops the clean-up too
                if soak.load_started:
                    with contextlib.suppress(Exception):
                        return await asyncio.wait_for(soak.summarize(), 90)
                return None
        finally:
            await soak.cleanup()

    try:
        summary = asyncio.run(guarded())
    except RuntimeError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if summary is None:
        return 130
    with contextlib.suppress(OSError):
        (soak.workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    text = render(summary)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(summary, default=str))
    else:
        print(text)
    if soak.interrupted:
        return 130
    return 1 if summary["lost"] or summary["throttle_violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
