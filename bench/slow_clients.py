"""Slow clients on `http_listen`: does coderd hold them, and does it keep working?

Starts `coderd run` (its own process, file-descriptor limit lowered with RLIMIT_NOFILE)
against `coderd emulator` and the local broker, then opens CLIENTS connections to
http_listen that each send one byte of a request every INTERVAL seconds; a connection
the server closes is opened again at the client's next tick, as slowloris tools do
(--storm: at once, as fast as the server closes them; --once: never). Meanwhile it probes /healthz twice a
second and publishes one coding request a second. Prints, for the run:

  - slow connections the server held open (most at once, and at the end), how many it
    closed and how long each lasted;
  - /healthz probes answered, failed, and the slowest;
  - coding requests answered (coderd's own outgoing connections: token, coding calls);
  - coderd's log: lines, bytes, the most frequent events.

Run: .venv/bin/python bench/slow_clients.py [--clients 300] [--interval 10] [--seconds 60] [--nofile 256]
                                            [--storm | --once]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import ROOT, Broker, EmulatorProcess, daemon_env, unique_prefix  # noqa: E402
from running import free_port  # noqa: E402

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n\r\n"
RECORD = {"occp_text": "truck driver", "tasks_text": "delivering freight"}


class Stats:
    def __init__(self) -> None:
        self.open = 0
        self.most_open = 0
        self.connected = 0
        self.refused = 0  # connect() itself failed
        self.lifetimes: list[float] = []  # connections the server closed: seconds they lasted
        self.probes_ok = 0
        self.probe_failures: collections.Counter[str] = collections.Counter()
        self.probe_latency: list[float] = []
        self.published = 0
        self.answered: dict[str, float] = {}
        self.sent_at: dict[str, float] = {}


async def slow_client(host: str, port: int, interval: float, stats: Stats, stop: asyncio.Event,
                      reconnect: str) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats.refused += 1
            await asyncio.sleep(interval)
            continue
        opened = time.monotonic()
        stats.connected += 1
        stats.open += 1
        stats.most_open = max(stats.most_open, stats.open)
        closed_by_server = False
        try:
            for i in range(len(REQUEST)):
                writer.write(REQUEST[i:i + 1])
                await writer.drain()
                try:  # wait the interval, noticing at once if the server closes us
                    if await asyncio.wait_for(reader.read(1), interval) == b"":
                        closed_by_server = True
                        break
                except TimeoutError:
                    pass
                if stop.is_set():
                    break
        except (ConnectionError, OSError):
            closed_by_server = True
        finally:
            stats.open -= 1
            writer.close()
        if closed_by_server:
            stats.lifetimes.append(time.monotonic() - opened)
        if reconnect == "once":
            return
        if reconnect == "tick":  # the next tick of this client's interval
            await asyncio.sleep(interval - (time.monotonic() - opened) % interval)


async def probe_healthz(url: str, stats: Stats, stop: asyncio.Event) -> None:
    timeout = aiohttp.ClientTimeout(total=2)
    while not stop.is_set():
        started = time.monotonic()
        try:
            # A new connection each time, as a load balancer's or Docker's probe would.
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
                await response.read()
                if response.status == 200:
                    stats.probes_ok += 1
                    stats.probe_latency.append(time.monotonic() - started)
                else:
                    stats.probe_failures[f"HTTP {response.status}"] += 1
        except Exception as exc:  # noqa: BLE001 - counted
            stats.probe_failures[type(exc).__name__] += 1
        await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - started)))


async def code_requests(broker: Broker, stats: Stats, stop: asyncio.Event) -> None:
    import aio_pika

    queue = await broker.channel.declare_queue(broker.reply_queue, durable=True)

    async def take(message):
        await message.ack()
        stats.answered.setdefault(message.correlation_id, time.monotonic())

    tag = await queue.consume(take)
    body = json.dumps({"topic": "anzsco", "record": RECORD}).encode()
    while not stop.is_set():
        cid = f"c{stats.published}"
        stats.sent_at[cid] = time.monotonic()
        await broker.channel.default_exchange.publish(
            aio_pika.Message(body, correlation_id=cid, reply_to=broker.reply_queue), routing_key=broker.request_queue)
        stats.published += 1
        await asyncio.sleep(1)
    await asyncio.sleep(5)  # the last ones' replies
    await queue.cancel(tag)


def limit_fds(nofile: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    return apply


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="coderd-slow-"))
    port = free_port()
    log_path = workdir / "coderd.log"
    async with EmulatorProcess(rate=20.0) as api:
        broker = await Broker(unique_prefix()).open()
        env = daemon_env(api.url, broker, workdir / "state", http_listen=f"127.0.0.1:{port}",
                         requests_per_second=20)
        with open(log_path, "wb") as log:
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemon", "run", cwd=str(ROOT), env={**os.environ, **env},
                stdout=log, stderr=log, preexec_fn=limit_fds(args.nofile))
        deadline = time.monotonic() + 30
        while b'"consuming"' not in log_path.read_bytes():
            if time.monotonic() > deadline or daemon.returncode is not None:
                raise SystemExit(f"coderd did not start:\n{log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.1)
        started_log = log_path.stat().st_size
        stats, stop = Stats(), asyncio.Event()
        reconnect = "storm" if args.storm else "once" if args.once else "tick"
        tasks = [asyncio.create_task(slow_client("127.0.0.1", port, args.interval, stats, stop, reconnect))
                 for _ in range(args.clients)]
        tasks.append(asyncio.create_task(probe_healthz(f"http://127.0.0.1:{port}/healthz", stats, stop)))
        tasks.append(asyncio.create_task(code_requests(broker, stats, stop)))
        began = time.monotonic()
        while time.monotonic() - began < args.seconds:
            await asyncio.sleep(1)
            print(f"  t={time.monotonic() - began:4.0f}s  slow connections open {stats.open:4d}  "
                  f"closed by coderd {len(stats.lifetimes):5d}  healthz ok {stats.probes_ok:4d} "
                  f"failed {sum(stats.probe_failures.values()):4d}  coded {len(stats.answered)}/{stats.published}  "
                  f"log {(log_path.stat().st_size - started_log) / 1e6:.2f} MB", flush=True)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        daemon.terminate()
        await daemon.wait()
        await broker.close()

    lines = log_path.read_bytes()[started_log:].splitlines()
    events = collections.Counter()
    for line in lines:
        try:
            event = json.loads(line)
            events[f"{event.get('logger', '')}: {str(event.get('event'))[:70]!r}"] += 1
        except ValueError:
            events["(not JSON)"] += 1
    latencies = [stats.answered[c] - stats.sent_at[c] for c in stats.answered if c in stats.sent_at]
    print(f"\n{args.clients} slow clients, a byte every {args.interval:g} s, reconnecting: {reconnect}, "
          f"{args.seconds:g} s, coderd's RLIMIT_NOFILE {args.nofile}")
    print(f"slow connections: {stats.connected} made, {stats.refused} connect failures, most open at once "
          f"{stats.most_open}; closed by coderd {len(stats.lifetimes)}"
          + (f", lasting median {statistics.median(stats.lifetimes):.1f} s, max {max(stats.lifetimes):.1f} s"
             if stats.lifetimes else ""))
    print(f"/healthz: {stats.probes_ok} answered, failures {dict(stats.probe_failures) or 0}"
          + (f", slowest {max(stats.probe_latency) * 1000:.0f} ms" if stats.probe_latency else ""))
    print(f"coding: {len(stats.answered)}/{stats.published} requests answered"
          + (f", slowest {max(latencies):.2f} s" if latencies else ""))
    print(f"coderd's log during the run: {len(lines)} lines, {sum(map(len, lines)) / 1e6:.2f} MB")
    for name, count in events.most_common(8):
        print(f"  {count:7d}  {name}")
    print(f"(log kept in {log_path})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between a slow client's bytes")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the run lasts")
    parser.add_argument("--nofile", type=int, default=256, help="coderd's RLIMIT_NOFILE")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="slow clients do not reconnect when closed")
    mode.add_argument("--storm", action="store_true", help="slow clients reconnect at once when closed")
    asyncio.run(main(parser.parse_args()))
